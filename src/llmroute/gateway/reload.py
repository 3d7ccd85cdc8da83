"""Hot reload of the whole gateway config (`POST /admin/v1/reload`, `llmroute keys reload`).

A reload re-reads the YAML file and validates it, then builds a complete new runtime off to the
side: a `Gateway` built with `shared=` the served one (routing engine and routers, rules, guards,
signals and response cache, backends, executor, pricing, cascades, sticky sessions, online
learners, the endpoints), starts it, and swaps it in between two requests (one assignment on the
event loop). A request that started on the old runtime finishes on it; the old runtime's backends,
upstream HTTP client and learners are closed once its last request is done (at most
`server.request_timeout_s` + 30 s later). Anything that fails while building or starting the new
runtime (an unknown model, an unreadable router file, a bad rule, a learned verifier that does not
load) leaves the running one in place.

Kept across a reload:

- keys (config file and key store), budgets' spent amounts and reservations, rate-limit windows
  (the `Authenticator` and `BudgetManager` are process-wide, not part of a runtime);
- the backend, its connection pool, concurrency limit and circuit breaker of every model whose
  entry is unchanged (same `models:` item, same `server` upstream settings: `ca_bundle`, `proxy`,
  `breaker_failures`, `breaker_cooldown_s`); a changed model gets a new backend and a closed breaker;
- a router whose reference, file (path, size, modification time) and profiled models are
  unchanged is reused as it is; a changed file is loaded and validated before the swap;
- the response cache when the `cache` section and `trace.store_prompts` are unchanged;
- the learners' state: it lives in the learners' shared state and every new runtime loads it (an
  alias whose candidates changed starts a fresh learner, as at a restart).

Reset by a reload: in-process sticky sessions (with `--workers N` they live in the workers'
shared folder and survive), per-model latency averages of a changed model, the `/v1/models` and
`/v1/route` caches.

Needs a restart (`RESTART_ONLY`; reported as `restart_required`, the running value stays and the
rest of the file applies): the trace store (`store`), the shared state (`state`,
`on_state_error`), OpenTelemetry (`telemetry`), `admin.key_poll_s`, and the listener's settings
`server.max_header_bytes`, `max_header_count`, `header_timeout_s`, `body_timeout_s`,
`keep_alive_s`, `max_connections`, `blas_threads`; listen host/port and `--workers` are
command-line options of `llmroute serve`.

Every worker of `llmroute serve --workers N` rebuilds on its next request (the keys' shared change
counter, `llmroute.gateway.keystore.KeyGeneration`, counts config reloads too), and gateways on
other hosts sharing the trace store within `admin.key_poll_s` (each polls the audit log's newest
`config.reload`). Each re-reads its own copy of the file; one that finds it bad keeps its runtime
and logs the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmroute.gateway.app import Gateway
    from llmroute.gateway.config import GatewayConfig

__all__ = [
    "RESTART_ONLY",
    "Rebuild",
    "close_runtimes",
    "config_changes",
    "plan_reload",
    "restart_required",
    "router_signatures",
    "running_config",
    "start_runtime",
    "swap_runtime",
]

log = logging.getLogger("llmroute.gateway.reload")

#: config settings a reload cannot change (dotted paths; a section name stands for all of it)
RESTART_ONLY: tuple[str, ...] = (
    "store",
    "state",
    "on_state_error",
    "telemetry",
    "admin.key_poll_s",
    "server.max_header_bytes",
    "server.max_header_count",
    "server.header_timeout_s",
    "server.body_timeout_s",
    "server.keep_alive_s",
    "server.max_connections",
    "server.blas_threads",
)
#: server settings the upstream HTTP client and the breakers are built from (a change: new ones)
_UPSTREAM = ("ca_bundle", "proxy")
_BREAKER = ("breaker_failures", "breaker_cooldown_s")
#: seconds a replaced runtime's requests get to finish beyond server.request_timeout_s
DRAIN_GRACE_S = 30.0


def _get(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else cfg


def restart_required(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """The `RESTART_ONLY` settings that differ between `old` and `new`."""
    return [p for p in RESTART_ONLY if _get(old, p) != _get(new, p)]


def running_config(old: GatewayConfig, new: GatewayConfig) -> GatewayConfig:
    """`new` with `old`'s values for the settings a reload cannot change: what a reload runs."""
    server = {p.split(".", 1)[1] for p in RESTART_ONLY if p.startswith("server.")}
    admin = {p.split(".", 1)[1] for p in RESTART_ONLY if p.startswith("admin.")}
    top = {p: getattr(old, p) for p in RESTART_ONLY if "." not in p}
    return new.model_copy(
        update={
            **top,
            "server": new.server.model_copy(update={f: getattr(old.server, f) for f in server}),
            "admin": new.admin.model_copy(update={f: getattr(old.admin, f) for f in admin}),
        }
    )


