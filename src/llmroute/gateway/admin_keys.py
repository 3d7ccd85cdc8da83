"""API keys and the config kept current without restarts (`KeyManager`): the config file's keys
merged with the key store's (`merge_keys`), reloaded on every worker when the shared counter
moves (a key changed, or the config was reloaded elsewhere), the store polled for changes made
by other hosts, SIGHUP as a config reload.

The seam: this module is the state and how it follows changes; the admin API's handlers that
make the changes (`/admin/v1/...`) are `llmroute.gateway.admin_api` (`KeyManager` inherits
them from `AdminApiMixin`), the master-key check is `llmroute.gateway.admin_auth`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson

from llmroute.gateway.admin_api import AdminApiMixin
from llmroute.gateway.admin_auth import AdminAuth
from llmroute.gateway.auth import ApiKey, Authenticator, GatewayError
from llmroute.gateway.config import load_config
from llmroute.gateway.keystore import KeyGeneration, KeyStore
from llmroute.gateway.ledger import shared_dir_from_env
from llmroute.gateway.store import StoreError

__all__ = ["KeyManager", "merge_keys"]

log = logging.getLogger("llmroute.gateway.admin")  # one logger name for the admin side


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    """A file's (modification time in ns, size, inode); None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def merge_keys(
    config_keys: Sequence[ApiKey], stored: Sequence[dict[str, Any]]
) -> tuple[list[ApiKey], list[str]]:
    """The keys the gateway accepts: the config file's, then the store's live ones. On an id (or
    key text) in both, the config file's wins and the stored one is skipped with a warning."""
    out = list(config_keys)
    ids = {k.id for k in out}
    hashes = {k.sha256 for k in out}
    warnings: list[str] = []
    for r in stored:
        if r.get("revoked_ts") is not None:
            continue
        if r["id"] in ids or r["sha256"] in hashes:
            warnings.append(
                f"key '{r['id']}' in the key store clashes with a key of the config file: the config's wins"
            )
            continue
        ids.add(r["id"])
        hashes.add(r["sha256"])
        out.append(
            ApiKey(
                id=r["id"],
                sha256=r["sha256"],
                budget_usd_day=r["budget_usd_day"],
                budget_usd_month=r["budget_usd_month"],
                rpm=r["rpm"],
                allowed=None if r["aliases"] is None else tuple(r["aliases"]),
            )
        )
    return out, warnings


