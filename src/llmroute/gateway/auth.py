"""API keys, per-key model permissions, request-rate limits and USD budgets for the gateway.

Interface for the gateway core::

    auth = Authenticator(cfg.keys)                 # keys: llmroute.gateway.config.KeyConfig list
    budgets = BudgetManager(cfg.keys, store=store)  # store: TraceStore (persists spend) or None
    try:
        key = auth.admit(request.headers, requested_model)  # 401 / 403 / 429 (rate) -> GatewayError
        res = budgets.reserve(key, max_request_cost(price_in, price_out, input_tokens, max_tokens))
    except GatewayError as e:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)
    try:
        ... call upstream ...
        budgets.commit(res, actual_cost_usd)       # exactly once per reservation
    except BaseException:
        budgets.release(res)                       # nothing was spent (same as commit(res, 0.0))
        raise

`admit` returns None when no keys are configured (the gateway is open). `reserve(None, ...)`
gives a no-op reservation, so the request path need not branch on whether auth is on.

Keys live in the config only as sha256 hex (`hash_key("sk-...")`, or `llmroute keys hash`); a
key is sent as `Authorization: Bearer <key>` or `x-api-key: <key>`. Key text never appears in
errors or logs.

Budgets (atomic): a request is admitted while the key's spend plus its in-flight reservations is
below each of its budgets (day and month, UTC), and then reserves its maximum cost. Reserve/commit
run under a lock without awaiting, so any number of concurrent requests (threads or tasks) can
overspend a budget by at most one request's maximum cost; commits reconcile with the actual cost.

Durable spend: with `ledger_path=` (the gateway passes `store.ledger`, by default a file beside
the SQLite trace store) the books live in a `llmroute.gateway.ledger.SharedLedger` file: `commit`
writes the cost into it (a memory-mapped file, so the kernel has it the moment it returns) before
the gateway answers, so a kill -9 loses no spend, and a restart reads it back; every worker
process of `llmroute serve --workers N` maps the same file, under a file lock, so the same bound
(one request's maximum cost) holds across all workers. Spend is also queued to the store
(`add_spend`), which seeds a new ledger file. Without `ledger_path`, a shared folder
(`shared_dir=`, or the `LLMROUTE_SHARED_DIR` environment variable that `serve` sets for N > 1)
holds a ledger for that run only; without either the counters stay in process memory, seeded
from the store at start (a kill -9 then loses the spend the store had not yet written).

Rate limits: a token bucket per key refilled at `rpm / 60` per second holding `burst_s` seconds
of requests (at least one).

Several hosts: with `state=` (a `llmroute.gateway.state.RedisState`, config `state: redis://...`)
budgets, reservations and rate limits live in Redis instead (a `RedisLedger`, same interface as
the ledger file), so the bound holds across every replica on that Redis. While Redis is down,
`on_state_error` decides: `fail_open` admits (the cost is added when Redis returns),
`fail_closed` answers 503.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmroute.gateway.ledger import SharedLedger, shared_dir_from_env
from llmroute.gateway.state import RedisState, StateUnavailable
from llmroute.gateway.tokens import estimate_input_tokens  # re-exported (was defined here)

__all__ = [
    "ApiKey",
    "Authenticator",
    "BudgetManager",
    "GatewayError",
    "Reservation",
    "TokenBucket",
    "estimate_input_tokens",
    "extract_key",
    "format_usd",
    "generate_key",
    "hash_key",
    "max_request_cost",
    "period_ids",
]


class GatewayError(Exception):
    """An error the gateway answers with an OpenAI-style JSON body.

    `status` is the HTTP status, `body()` the JSON body
    (`{"error": {"message", "type", "param", "code"}}`), `headers` extra response headers
    (e.g. `Retry-After`, `WWW-Authenticate`), `key_id` the API key id when the error is about a
    known key (403, 429), for metrics and traces (never the key itself).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
        key_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.key_id = key_id
        self.status = int(status)
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The OpenAI-style error body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.message!r}, code={self.code!r})"