def router_signatures(config: GatewayConfig) -> dict[str, tuple[Any, ...]]:
    """Per router name: its reference, its file's (path, size, modification time) and the profiled
    models added to it, with their profile files' too (a profile rewritten in place, e.g. by a new
    `llmroute profile` run, changes the added column). A router is reused by a reload only when
    this is unchanged."""
    profiled = tuple(
        (m.estimated_by, _file_signature(config, m.profile), m.input_per_mtok, m.output_per_mtok)
        for m in config.models
        if m.profile
    )
    out: dict[str, tuple[Any, ...]] = {}
    for name, ref in config.routers.items():
        file = () if ref.startswith("builtin:") else _file_signature(config, ref)
        out[name] = (ref, file, profiled)
    return out


def _file_signature(config: GatewayConfig, ref: str) -> tuple[Any, ...]:
    """(resolved path, size, modification time in ns) of a file the config names; None for the
    last two when it cannot be read (the load then reports why)."""
    path = config.resolve_path(ref)
    try:
        st = path.stat()
    except OSError:
        return (str(path), None, None)
    return (str(path), st.st_size, st.st_mtime_ns)


def _named(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[str]]:
    return {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "changed": sorted(k for k in set(old) & set(new) if old[k] != new[k]),
    }


def _rules(rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {str(r.get("name") or f"#{i}") if isinstance(r, dict) else f"#{i}": r for i, r in enumerate(rules)}


def config_changes(
    old: GatewayConfig, new: GatewayConfig, routers_changed: list[str] | None = None
) -> dict[str, Any]:
    """What a reload from `old` to `new` changes: models, aliases, routers (a changed file
    counts) and rules, each {added, removed, changed} by name (a rule without a name: '#index'),
    and the other top-level sections that differ (`sections`; with `running_config`'s `new` the
    restart-only ones never do)."""
    dump = {m.name: m.model_dump(mode="json") for m in old.models}
    models = _named(dump, {m.name: m.model_dump(mode="json") for m in new.models})
    aliases = _named(
        {k: a.model_dump(mode="json") for k, a in old.aliases.items()},
        {k: a.model_dump(mode="json") for k, a in new.aliases.items()},
    )
    routers = _named(old.routers, new.routers)
    routers["changed"] = sorted(set(routers["changed"]) | set(routers_changed or ()))
    rules = _named(_rules(old.rules), _rules(new.rules))
    named = ("models", "aliases", "routers", "rules", "base_dir")
    sections = sorted(
        s for s in type(new).model_fields if s not in named and _get(old, s) != _get(new, s)
    )  # every other top-level section, those a later version adds too
    return {"models": models, "aliases": aliases, "routers": routers, "rules": rules, "sections": sections}


def _changed(changes: Mapping[str, Any]) -> bool:
    """Whether `config_changes` says anything beyond keys and admin (which apply without a runtime)."""
    named = any(v for k in ("models", "aliases", "routers", "rules") for v in changes[k].values())
    return named or any(s not in ("keys", "admin") for s in changes["sections"])


class Rebuild:
    """A planned reload: the config it runs (`config`), what changes (`changes`), what needs a
    restart (`restart`), and whether it needs a new runtime (`needed`)."""

    def __init__(self, gateway: Gateway, loaded: GatewayConfig) -> None:
        live = gateway.live
        self.config = running_config(live.config, loaded)
        self.restart = restart_required(live.config, loaded)
        self.signatures = router_signatures(self.config)
        self.routers_changed = sorted(
            n
            for n, sig in self.signatures.items()
            if n in live.router_sigs and live.router_sigs[n] != sig and live.config.routers.get(n) is not None
            and live.config.routers[n] == self.config.routers[n]
        )  # fmt: skip
        self.changes = config_changes(live.config, self.config, self.routers_changed)
        self.needed = _changed(self.changes)
        self.runtime: Gateway | None = None  # the started runtime to swap in (`start_runtime`)
        self.file_stamp: Any = None  # the config file's (mtime, size, inode) when it was read

    def summary(self) -> dict[str, Any]:
        """The reload answer's and audit entry's account of it."""
        return {**self.changes, "restart_required": self.restart, "runtime_rebuilt": self.needed}


def plan_reload(gateway: Gateway, loaded: GatewayConfig) -> Rebuild:
    """Compare the file's config `loaded` with what `gateway` runs (see `Rebuild`)."""
    return Rebuild(gateway, loaded)


def _build(gateway: Gateway, plan: Rebuild) -> Gateway:
    """The new runtime, constructed (routers loaded) but not started; in a worker thread."""
    from llmroute.gateway.app import Gateway as _Gateway
    from llmroute.gateway.routing import load_router

    live = gateway.live
    cfg = plan.config
    needed = {a.router for a in cfg.aliases.values()}
    routers: dict[str, Any] = {}
    for name in sorted(needed):
        old = live.engine.routers.get(name)
        if old is not None and live.router_sigs.get(name) == plan.signatures[name]:
            routers[name] = old
        else:
            routers[name] = load_router(cfg.routers[name], cfg)
    new = _Gateway(cfg, routers=routers, metrics=gateway.metrics, shared=gateway)
    new.router_sigs = plan.signatures
    return new


def _same(old: Any, new: Any, fields: tuple[str, ...]) -> bool:
    return all(getattr(old, f) == getattr(new, f) for f in fields)


async def start_runtime(gateway: Gateway, plan: Rebuild) -> Gateway:
    """Build and start the runtime `plan` describes, sharing `gateway`'s store, budgets, keys and
    metrics; reuse the unchanged models' backends (and with them the upstream HTTP client) and
    breakers. Raises whatever building or starting it raised, after closing what it started."""
    from llmroute.gateway.backends.base import upstream_client

    live = gateway.live
    new = await asyncio.to_thread(_build, gateway, plan)
    cfg, old_cfg = new.config, live.config
    new.store, new.budgets = gateway.store, gateway.budgets
    reuse_http = live.http is not None and _same(old_cfg.server, cfg.server, _UPSTREAM)
    started: list[Any] = []
    try:
        new.http = live.http if reuse_http else upstream_client(cfg.server, limit_per_origin=1024)
        old_models = {m.name: m for m in old_cfg.models}
        same_breakers = _same(old_cfg.server, cfg.server, _BREAKER)
        for m in cfg.models:
            name = m.name
            if reuse_http and old_models.get(name) == m and name in live.backends:
                new.backends[name] = live.backends[name]  # the executor holds this dict
                if name in live.executor.limits:  # its concurrency limit counts both runtimes' calls
                    new.executor.limits[name] = live.executor.limits[name]
                if same_breakers and name in live.executor.breakers:
                    new.executor.breakers[name] = live.executor.breakers[name]
            else:
                await new.backends[name].start(new.http)
                started.append(new.backends[name])
        if cfg.server.blas_threads == 1:
            for r in new.engine.routers.values():
                if hasattr(r, "blas_single_thread"):
                    r.blas_single_thread = True
        old_guard, guard = live.guard, new.guard
        if (
            guard is not None
            and old_guard is not None
            and old_guard.cache is not None
            and old_cfg.cache == cfg.cache
            and old_cfg.trace.store_prompts == cfg.trace.store_prompts
        ):
            _close_cache(guard)
            guard.cache = old_guard.cache
        if new.learning is not None:  # after the store: loads each alias's state
            await new.learning.start(gateway.store)
    except BaseException:
        for b in started:
            with contextlib.suppress(Exception):
                await b.close()
        if not reuse_http and new.http is not None:
            with contextlib.suppress(Exception):
                await new.http.close()
        if new.learning is not None:
            with contextlib.suppress(Exception):
                await new.learning.stop()
        if new.guard is not None and new.guard.cache is not getattr(live.guard, "cache", None):
            _close_cache(new.guard)
        raise
    new._started = True
    return new


def _close_cache(guard: Any) -> None:
    cache = getattr(guard, "cache", None)
    close = getattr(getattr(cache, "backend", None), "close", None) or getattr(cache, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


def _retarget_cache_metrics(gateway: Gateway, old: Any, new: Any) -> None:
    """Point the Prometheus cache collector at the new runtime's response cache."""
    from llmroute.signals.gateway import CacheCollector

    old_cache = getattr(old, "cache", None) if old is not None else None
    new_cache = getattr(new, "cache", None) if new is not None else None
    if old_cache is new_cache:
        return
    registry = gateway.metrics.registry
    found = False
    for c in list(getattr(registry, "_collector_to_names", {})):
        if isinstance(c, CacheCollector):
            if new_cache is None:
                registry.unregister(c)
            else:
                c.cache = new_cache
            found = True
    if not found and new_cache is not None:
        registry.register(CacheCollector(new_cache))


def swap_runtime(gateway: Gateway, new: Gateway) -> Gateway:
    """Make `new` serve the next request (no await: atomic on the event loop) and close the
    runtime it replaces once that one's requests are done. Returns the replaced runtime."""
    old = gateway.live
    _retarget_cache_metrics(gateway, old.guard, new.guard)
    gateway._live = new
    gateway.admin_auth = new.admin_auth
    if getattr(gateway.dashboard, "gw", None) is not None:
        gateway.dashboard.gw = new
    old.retired = True
    retiring: list[Gateway] = gateway.__dict__.setdefault("_retiring", [])
    retiring.append(old)
    task = asyncio.get_running_loop().create_task(_retire(gateway, old))
    draining: set[asyncio.Task[None]] = gateway.__dict__.setdefault("_draining", set())
    draining.add(task)
    task.add_done_callback(draining.discard)
    return old


def _in_use(gateway: Gateway, but: Gateway) -> tuple[set[int], set[int], set[int]]:
    """The ids of the backends, upstream HTTP clients and response caches of the live runtime
    and of the replaced ones still draining, other than `but`."""
    rts = [gateway.live, *(r for r in gateway.__dict__.get("_retiring", ()) if r is not but)]
    return (
        {id(b) for r in rts for b in r.backends.values()},
        {id(r.http) for r in rts},
        {id(getattr(r.guard, "cache", None)) for r in rts},
    )


async def _retire(gateway: Gateway, old: Gateway) -> None:
    """Wait until `old` has no request in flight (bounded), then close what neither the live
    runtime nor another one still draining uses."""
    end = time.monotonic() + old.timeout_s + DRAIN_GRACE_S
    try:
        while old.inflight > 0 and time.monotonic() < end:
            await asyncio.sleep(0.05)
        if old.inflight > 0:
            log.warning("closing a replaced runtime with %d request(s) still in flight", old.inflight)
    finally:  # also when cancelled at shutdown
        await _close(old, *_in_use(gateway, old))
        with contextlib.suppress(ValueError):
            gateway.__dict__.get("_retiring", []).remove(old)


async def _close(rt: Gateway, backends: set[int], clients: set[int], caches: set[int]) -> None:
    """Close `rt`'s backends, upstream client, learners and response cache, but for those whose
    ids are given (still used elsewhere)."""
    for b in rt.backends.values():
        if id(b) not in backends:
            with contextlib.suppress(Exception):
                await b.close()
    if rt.http is not None and id(rt.http) not in clients:
        with contextlib.suppress(Exception):
            await rt.http.close()
    if rt.learning is not None:
        with contextlib.suppress(Exception):
            await rt.learning.stop()
    if getattr(rt.guard, "cache", None) is not None and id(rt.guard.cache) not in caches:
        _close_cache(rt.guard)


async def close_runtimes(gateway: Gateway) -> None:
    """At shutdown of the served `gateway`, before it closes its own parts (the store stays open
    for the learners' last outcomes): close the runtime a reload swapped in and those still
    draining; what they share with `gateway` is left to it."""
    for task in list(gateway.__dict__.get("_draining", ())):
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    live = gateway.live
    if live is not gateway:  # what it shares with `gateway` is closed by gateway.shutdown
        cache = getattr(gateway.guard, "cache", None)
        await _close(live, {id(b) for b in gateway.backends.values()}, {id(gateway.http)}, {id(cache)})
