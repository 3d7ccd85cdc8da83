"""The profile run's calls (`llmroute.profile.runner` has the design): the cost cap (`CostCap`,
step 2), one model's calls through its gateway backend with retries and pacing (`_Caller`, step 3)
and the resume journal (`_Journal`, `journal_path`, step 4).

The seam: everything that spends money or records what was spent is here; the grading of the
answers is `llmroute.profile.grading`, the run's order of work and its table `runner`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from llmroute.profile.prompts import PromptItem

if TYPE_CHECKING:
    from llmroute.profile.runner import ProfileSettings

__all__ = ["CostCap", "journal_path"]

#: upstream refusals that are never billed (everything else that fails counts at its reservation)
_UNBILLED = frozenset(
    {"upstream_rate_limited", "upstream_bad_request", "upstream_auth_failed", "missing_credentials"}
)


class CostCap:
    """Reservations against a USD cap: `reserve` before a call, `settle` after it."""

    def __init__(self, cap: float | None, spent: float = 0.0) -> None:
        self.cap = cap
        self.spent = spent
        self.reserved = 0.0
        self.refused = 0

    def reserve(self, usd: float) -> bool:
        """Hold `usd`; False (and nothing held) when spent + reserved + usd would pass the cap."""
        if self.cap is not None and self.spent + self.reserved + usd > self.cap:
            self.refused += 1
            return False
        self.reserved += usd
        return True

    def settle(self, reserved: float, actual: float) -> None:
        """Release a reservation and count what the call cost."""
        self.reserved = max(0.0, self.reserved - reserved)
        self.spent += actual


def journal_path(out: Path) -> Path:
    """The resume journal beside the output table: `<out>.journal.jsonl`."""
    return out.with_name(out.name + ".journal.jsonl")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class _Call:
    ok: bool
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    error: str | None = None
    skipped: bool = False  # not made: the cap


class _Caller:
    """Calls one configured model through its gateway backend, within the cap."""

    def __init__(
        self, cfg: Any, backend: Any, cap: CostCap, settings: ProfileSettings, journal: _Journal
    ) -> None:
        from llmroute.gateway.tokens import TokenCounter

        self.journal = journal
        self.cfg = cfg
        self.backend = backend
        self.cap = cap
        self.settings = settings
        self.counter = TokenCounter.for_model(cfg.api, cfg.upstream)
        self.sem = asyncio.Semaphore(max(1, min(settings.concurrency, cfg.max_concurrency)))
        self._next_start = 0.0

    def max_cost(self, body: dict[str, Any]) -> float:
        """The most `body` can cost on this model (input bound + max_tokens of output)."""
        from llmroute.gateway.auth import max_request_cost
        from llmroute.gateway.tokens import estimate_input_tokens

        tin = estimate_input_tokens(body, self.counter)
        return max_request_cost(self.cfg.input_per_mtok, self.cfg.output_per_mtok, tin, body["max_tokens"])

    def body(self, prompt: str, max_tokens: int, temperature: float | None = None) -> dict[str, Any]:
        """The chat request: one user message, `max_tokens` (it bounds the cost), and a temperature
        only when given (the judge's 0; answers use the model's default, as it is served)."""
        b: dict[str, Any] = {
            "model": self.cfg.name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
        }
        if temperature is not None:
            b["temperature"] = temperature
        return b

    async def _pace(self) -> None:
        """Wait for this model's request-rate slot (`settings.rpm`: evenly spaced starts)."""
        if not self.settings.rpm:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next_start)
        self._next_start = start + 60.0 / self.settings.rpm
        if start > now:
            await asyncio.sleep(start - now)

    def _charge(self, hold: float) -> None:
        """Count a failed or abandoned call at its reservation (the provider may have billed it)."""
        self.cap.settle(hold, hold)
        self.journal.append({"kind": "charge", "model": self.cfg.name, "cost_usd": hold})

    async def call(self, prompt: str, max_tokens: int, temperature: float | None = None) -> _Call:
        """One completion, with retries of retryable errors. Failed attempts that may have been
        billed are journaled as charges; the result's cost is that of the successful call."""
        from llmroute.gateway.backends import BackendError

        body = self.body(prompt, max_tokens, temperature)
        hold = self.max_cost(body)
        async with self.sem:
            for attempt in range(self.settings.retries + 1):
                await self._pace()
                if not self.cap.reserve(hold):
                    return _Call(False, skipped=True, error="not called: the --max-usd cap is reached")
                t0 = time.perf_counter()
                try:
                    resp = await self.backend.chat(body, self.cfg.timeout_s)
                except BackendError as e:
                    if e.code in _UNBILLED:
                        self.cap.settle(hold, 0.0)
                    else:
                        self._charge(hold)
                    if e.retryable and attempt < self.settings.retries:
                        await asyncio.sleep(self.settings.backoff_s * 2**attempt)
                        continue
                    return _Call(False, error=e.message)
                except BaseException:
                    self._charge(hold)  # cancelled in flight
                    raise
                latency = time.perf_counter() - t0
                from llmroute.gateway.tokens import response_text

                usage = resp.get("usage") or {}
                ti = int(usage.get("prompt_tokens") or 0)
                to = int(usage.get("completion_tokens") or 0)
                cost = (ti * self.cfg.input_per_mtok + to * self.cfg.output_per_mtok) / 1e6
                self.cap.settle(hold, cost)
                return _Call(True, response_text(resp), ti, to, cost, latency)
        raise AssertionError("unreachable")  # pragma: no cover


class _Journal:
    """Append-only JSONL of finished calls (see the module docstring, step 4)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[tuple[str, str], dict[str, Any]] = {}
        self.judged: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.spent = 0.0
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # a last line cut off by a crash: that call is redone
                data = data[: data.rfind(b"\n") + 1]
                with path.open("r+b") as f:
                    f.truncate(len(data))
            for i, line in enumerate(data.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise ValueError(
                        f"{path}: line {i} is not JSON; delete the line or the journal"
                    ) from None
                self._add(rec)
        self._f = path.open("ab")

    def _add(self, rec: dict[str, Any]) -> None:
        self.spent += float(rec.get("cost_usd") or 0.0)
        if rec.get("kind") == "answer":
            self.answers[(rec["prompt_id"], rec["model"])] = rec
        elif rec.get("kind") == "judge":
            self.judged[(rec["prompt_id"], rec["model"], rec["variant"])] = rec

    def forget_changed(self, items: list[PromptItem]) -> None:
        """Drop answers (and their verdicts) recorded for a prompt id whose text has changed since."""
        sha = {it.prompt_id: _sha(it.prompt) for it in items}
        for key in [k for k, r in self.answers.items() if k[0] in sha and r.get("prompt_sha") != sha[k[0]]]:
            del self.answers[key]
            for jk in [j for j in self.judged if j[:2] == key]:
                del self.judged[jk]

    def append(self, rec: dict[str, Any]) -> None:
        """Record one call (durable once this returns: written and flushed)."""
        self._f.write(orjson.dumps(rec) + b"\n")
        self._f.flush()
        self._add(rec)

    def close(self) -> None:
        self._f.close()