# ---- keys -------------------------------------------------------------------------------------


def hash_key(key: str) -> str:
    """The sha256 hex digest stored in the config for API key `key`."""
    return hashlib.sha256(key.strip().encode("utf-8")).hexdigest()


def generate_key(prefix: str = "sk-llmroute-") -> str:
    """A new random API key (show it once; store only `hash_key(key)`)."""
    return prefix + secrets.token_urlsafe(32)


def extract_key(headers: Mapping[str, str]) -> str | None:
    """The API key from `Authorization: Bearer <key>` or `x-api-key: <key>`; None if absent.

    `headers` is any mapping with lower-case names (Starlette's `request.headers` works).
    """
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    if key and key.strip():
        return key.strip()
    return None


@dataclass(frozen=True)
class ApiKey:
    """A configured key as the gateway uses it (never holds the key itself)."""

    id: str
    sha256: str
    budget_usd_day: float | None = None
    budget_usd_month: float | None = None
    rpm: int | None = None
    allowed: tuple[str, ...] | None = None  # model names / aliases; fnmatch patterns allowed

    def may_use(self, model: str) -> bool:
        """Whether this key may call `model` (a model name or an alias)."""
        if self.allowed is None:
            return True
        return any(model == p or fnmatch.fnmatchcase(model, p) for p in self.allowed)

    @classmethod
    def from_config(cls, cfg: Any, env: Mapping[str, str] | None = None) -> ApiKey:
        """From a `KeyConfig` (or any object/dict with its fields: id, key_sha256 | key_env,
        budget_usd_day, budget_usd_month, rpm, aliases)."""
        get = cfg.get if isinstance(cfg, Mapping) else (lambda k, d=None: getattr(cfg, k, d))
        kid = get("id")
        digest = get("key_sha256")
        if not digest:
            env_name = get("key_env")
            src = os.environ if env is None else env
            if not env_name or not src.get(env_name):
                raise ValueError(
                    f"keys[{kid}]: environment variable {env_name} holding the key is not set "
                    f"(set it, or store the hash in key_sha256)"
                )
            digest = hash_key(src[env_name])
        digest = str(digest).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"keys[{kid}].key_sha256: must be 64 hex characters (sha256 of the key)")
        aliases = get("aliases")
        return cls(
            id=str(kid),
            sha256=digest,
            budget_usd_day=get("budget_usd_day"),
            budget_usd_month=get("budget_usd_month"),
            rpm=get("rpm"),
            allowed=None if aliases is None else tuple(aliases),
        )