class KeyManager(AdminApiMixin):
    """Keys managed without restarts, and the admin API over them (`/admin/v1/...`).

    The gateway accepts the config file's keys and the live keys of the key store
    (`llmroute.gateway.keystore`); the config file's win a name clash. Every change is written to
    the store, audited, and then counted in the shared `KeyGeneration`; each request first
    compares that counter with the one its worker loaded (`stale`, well under a microsecond) and
    reloads the keys (`refresh`) when it moved. A config reload also bumps a second counter, so
    that every worker re-reads the config file and swaps in its new runtime the same way.

    Endpoints (all need the master key, see `AdminAuth`)::

        POST   /admin/v1/keys           create: {id?, budget_usd_day?, budget_usd_month?, rpm?, aliases?}
                                        -> 201 with the key text (`key`), shown this once
        GET    /admin/v1/keys           list (config and store keys, revoked ones too; never a secret)
        GET    /admin/v1/keys/{id}      one key, as the list shows it
        PATCH  /admin/v1/keys/{id}      re-budget: any of the limits (null removes one)
        DELETE /admin/v1/keys/{id}      revoke
        GET    /admin/v1/config         the running config, secrets masked
        POST   /admin/v1/reload         re-read the config file and apply it whole (llmroute.gateway.reload)
        GET    /admin/v1/audit?limit=N  admin actions, newest first
    """

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway
        folder = shared_dir_from_env()
        self.generation = KeyGeneration(folder)
        self.seen = self.generation.value
        self.config_seen = self.generation.config_value
        self.keystore: KeyStore | None = None
        self.config_keys: list[ApiKey] = []
        self.stored: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self._poller: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # SIGHUP reloads in progress
        # (config file, its (mtime, size, inode)) of the last config this worker applied
        self._applied: tuple[str | None, tuple[int, int, int] | None] = (None, None)
        self._sighup_loop: asyncio.AbstractEventLoop | None = None

    # ---- keeping keys current ---------------------------------------------------------------

    async def start(self, store: Any) -> list[ApiKey]:
        """At gateway startup (store open): load the stored keys and apply them with the config
        file's. Returns the keys the gateway accepts."""
        self.keystore = KeyStore(store)
        self.seen = self.generation.value
        self.config_seen = self.generation.config_value
        self.config_keys = [ApiKey.from_config(k) for k in self.gw.config.keys]
        self.stored = await self.keystore.alist(revoked=True)
        keys, self.warnings = merge_keys(self.config_keys, self.stored)
        for w in self.warnings:
            log.warning("%s", w)
        self.gw.auth.set_keys(keys)
        poll_s = getattr(self.gw.config.admin, "key_poll_s", None)
        self._watch_sighup()
        if poll_s:
            stamp = await self.keystore.astamp()
            reloaded = await self.keystore.areload_stamp()
            self._poller = asyncio.get_running_loop().create_task(self._poll(float(poll_s), stamp, reloaded))
        return keys

    async def _poll(self, every_s: float, stamp: tuple[int, float], reloaded: float) -> None:
        """Every `every_s`: if the key store changed, or a config reload was audited (another
        gateway sharing the store, e.g. on another host), bump the generation so that this
        gateway's workers reload on their next request (the config too after a reload)."""
        assert self.keystore is not None
        while True:
            await asyncio.sleep(every_s)
            try:
                now = await self.keystore.astamp()
                now_reloaded = await self.keystore.areload_stamp()
            except StoreError:  # the store is closed: the gateway is stopping
                return
            except Exception as e:  # the database is unreachable: try again next time
                log.warning("checking the key store for changes failed: %s: %s", type(e).__name__, e)
                continue
            if now_reloaded != reloaded:
                reloaded = now_reloaded
                stamp = now
                self.generation.bump(config=True)
            elif now != stamp:
                stamp = now
                self.generation.bump()

    def _watch_sighup(self) -> None:
        """`kill -HUP <pid>` of a gateway process reloads its config like POST /admin/v1/reload
        (audited with actor 'sighup'). Only where the event loop runs in the main thread."""
        import signal

        loop = asyncio.get_running_loop()

        def hup() -> None:
            task = loop.create_task(self._sighup())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        try:
            loop.add_signal_handler(signal.SIGHUP, hup)
            self._sighup_loop = loop
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):  # not the main thread
            self._sighup_loop = None

    async def _sighup(self) -> None:
        try:
            _status, out = await self.reload("sighup")
            log.info("SIGHUP: config reloaded (runtime rebuilt: %s)", out.get("runtime_rebuilt"))
        except GatewayError as e:
            log.error("SIGHUP: %s", e.message)

    def stale(self) -> bool:
        """Whether keys changed since this worker loaded them (hot path: one memory read)."""
        return self.generation.value != self.seen

    async def refresh(self) -> None:
        """Reload the keys (and, after a config reload, the whole config: `_follow_reload`).
        On a failure (store unreachable) the current keys stay and the next try is 1 s later."""
        if self.keystore is None or time.monotonic() < self._retry_at:
            return
        async with self._lock:
            gen, cgen = self.generation.value, self.generation.config_value
            if gen == self.seen:
                return
            try:
                if cgen != self.config_seen:
                    await self._follow_reload()
                    self.config_seen = cgen  # a bad file is not retried until the next reload
                stored = await self.keystore.alist(revoked=True)
                self._apply(self.config_keys, stored)
            except Exception as e:  # keep serving with the keys we have
                self._retry_at = time.monotonic() + 1.0
                log.error("reloading API keys failed (%s: %s); the previous keys stay", type(e).__name__, e)
                return
            self.seen, self.config_seen = gen, cgen

    def _apply(self, config_keys: list[ApiKey], stored: list[dict[str, Any]]) -> list[ApiKey]:
        keys, warnings = merge_keys(config_keys, stored)
        self.gw.auth.set_keys(keys)  # ValueError (same key twice): nothing changed
        if self.gw.budgets is not None:
            self.gw.budgets.set_keys(keys)
        self.config_keys, self.stored, self.warnings = config_keys, stored, warnings
        return keys

    def _apply_config(self, cfg: Any, config_keys: list[ApiKey]) -> None:
        """Apply the config's keys and admin block (`cfg`: what the runtime runs)."""
        admin = AdminAuth.from_config(cfg)
        self.config_keys = config_keys
        live = getattr(self.gw, "live", self.gw)
        self.gw.admin_auth = live.admin_auth = admin
        live.config = live.config.model_copy(update={"keys": cfg.keys, "admin": cfg.admin})

    async def _load_and_plan(self, path: str) -> tuple[Any, list[ApiKey], Any]:
        """Read and validate the config file (keys, master key, the whole new runtime when
        anything beyond keys and admin changed). Returns (the config, its keys, the reload plan
        with its started runtime in `plan.runtime`, None when none is needed); raises
        `ConfigError` / `ValueError` / whatever building the runtime raised."""
        from llmroute.gateway.reload import plan_reload, start_runtime

        stamp = _file_stamp(path)  # before reading: a write after it is seen next time
        cfg = await asyncio.get_running_loop().run_in_executor(None, load_config, path)
        config_keys = [ApiKey.from_config(k) for k in cfg.keys]
        AdminAuth.from_config(cfg)
        Authenticator(merge_keys(config_keys, self.stored)[0])  # same key text twice
        plan = plan_reload(self.gw, cfg)
        plan.file_stamp = stamp
        plan.runtime = await start_runtime(self.gw, plan) if plan.needed else None
        return cfg, config_keys, plan

    def _swap(self, plan: Any, config_keys: list[ApiKey]) -> None:
        """Swap in the plan's runtime (if any) and apply its keys and admin block (no await)."""
        from llmroute.gateway.reload import swap_runtime

        if plan.runtime is not None:
            swap_runtime(self.gw, plan.runtime)
        self._apply_config(plan.config, config_keys)
        self._applied = (self.config_path(), plan.file_stamp)

    async def _follow_reload(self) -> None:
        """Another worker (or host) reloaded the config: re-read the file and do the same here. A
        file that is bad now keeps this worker's runtime (logged)."""
        from llmroute.gateway.reload import router_signatures

        path = self.config_path()
        if path is None:
            return
        live = getattr(self.gw, "live", self.gw)
        if self._applied == (path, _file_stamp(path)) and router_signatures(live.config) == live.router_sigs:
            return  # this worker runs that file already (the reload was its own, or seen before)
        try:
            _cfg, config_keys, plan = await self._load_and_plan(path)
        except Exception as e:
            log.error("config reload from %s failed here (%s: %s); this worker keeps its config", path,
                      type(e).__name__, e)  # fmt: skip
            return
        self._swap(plan, config_keys)
        if plan.needed:
            log.info("config reloaded from %s: %s", path, orjson.dumps(plan.summary()).decode())

    def config_path(self) -> str | None:
        """The config file the gateway was built from (`Gateway.config_path`, else the
        `LLMROUTE_CONFIG` environment variable of `llmroute serve --workers N`)."""
        return getattr(self.gw, "config_path", None) or os.environ.get("LLMROUTE_CONFIG") or None

    async def _changed(self, action: str, target: str | None, actor: str, detail: dict[str, Any]) -> None:
        """After a change is in the store: tell the other workers, apply it here, audit it."""
        assert self.keystore is not None
        async with self._lock:
            gen = self.generation.bump()
            self._apply(self.config_keys, await self.keystore.alist(revoked=True))
            self.seen = gen
        log.info("admin: %s %s by %s %s", action, target or "", actor, orjson.dumps(detail).decode())
        await self.keystore.aaudit(action, target, actor, detail)

    def close(self) -> None:
        """Stop polling the key store; release the shared counter."""
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self._sighup_loop is not None:
            import signal

            with contextlib.suppress(Exception):
                self._sighup_loop.remove_signal_handler(signal.SIGHUP)
            self._sighup_loop = None
        self.generation.close()
