"""The gateway's lifecycle (`llmroute.gateway.app.Gateway`, see its docstring): what `startup`
opens once per serving process (BLAS threads, the trace store, the learners, the spend ledger and
budgets, the pooled upstream HTTP client, telemetry, the backends) and what `shutdown` closes.

`LifecycleMixin` is a base class of `Gateway`: the methods are the gateway's own (the ASGI
lifespan calls them; nothing on the per-request path goes through this module).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from llmroute.gateway.auth import BudgetManager
from llmroute.gateway.backends.base import upstream_client

if TYPE_CHECKING:
    from llmroute.gateway.asgi import ErrorLog
    from llmroute.gateway.auth import Authenticator
    from llmroute.gateway.backends import Backend
    from llmroute.gateway.backends.http import HTTPClient
    from llmroute.gateway.config import GatewayConfig
    from llmroute.gateway.learning import Learning
    from llmroute.gateway.metrics import GatewayMetrics
    from llmroute.gateway.routing import RoutingEngine
    from llmroute.gateway.telemetry import Telemetry

__all__ = ["LifecycleMixin"]


class LifecycleMixin:
    """`Gateway.startup` and `Gateway.shutdown`; the attributes below are the gateway's
    (`Gateway.__init__`)."""

    config: GatewayConfig
    engine: RoutingEngine
    backends: dict[str, Backend]
    metrics: GatewayMetrics
    state: Any
    auth: Authenticator
    learning: Learning | None
    keyman: Any
    dashboard: Any
    budgets: BudgetManager | None
    store: Any
    http: HTTPClient | None
    telemetry: Telemetry | None
    errors: ErrorLog
    _started: bool
    _blas_limit: Any

    async def startup(self) -> None:
        """Open the pooled HTTP session, the trace store and the budgets; start the backends."""
        if self._started:
            return
        from llmroute.gateway.store import open_store, spend_ledger_path

        cfg = self.config
        if cfg.server.blas_threads:
            # per-request matrix products are tiny: extra BLAS threads only fight for the cores
            from threadpoolctl import threadpool_limits

            self._blas_limit = threadpool_limits(limits=cfg.server.blas_threads)
            if cfg.server.blas_threads == 1:
                # BLAS is single-threaded process-wide now: routers can skip their per-call limit
                for r in self.engine.routers.values():
                    if hasattr(r, "blas_single_thread"):
                        r.blas_single_thread = True
        loop = asyncio.get_running_loop()
        self.store = await loop.run_in_executor(
            None,
            lambda: open_store(
                cfg.store.url,
                base_dir=cfg.base_dir,
                store_prompts=cfg.trace.store_prompts,
                store_responses=cfg.trace.store_responses,
                batch_size=cfg.store.batch_size,
                flush_interval_s=cfg.store.flush_interval_s,
                retention_days=cfg.store.retention_days,
                max_rows=cfg.store.max_rows,
                prune_interval_s=cfg.store.prune_interval_s,
                journal=cfg.store.journal,
                commit_interval_s=cfg.store.commit_interval_s,
            ),
        )
        self.metrics.bind_store(self.store)
        self.dashboard.warm()  # /ui's aggregates, built in a background thread
        if self.learning is not None:  # after the store: outcomes read their decision's trace
            await self.learning.start(self.store)
        # spend goes to a persistent ledger file before each answer (kill -9 safe; llmroute.gateway.ledger)
        ledger = spend_ledger_path(cfg.store.url, cfg.store.ledger, cfg.base_dir)
        keys = await self.keyman.start(self.store)  # the config file's and the key store's
        self.budgets = BudgetManager(keys, store=self.store, ledger_path=ledger, state=self.state)
        self.http = upstream_client(cfg.server, limit_per_origin=1024)  # server.ca_bundle, server.proxy
        if self.telemetry is not None:  # in the serving process (after a worker's fork)
            self.telemetry.start()
        for b in self.backends.values():
            await b.start(self.http)
        self._started = True

    async def shutdown(self) -> None:
        """Close backends, the session and the store (draining queued traces), then the metrics
        (a worker of `llmroute serve --workers N` publishes its last counts, store totals included)
        and the budgets and rate limits (releasing the shared ledgers)."""
        if not self._started:
            return
        self._started = False
        self.errors.flush()  # the counts of errors not logged yet
        from llmroute.gateway.reload import close_runtimes

        await close_runtimes(self)  # a config reload's runtimes, while the store is open
        for b in self.backends.values():
            with contextlib.suppress(Exception):
                await b.close()
        if self.http is not None:
            await self.http.close()
        if self.learning is not None:
            await self.learning.stop()
        if self.store is not None:
            await self.store.close()
        # joins the publisher thread (up to seconds): off the event loop
        await asyncio.get_running_loop().run_in_executor(None, self.metrics.close)
        if self.telemetry is not None:  # exports the spans and metrics still queued
            await asyncio.get_running_loop().run_in_executor(None, self.telemetry.shutdown)
        if self.budgets is not None:
            self.budgets.close()
        self.auth.close()
        self.keyman.close()
        if self.state is not None:
            self.state.close()