class TokenBucket:
    """A token bucket: `rate` tokens per second, holding at most `capacity` tokens."""

    __slots__ = ("_lock", "capacity", "clock", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs rate > 0 and capacity >= 1")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self.clock = clock
        self.tokens = float(capacity)
        self.stamp = clock()
        self._lock = threading.Lock()

    def take(self, n: float = 1.0) -> float:
        """Take `n` tokens: 0.0 if granted, else the seconds until they would be available."""
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= n:
                self.tokens -= n
                return 0.0
            return (n - self.tokens) / self.rate


class Authenticator:
    """Checks the API key, the key's model permission and its request rate.

    With no keys configured every request is admitted anonymously (`admit` returns None).
    `shared_dir` (default: `LLMROUTE_SHARED_DIR`, set by `llmroute serve --workers N>1`) makes
    the rate limits hold across worker processes, `state` (Redis) across replicas on several
    hosts (see the module docstring).
    """

    def __init__(
        self,
        keys: Iterable[Any] = (),
        *,
        env: Mapping[str, str] | None = None,
        burst_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        shared_dir: str | Path | None = None,
        state: RedisState | None = None,
    ) -> None:
        self.keys: dict[str, ApiKey] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._rates: dict[str, tuple[float, float]] = {}
        self._clock = clock
        self._burst_s = burst_s
        self._state = state
        self._ledger: Any = None  # SharedLedger | RedisLedger
        self._folder = shared_dir if shared_dir is not None else shared_dir_from_env()
        self.set_keys([k if isinstance(k, ApiKey) else ApiKey.from_config(k, env) for k in keys])

    def set_keys(self, keys: Sequence[ApiKey]) -> None:
        """Replace the accepted keys (at start, and when keys change while running: the admin
        API). A key whose rpm is unchanged keeps its rate-limit bucket. Raises ValueError when two
        keys have the same key text, leaving the previous keys in place."""
        by_hash: dict[str, ApiKey] = {}
        for key in keys:
            if key.sha256 in by_hash:
                raise ValueError(f"keys[{key.id}]: the same key is configured twice")
            by_hash[key.sha256] = key
        rates: dict[str, tuple[float, float]] = {}
        buckets: dict[str, TokenBucket] = {}
        for key in by_hash.values():
            if key.rpm:
                rate = key.rpm / 60.0
                cap = max(1.0, math.floor(rate * self._burst_s))
                rates[key.id] = (rate, cap)
                old = self._buckets.get(key.id)
                same = old is not None and self._rates.get(key.id) == (rate, cap)
                buckets[key.id] = old if same else TokenBucket(rate, cap, self._clock)  # type: ignore[assignment]
        if self._state is not None and rates:
            if self._ledger is None:
                self._ledger = self._state.ledger(sorted(rates))
            else:
                self._ledger.add_keys(sorted(rates))
        elif self._folder and rates:
            if self._ledger is None:
                self._ledger = SharedLedger(Path(self._folder) / "rates.ledger", sorted(rates))
            else:
                self._ledger.add_keys(sorted(rates))
        self._rates, self._buckets = rates, buckets
        self.keys = by_hash

    def close(self) -> None:
        """Close the shared rate-limit ledger, if any (the other workers keep theirs)."""
        if self._ledger is not None:
            self._ledger.close()

    @property
    def enabled(self) -> bool:
        """Whether requests need a key."""
        return bool(self.keys)

    def authenticate(self, headers: Mapping[str, str]) -> ApiKey | None:
        """The key the request presents; None when auth is off. Raises 401 `GatewayError`."""
        if not self.keys:
            return None
        presented = extract_key(headers)
        if presented is None:
            raise GatewayError(
                401,
                "Missing API key. Send it as 'Authorization: Bearer <key>' or as an 'x-api-key' header.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        key = self.keys.get(hash_key(presented))
        if key is None:
            raise GatewayError(
                401,
                "Invalid API key. Check the key you sent; it is not one this gateway accepts.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return key

    def authorize(self, key: ApiKey | None, model: str) -> None:
        """Raise 403 `GatewayError` if `key` may not use `model` (a model name or alias)."""
        if key is None or key.may_use(model):
            return
        raise GatewayError(
            403,
            f"API key '{key.id}' is not allowed to use model {model!r}. "
            f"Allowed: {', '.join(key.allowed or ()) or 'none'}.",
            type="permission_error",
            code="model_not_allowed",
            param="model",
            key_id=key.id,
        )

    def check_rate(self, key: ApiKey | None) -> None:
        """Take one request from the key's rate limit; raise 429 `GatewayError` with Retry-After."""
        if key is None:
            return
        bucket = self._buckets.get(key.id)
        if bucket is None:
            return
        if self._ledger is None:
            wait = bucket.take()
        else:
            rate, cap = self._rates[key.id]
            wait = self._ledger.take(key.id, rate, cap, self._clock())
        if wait > 0.0:
            raise GatewayError(
                429,
                f"Rate limit reached for API key '{key.id}' ({key.rpm} requests per minute). "
                f"Retry after {wait:.1f} s.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
                key_id=key.id,
            )

    def admit(self, headers: Mapping[str, str], model: str | None = None) -> ApiKey | None:
        """authenticate + authorize(model) + check_rate, in that order."""
        key = self.authenticate(headers)
        if key is not None:
            if model is not None:
                self.authorize(key, model)
            self.check_rate(key)
        return key


# ---- cost estimates -----------------------------------------------------------------------------


def max_request_cost(
    input_per_mtok: float, output_per_mtok: float, input_tokens: float, max_tokens: float, n: int = 1
) -> float:
    """The most a call can cost (USD): input tokens x input price + `n` choices of max_tokens x
    output price. `input_tokens` should be an upper bound (`llmroute.gateway.tokens`)."""
    return (float(input_tokens) * input_per_mtok + float(max_tokens) * max(1, n) * output_per_mtok) / 1e6


# ---- budgets ------------------------------------------------------------------------------------


def period_ids(ts: float) -> tuple[str, str]:
    """The (day, month) budget period ids for unix time `ts`: ('d:2026-01-31', 'm:2026-01'), UTC."""
    d = datetime.fromtimestamp(ts, UTC)
    return f"d:{d:%Y-%m-%d}", f"m:{d:%Y-%m}"


def _day_span(ts: float) -> tuple[float, float, str, str, int, int]:
    """(start, end, day id, month id, day number, month number) of the UTC day holding `ts`.

    Day number = whole UTC days since the epoch; month number = year * 12 + month - 1.
    """
    d = datetime.fromtimestamp(ts, UTC)
    start = datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
    day, month = period_ids(ts)
    return start, start + 86400.0, day, month, int(start // 86400), d.year * 12 + d.month - 1


def _period_numbers(day: str, month: str) -> tuple[int, int]:
    """Day and month numbers of period ids 'd:YYYY-MM-DD' and 'm:YYYY-MM' (see `_day_span`)."""
    d = datetime.strptime(day[2:], "%Y-%m-%d").replace(tzinfo=UTC)
    y, m = (int(x) for x in month[2:].split("-"))
    return int(d.timestamp() // 86400), y * 12 + m - 1


_ADJ = {"day": "daily", "month": "monthly"}


def format_usd(usd: float) -> str:
    """A dollar amount with enough digits to be meaningful: cents from $1 up, else two or three
    significant digits ("$12.35", "$0.50", "$0.0004", "$0.000437", "$0"): never "$0.00" for an
    amount of a trillionth of a dollar or more, and never scientific notation."""
    x = float(usd)
    if x == 0 or not math.isfinite(x):
        return "$0" if x == 0 else f"${x}"
    sign, x = ("-", -x) if x < 0 else ("", x)
    if x >= 1:
        return f"{sign}${x:,.2f}"
    decimals = min(14, max(2, 2 - math.floor(math.log10(x))))
    text = f"{x:.{decimals}f}".rstrip("0")
    if len(text.partition(".")[2]) < 2:
        text = f"{x:.2f}"
    return f"{sign}${text}"


def _seconds_to_next(ts: float, period: str) -> int:
    d = datetime.fromtimestamp(ts, UTC)
    if period == "day":
        nxt = datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() + 86400
    else:
        y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
        nxt = datetime(y, m, 1, tzinfo=UTC).timestamp()
    return max(1, math.ceil(nxt - ts))


@dataclass
class Reservation:
    """Budget held for one in-flight request; settle it with `commit` or `release` once."""

    key_id: str | None
    amount: float
    day: str = ""
    month: str = ""
    settled: bool = field(default=False, repr=False)
    day_no: int = field(default=0, repr=False)
    month_no: int = field(default=0, repr=False)


class BudgetManager:
    """Per-key day/month USD budgets with atomic reserve/commit (see the module docstring).

    `ledger_path` keeps the books in a persistent ledger file (kill -9 safe, shared by all worker
    processes); else `shared_dir` (default: `LLMROUTE_SHARED_DIR`, set by `llmroute serve
    --workers N>1`) in a ledger for this run; without either they are in this process. `state`
    (a `RedisState`) puts them in Redis, shared by replicas on several hosts, before all of these.
    """

    def __init__(
        self,
        keys: Iterable[Any] = (),
        *,
        store: Any = None,
        clock: Callable[[], float] = time.time,
        env: Mapping[str, str] | None = None,
        shared_dir: str | Path | None = None,
        ledger_path: str | Path | None = None,
        state: RedisState | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.keys: dict[str, ApiKey] = {}
        self._lock = threading.Lock()
        self._span: tuple[float, float, str, str, int, int] = (0.0, 0.0, "", "", 0, 0)  # current UTC day
        # (key_id, period) -> [spent, reserved]
        self._acct: dict[tuple[str, str], list[float]] = {}
        self._state = state
        self._ledger: Any = None  # SharedLedger | RedisLedger
        folder = shared_dir if shared_dir is not None else shared_dir_from_env()
        self._ledger_file: Path | None = (
            Path(ledger_path)
            if ledger_path is not None
            else Path(folder) / "budgets.ledger"
            if folder
            else None
        )
        self._seeded = False
        keyed: list[ApiKey] = []
        for k in keys:
            if isinstance(k, ApiKey):
                keyed.append(k)
            else:
                get = k.get if isinstance(k, Mapping) else (lambda n, d=None, k=k: getattr(k, n, d))
                # budgets need no key material; avoid failing on an unset key_env here
                keyed.append(
                    ApiKey(
                        id=str(get("id")),
                        sha256="",
                        budget_usd_day=get("budget_usd_day"),
                        budget_usd_month=get("budget_usd_month"),
                    )
                )
        self.set_keys(keyed)

    def set_keys(self, keys: Sequence[ApiKey]) -> None:
        """Replace the keys and their budgets (at start, and when keys change while running: the
        admin API). New key ids get a ledger slot (seeded with the spend persisted in the store);
        removed ones keep theirs, so a key's spend survives a revoke and re-create."""
        by_id = {k.id: k for k in keys}
        if by_id:
            if self._state is not None:
                if self._ledger is None:
                    self._ledger = self._state.ledger(sorted(by_id), initial=self._persisted)
                else:
                    self._ledger.add_keys(sorted(by_id), initial=self._persisted)
            elif self._ledger_file is not None:
                if self._ledger is None:
                    self._ledger_file.parent.mkdir(parents=True, exist_ok=True)
                    self._ledger = SharedLedger(self._ledger_file, sorted(by_id), initial=self._persisted)
                else:
                    self._ledger.add_keys(sorted(by_id), initial=self._persisted)
            elif self.store is not None and not self._seeded:
                self._seeded = True
                day, month = period_ids(self.clock())
                with self._lock:
                    for (kid, period), usd in self.store.load_spend([day, month]).items():
                        self._acct.setdefault((kid, period), [usd, 0.0])
        self.keys = by_id

    def _persisted(self, key_ids: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
        """Seed for new ledger slots: {key_id: (day no, day spent, month no, month spent)}."""
        _, _, day, month, day_no, month_no = _day_span(self.clock())
        spend = self.store.load_spend([day, month]) if self.store is not None else {}
        return {
            kid: (day_no, spend.get((kid, day), 0.0), month_no, spend.get((kid, month), 0.0))
            for kid in key_ids
        }

    def _row(self, key_id: str, period: str) -> list[float]:
        row = self._acct.get((key_id, period))
        if row is None:
            row = self._acct[(key_id, period)] = [0.0, 0.0]
        return row

    def _exhausted(
        self, kid: str, name: str, budget: float, spent: float, reserved: float, now: float
    ) -> GatewayError:
        wait = _seconds_to_next(now, name)
        return GatewayError(
            429,
            f"Budget exhausted for API key '{kid}': {_ADJ[name]} budget {format_usd(budget)}, "
            f"spent {format_usd(spent)} (+{format_usd(reserved)} in flight). "
            f"It resets in {wait} s (UTC).",
            type="insufficient_quota",
            code="insufficient_quota",
            headers={"Retry-After": str(wait)},
            key_id=kid,
        )

    def reserve(self, key: ApiKey | str | None, max_cost: float) -> Reservation:
        """Hold `max_cost` USD for a request of `key`; raise 429 `GatewayError` if a budget is spent.

        A request is admitted while spend + reservations < budget, so no key ends above its budget
        by more than one request's maximum cost.
        """
        if key is None:
            return Reservation(None, 0.0, settled=True)
        kid = key if isinstance(key, str) else key.id
        cfg, amount, now, span = self._request(kid, max_cost)
        day, month = span[2], span[3]
        ledger = self._ledger
        if ledger is not None and kid in ledger:
            bd = cfg.budget_usd_day if cfg else None
            bm = cfg.budget_usd_month if cfg else None
            try:
                refused = ledger.reserve(kid, span[4], span[5], bd, bm, amount)
            except StateUnavailable as e:
                return self._unavailable(kid, span, e)
            return self._held(kid, cfg, amount, now, span, refused)
        with self._lock:
            rd = self._row(kid, day)
            rm = self._row(kid, month)
            for row, budget, name in (
                (rd, cfg and cfg.budget_usd_day, "day"),
                (rm, cfg and cfg.budget_usd_month, "month"),
            ):
                if budget is not None and row[0] + row[1] >= budget:
                    raise self._exhausted(kid, name, budget, row[0], row[1], now)
            rd[1] += amount
            rm[1] += amount
        return Reservation(kid, amount, day, month)

    async def reserve_async(self, key: ApiKey | str | None, max_cost: float) -> Reservation:
        """`reserve` for the event loop: with Redis state (`RedisLedger.reserve_async`) the hold
        is one auto-pipelined call that does not block the loop; otherwise `reserve`."""
        ledger = self._ledger
        kid = key.id if isinstance(key, ApiKey) else key
        if kid is None or ledger is None or kid not in ledger or not hasattr(ledger, "reserve_async"):
            return self.reserve(key, max_cost)
        cfg, amount, now, span = self._request(kid, max_cost)
        bd = cfg.budget_usd_day if cfg else None
        bm = cfg.budget_usd_month if cfg else None
        try:
            refused = await ledger.reserve_async(kid, span[4], span[5], bd, bm, amount)
        except StateUnavailable as e:
            return self._unavailable(kid, span, e)
        return self._held(kid, cfg, amount, now, span, refused)

    def _request(
        self, kid: str, max_cost: float
    ) -> tuple[ApiKey | None, float, float, tuple[float, float, str, str, int, int]]:
        """(key config, amount to hold, now, the current UTC day's span) for a reservation."""
        now = self.clock()
        span = self._span
        if not span[0] <= now < span[1]:
            span = self._span = _day_span(now)
        return self.keys.get(kid), max(0.0, float(max_cost)), now, span

    def _unavailable(
        self, kid: str, span: tuple[float, float, str, str, int, int], e: StateUnavailable
    ) -> Reservation:
        """The ledger (Redis) failed: 503 under fail_closed, else admitted without a hold."""
        if self._state is None or self._state.on_error == "fail_closed":
            raise GatewayError(
                503,
                f"The budget state for API key '{kid}' is unavailable (the shared Redis does not "
                "answer) and this gateway is set to on_state_error: fail_closed. Retry shortly.",
                type="api_error",
                code="state_unavailable",
                headers={"Retry-After": "1"},
                key_id=kid,
            ) from e
        # fail_open: admitted without a hold; the cost is added to the books on commit
        return Reservation(kid, 0.0, span[2], span[3], day_no=span[4], month_no=span[5])

    def _held(
        self,
        kid: str,
        cfg: ApiKey | None,
        amount: float,
        now: float,
        span: tuple[float, float, str, str, int, int],
        refused: tuple[str, float, float] | None,
    ) -> Reservation:
        """The ledger's answer: the reservation, or 429 when a budget is spent."""
        if refused is not None:
            name, spent, reserved = refused
            budget = cfg.budget_usd_day if name == "day" else cfg.budget_usd_month  # type: ignore[union-attr]
            raise self._exhausted(kid, name, budget, spent, reserved, now)  # type: ignore[arg-type]
        return Reservation(kid, amount, span[2], span[3], day_no=span[4], month_no=span[5])

    def commit(self, res: Reservation, actual_cost: float) -> None:
        """Settle `res` with the actual cost (USD) of the request; later calls are no-ops."""
        if res.settled:
            return
        actual = max(0.0, float(actual_cost))
        ledger = self._ledger
        if ledger is not None and res.key_id in ledger:
            with self._lock:
                if res.settled:
                    return
                res.settled = True
            day_no, month_no = (
                (res.day_no, res.month_no) if res.day_no else _period_numbers(res.day, res.month)
            )
            ledger.settle(res.key_id, day_no, month_no, res.amount, actual)  # type: ignore[arg-type]
        else:
            with self._lock:
                if res.settled:
                    return
                res.settled = True
                for period in (res.day, res.month):
                    row = self._row(res.key_id or "", period)
                    row[1] = max(0.0, row[1] - res.amount)
                    row[0] += actual
        self._store_spend(res, actual)

    async def commit_async(self, res: Reservation, actual_cost: float) -> None:
        """`commit` for the event loop: with Redis state (`RedisLedger.settle_async`) it returns
        once Redis has booked the cost (or queued it while Redis is down), without blocking
        the loop meanwhile; otherwise `commit`. Answer the client after this returns."""
        ledger = self._ledger
        if res.settled or ledger is None or res.key_id not in ledger or not hasattr(ledger, "settle_async"):
            self.commit(res, actual_cost)
            return
        actual = max(0.0, float(actual_cost))
        with self._lock:
            if res.settled:
                return
            res.settled = True
        day_no, month_no = (res.day_no, res.month_no) if res.day_no else _period_numbers(res.day, res.month)
        try:
            await ledger.settle_async(res.key_id, day_no, month_no, res.amount, actual)
        finally:  # a caller cancelled meanwhile: the settle still lands (settle_async), so does this
            self._store_spend(res, actual)

    def _store_spend(self, res: Reservation, actual: float) -> None:
        """Add a settled cost to the trace store's spend history (the ledgers' seed)."""
        if actual > 0 and self.store is not None and res.key_id is not None:
            self.store.add_spend(res.key_id, res.day, actual)
            self.store.add_spend(res.key_id, res.month, actual)

    def release(self, res: Reservation) -> None:
        """Settle `res` with nothing spent (the upstream call failed or was never made)."""
        self.commit(res, 0.0)

    async def release_async(self, res: Reservation) -> None:
        """`release` for the event loop (`commit_async` with nothing spent)."""
        await self.commit_async(res, 0.0)

    def usage(self, key_id: str) -> dict[str, float]:
        """Current spend and in-flight reservations of a key in this day and month (USD).

        With a shared ledger these are the totals over all worker processes.
        """
        now = self.clock()
        ledger = self._ledger
        if ledger is not None and key_id in ledger:
            span = _day_span(now)
            ds, dr, ms, mr = ledger.usage(key_id, span[4], span[5])
            return {"day_spent": ds, "day_reserved": dr, "month_spent": ms, "month_reserved": mr}
        day, month = period_ids(now)
        with self._lock:
            d = list(self._acct.get((key_id, day), (0.0, 0.0)))
            m = list(self._acct.get((key_id, month), (0.0, 0.0)))
        return {"day_spent": d[0], "day_reserved": d[1], "month_spent": m[0], "month_reserved": m[1]}

    def close(self) -> None:
        """Close the shared ledger, if any (the other workers keep theirs)."""
        if self._ledger is not None:
            self._ledger.close()
