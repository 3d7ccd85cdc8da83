"""Threads and processes for routers' batches: BLAS held to one thread for small batches,
large batches estimated in pipelined chunks on threads, `route_batch(..., workers=N)` in
forked worker processes (the batch machinery of `llmroute.router.Router`, whose methods for
it are `_RouterBatch`'s).
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from llmroute.estimators.base import Features
    from llmroute.router import Decision, PromptLike, Router

_PARALLEL_MIN_CHUNK = 500
# Large batches are estimated in chunks of this many prompts: the calling thread featurises the
# next chunk (tokenising and hand features: mostly Python) while pool threads estimate the ones
# before it (numpy, which releases the GIL). Below 2 chunks there is nothing to overlap.
_PIPELINE_CHUNK = 2048
_PIPELINE_MAX_THREADS = 4
_WORKER_STATE: list[Any] = []  # (router, texts), set only inside forked batch workers (see route_batch)


def _init_worker(router: Router, texts: list[str]) -> None:
    _WORKER_STATE[:] = [router, texts]  # inherited through fork, nothing pickled


def _worker_estimate(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    router, texts = _WORKER_STATE
    with router._one_thread():  # one BLAS thread per worker: the workers already use the cores
        q, c, _ = router._estimate_raw(texts[span[0] : span[1]])
    return q, c


class _OneBlasThread:
    """BLAS on one thread inside the block, the previous setting restored after.

    Calls the BLAS libraries threadpoolctl found directly (a few microseconds, where
    `ThreadpoolController.limit` costs ~20-50 us per call: it re-reads every library's state).
    """

    __slots__ = ("libs", "prev")

    def __init__(self, libs: list[Any]) -> None:
        self.libs = libs
        self.prev: list[int] = []

    def __enter__(self) -> None:
        self.prev = [lc.get_num_threads() or 1 for lc in self.libs]
        for lc, n in zip(self.libs, self.prev, strict=True):
            if n > 1:
                lc.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        for lc, n in zip(self.libs, self.prev, strict=True):
            if n > 1:
                lc.set_num_threads(n)


class _RouterBatch:
    """`Router.route_batch` and the threads behind estimates (a mixin of `llmroute.router.Router`)."""

    def _one_thread(self) -> Any:
        """Context that limits BLAS to one thread for small batches: their products are tiny,
        and multi-threaded OpenBLAS is ~10x slower on them when cores are shared (a gateway)."""
        if self.blas_single_thread:
            return contextlib.nullcontext()
        if self._blas is None:
            from threadpoolctl import ThreadpoolController

            self._blas = [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]
        return _OneBlasThread(self._blas)

    def _pipeline_threads(self, n: int) -> int:
        """Estimation threads for a batch of `n` prompts: 0 (one pass, no pipeline) when the
        batch has fewer than two chunks, when the process keeps to one thread (the gateway) or
        when only one core is usable."""
        if n < 2 * _PIPELINE_CHUNK or self.blas_single_thread:
            return 0
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return 0 if cores < 2 else min(cores, _PIPELINE_MAX_THREADS)

    def _estimate_chunks(
        self, texts: list[str]
    ) -> Iterator[tuple[tuple[int, int], np.ndarray, np.ndarray, Features]]:
        """(index range, q, c, features) per chunk of a large batch, in order (pipelined).

        This thread embeds chunk k+1 while pool threads compute chunk k's hand-made features and
        run the estimators on it (the two halves cost about the same: routerbench_subset's
        default-estimator router, 10k benchmark prompts, ~260 ms embedding against ~340 ms
        features + estimates, and this thread also decides); BLAS is held to one thread meanwhile
        (the pool threads use the cores). Estimates equal the one-pass ones to float rounding
        (rows are independent; only BLAS blocking differs).
        """
        from concurrent.futures import ThreadPoolExecutor

        n = len(texts)
        threads = self._pipeline_threads(n)
        if threads == 0:
            q, c, X = self._estimate_texts(texts)
            yield (0, n), q, c, X
            return
        bounds = [*range(0, n, _PIPELINE_CHUNK), n]
        if bounds[-1] - bounds[-2] < _PIPELINE_CHUNK // 2:  # no small tail chunk
            del bounds[-2]
        spans = list(itertools.pairwise(bounds))

        def estimate(a: int, b: int, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, Features]:
            X = self._features(texts[a:b], emb)
            return self._quality(X), self.cost.predict(texts[a:b], X), X

        with self._one_thread(), ThreadPoolExecutor(threads, thread_name_prefix="llmroute-estimate") as pool:
            jobs = [pool.submit(estimate, a, b, self._embed(texts[a:b])) for a, b in spans]
            for span, job in zip(spans, jobs, strict=True):
                q, c, X = job.result()
                yield span, q, c, X

    def route_batch(
        self,
        prompts: Sequence[PromptLike],
        tradeoff: float | None = None,
        max_cost: float | None = None,
        min_quality: float | None = None,
        allowed: Sequence[str] | None = None,
        context_windows: Mapping[str, int] | None = None,
        workers: int = 1,
    ) -> list[Decision]:
        """Decisions for many prompts at once (vectorised estimation and policy).

        `workers` > 1 estimates chunks of a large batch in that many forked worker processes
        (POSIX only; the router is inherited, not reloaded). Use it from scripts and batch jobs,
        not from inside a multi-threaded server. Decisions are identical either way.
        """
        texts = self._texts(prompts)
        if workers > 1 and len(texts) >= 2 * _PARALLEL_MIN_CHUNK:
            out: list[Decision] = []
            # decide each chunk as it arrives, while the workers estimate the next ones
            for (a, b), q, c in self._estimate_parallel(texts, workers):
                out += self._decide(
                    q, c, None, texts[a:b], tradeoff, max_cost, min_quality, allowed, context_windows
                )
            return out
        if self._pipeline_threads(len(texts)) > 0:
            out = []
            for (a, b), q, c, X in self._estimate_chunks(texts):  # decide each chunk as it comes
                out += self._decide(
                    q, c, X, texts[a:b], tradeoff, max_cost, min_quality, allowed, context_windows
                )
            return out
        q, c, X = self._estimate_texts(texts)
        return self._decide(q, c, X, texts, tradeoff, max_cost, min_quality, allowed, context_windows)

    def _estimate_parallel(
        self, texts: list[str], workers: int
    ) -> Iterator[tuple[tuple[int, int], np.ndarray, np.ndarray]]:
        """(index range, q, c) per chunk of `texts`, in order, estimated in forked workers."""
        import multiprocessing

        if "fork" not in multiprocessing.get_all_start_methods():
            q, c, _ = self._estimate_texts(texts)
            yield (0, len(texts)), q, c
            return
        n_chunks = min(workers * 4, max(1, len(texts) // _PARALLEL_MIN_CHUNK))
        bounds = np.linspace(0, len(texts), n_chunks + 1).astype(int).tolist()
        spans = list(itertools.pairwise(bounds))  # workers get index ranges, not texts
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(self, texts)) as pool:
            for span, (q, c) in zip(spans, pool.imap(_worker_estimate, spans), strict=True):
                yield span, q, c
