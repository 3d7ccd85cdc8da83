"""Budget and rate-limit counters shared by the gateway's worker processes on one host.

`BudgetManager` (llmroute.gateway.auth) keeps per-key spend in a `SharedLedger`: a small file,
memory-mapped by every worker process, where each read-modify-write runs under an exclusive
`flock` on the file (plus a thread lock, since flock does not exclude threads that share a file
descriptor). A budget check-and-reserve is therefore atomic across all workers, so a key
overspends its budget by at most one request's maximum cost however many workers serve it. One
locked update costs a few microseconds. The gateway's budget ledger is a persistent file beside
the trace store (`store.ledger`, see `llmroute.gateway.store.spend_ledger_path`): a settled cost
is in the file (the kernel's page cache, shared with every process mapping it) before the
response goes out, so a kill -9 of any or all processes loses no spend, and the next start reads
it back. (Power loss can lose what the kernel had not yet written to disk.)
`llmroute serve --workers N` (N > 1) also creates a private temporary folder, named in the
`LLMROUTE_SHARED_DIR` environment variable, for the rate-limit buckets (`Authenticator`) and, when
no persistent ledger is configured, the budgets.

Layout: a 64-byte header (magic, key slots, worker entries), one 80-byte slot per key (a 16-byte
digest of the key id, then 8 doubles: day number, day spent, day reserved, month number, month
spent, month reserved (USD), rate-limit tokens, rate-limit stamp), then one entry per worker
process (its pid and start time, then per key: day number, day reserved, month number, month
reserved). Day
number = whole UTC days since the epoch, month number = year * 12 + month - 1; a slot rolls over
to a new period on its first use in it.

A worker that dies mid-request (uvicorn restarts killed or hung workers) leaves reservations
behind; its entry says how much. They are given back when a process opens the ledger (the
restarted worker, or the next `serve` after a kill, does) and when a reservation is refused (at
most once per `reclaim_interval_s` per process): entries whose process no longer exists (its pid
is gone, or now belongs to a process started at another time) are subtracted from the key totals
and freed. Spend itself (settled costs) is never given back.

Limits: workers on different hosts do not share a ledger. A new ledger (no file yet) is seeded
from the spend persisted in the trace store (`initial`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "SHARED_DIR_ENV",
    "SharedLedger",
    "process_alive",
    "process_start",
    "read_spend",
    "shared_dir_from_env",
]

SHARED_DIR_ENV = "LLMROUTE_SHARED_DIR"

_MAGIC = b"LLMRLED3"
_HEADER_BYTES = 64
_SLOT_BYTES = 80  # 16-byte digest + 8 doubles
_SLOT_DOUBLES = _SLOT_BYTES // 8
_HEADER_DOUBLES = _HEADER_BYTES // 8
# field offsets (in doubles) inside a slot, after the 2-double digest
_DAY, _DAY_SPENT, _DAY_RES, _MONTH, _MONTH_SPENT, _MONTH_RES, _TOKENS, _STAMP = range(2, 10)
# a worker entry: pid, start time, then per key slot 4 doubles (day number, day reserved, month
# number, month reserved)
_W_HEAD = 2
_W_FIELDS = 4

Initial = Callable[[Sequence[str]], Mapping[str, tuple[float, float, float, float]]]


def shared_dir_from_env() -> str | None:
    """The folder named by `LLMROUTE_SHARED_DIR` (set by `llmroute serve --workers N>1`), or None."""
    return os.environ.get(SHARED_DIR_ENV) or None


def _digest(key_id: str) -> bytes:
    return hashlib.blake2b(key_id.encode("utf-8"), digest_size=16).digest()


def process_start(pid: int) -> float:
    """When process `pid` started, in clock ticks since boot (Linux: /proc/PID/stat field 22);
    0.0 where that cannot be read (another OS, or no such process). With the pid it names one
    process for good: a pid the kernel reuses later comes with another start time."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
        return float(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0.0


def _zombie(pid: int) -> bool:
    """Whether `pid` has exited and waits to be reaped (Linux /proc state Z or X); False elsewhere."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] in (b"Z", b"X")
    except (OSError, ValueError):
        return False


def process_alive(pid: int, start: float = 0.0) -> bool:
    """Whether process `pid` exists and, when `start` (from `process_start`) is given and this
    system reports start times, is the process that started then (not a later reuse of its pid)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    if _zombie(pid):  # killed but not yet reaped by its parent: its holds can be given back now
        return False
    if start:
        now = process_start(pid)
        return not now or now == start
    return True


def read_spend(
    path: str | Path, key_ids: Sequence[str], day: int, month: int
) -> dict[str, tuple[float, float]]:
    """{key_id: (day spent, month spent)} from the ledger file at `path` for day number `day` and
    month number `month` (see the module docstring), for the ids that have a slot; read-only (a
    shared lock, nothing claimed), so a CLI can read a running gateway's books. {} if no file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return {}
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        head = os.pread(fd, 24, 0)
        if head[:8] != _MAGIC:
            raise ValueError(f"{path} is not an llmroute ledger file (or an older layout)")
        cap = int.from_bytes(head[8:16], "little")
        slots = os.pread(fd, cap * _SLOT_BYTES, _HEADER_BYTES)
    finally:
        os.close(fd)  # releases the lock
    by_digest = {_digest(k): k for k in key_ids}
    out: dict[str, tuple[float, float]] = {}
    for i in range(cap):
        rec = slots[i * _SLOT_BYTES : (i + 1) * _SLOT_BYTES]
        kid = by_digest.get(bytes(rec[:16]))
        if kid is None:
            continue
        v = memoryview(rec[16:]).cast("d")  # day no, day spent, day res, month no, month spent, ...
        out[kid] = (v[1] if v[0] == day else 0.0, v[4] if v[3] == month else 0.0)
    return out


class SharedLedger:
    """Per-key (day, month) spend/reservations and token buckets in a shared, file-locked map.

    `path` is created if missing (with room for `capacity` keys, default max(64, 2 x keys), and
    `max_workers` worker processes alive at once). Every id in `key_ids` gets a slot. When this
    process is the first to claim slots, `initial` (if given) is called with the new ids, under
    the lock, and returns {key_id: (day_number, day_spent, month_number, month_spent)} to seed
    them with persisted spend.
    """

    def __init__(
        self,
        path: str | Path,
        key_ids: Sequence[str],
        *,
        capacity: int | None = None,
        max_workers: int = 64,
        initial: Initial | None = None,
        reclaim_interval_s: float = 1.0,
    ) -> None:
        self.path = str(path)
        self.reclaim_interval_s = float(reclaim_interval_s)
        self._last_reclaim = -float("inf")
        self._pid = os.getpid()
        self._start = process_start(self._pid)
        self._tlock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        # key id -> (slot base, this process's worker-entry base for that key), in doubles
        self._slots: dict[str, tuple[int, int]] = {}
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if os.fstat(self._fd).st_size == 0:
                    cap = int(capacity or max(64, 2 * len(key_ids)))
                    nw = int(max_workers)
                    os.ftruncate(
                        self._fd, _HEADER_BYTES + cap * _SLOT_BYTES + nw * 8 * (_W_HEAD + cap * _W_FIELDS)
                    )
                    os.pwrite(self._fd, _MAGIC + cap.to_bytes(8, "little") + nw.to_bytes(8, "little"), 0)
                head = os.pread(self._fd, 24, 0)
                if head[:8] != _MAGIC:
                    raise ValueError(f"{self.path} is not an llmroute ledger file (or an older layout)")
                self._cap = cap = int.from_bytes(head[8:16], "little")
                self._nw = int.from_bytes(head[16:24], "little")
                self._wstride = _W_HEAD + cap * _W_FIELDS
                self._w0 = _HEADER_DOUBLES + cap * _SLOT_DOUBLES
                self._mm = mmap.mmap(self._fd, (self._w0 + self._nw * self._wstride) * 8)
                self._v = memoryview(self._mm).cast("d")
                self._reclaim()
                self._me = self._claim_worker()
                self._seed(self._claim(key_ids, cap, self._me), initial)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except BaseException:
            self.close()
            raise

    def _seed(self, new: list[str], initial: Initial | None) -> None:
        """Seed the slots claimed just now with `initial`'s persisted spend (lock held)."""
        if new and initial is not None:
            for kid, (day, day_spent, month, month_spent) in initial(new).items():
                if kid not in self._slots:
                    continue
                base = self._slots[kid][0]
                v = self._v
                v[base + _DAY], v[base + _DAY_SPENT] = float(day), float(day_spent)
                v[base + _MONTH], v[base + _MONTH_SPENT] = float(month), float(month_spent)

    def add_keys(self, key_ids: Sequence[str], initial: Initial | None = None) -> list[str]:
        """Give slots to key ids this process does not map yet (keys added while running: the
        admin API); a slot another process claimed for the id is shared. `initial` seeds slots
        claimed just now, as in the constructor. Returns the ids that got a slot in this call.
        Raises ValueError when the file has no free slot left."""
        todo = [k for k in dict.fromkeys(key_ids) if k not in self._slots]
        if not todo:
            return []
        with self._tlock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                self._seed(self._claim(todo, self._cap, self._me), initial)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return todo

    def _claim_worker(self) -> int:
        """The base (in doubles) of this process's worker entry, claiming a free one if needed."""
        v, free = self._v, None
        for w in range(self._nw):
            base = self._w0 + w * self._wstride
            pid = int(v[base])
            if pid == self._pid and v[base + 1] == self._start:
                return base
            if pid == 0 and free is None:
                free = base
        if free is None:
            raise ValueError(
                f"the ledger {self.path} has no free worker entry ({self._nw} processes alive); "
                "run fewer worker processes"
            )
        for f in range(2, self._wstride):
            v[free + f] = 0.0
        v[free], v[free + 1] = float(self._pid), self._start
        return free

    def _mine(self, base: int) -> bool:
        return int(self._v[base]) == self._pid and self._v[base + 1] == self._start

    def _reclaim(self) -> bool:
        """Give back the reservations of worker processes that no longer exist (lock held)."""
        v, found = self._v, False
        for w in range(self._nw):
            wb = self._w0 + w * self._wstride
            pid = int(v[wb])
            if pid == 0 or self._mine(wb) or (pid != self._pid and process_alive(pid, v[wb + 1])):
                continue
            found = True
            for i in range(self._cap):
                e = wb + _W_HEAD + i * _W_FIELDS
                kb = _HEADER_DOUBLES + i * _SLOT_DOUBLES
                if v[e + 1] and v[kb + _DAY] == v[e]:
                    v[kb + _DAY_RES] = max(0.0, v[kb + _DAY_RES] - v[e + 1])
                if v[e + 3] and v[kb + _MONTH] == v[e + 2]:
                    v[kb + _MONTH_RES] = max(0.0, v[kb + _MONTH_RES] - v[e + 3])
            for f in range(self._wstride):
                v[wb + f] = 0.0
        return found

    def _claim(self, key_ids: Sequence[str], cap: int, me: int) -> list[str]:
        """Map each key id to its slot (claiming free slots); returns the ids claimed just now."""
        mm = self._mm
        used: dict[bytes, int] = {}
        free: list[int] = []
        empty = bytes(16)
        for i in range(cap):
            off = _HEADER_BYTES + i * _SLOT_BYTES
            d = mm[off : off + 16]
            if d == empty:
                free.append(i)
            else:
                used[d] = i
        new: list[str] = []
        for kid in dict.fromkeys(key_ids):
            d = _digest(kid)
            i = used.get(d)
            if i is None:
                if not free:
                    free = self._recycle({_digest(k) for k in key_ids}, used)
                if not free:
                    raise ValueError(
                        f"the ledger {self.path} has no free slot for key '{kid}' ({cap} slots, each "
                        "held by a key that spent in the latest month or mapped by another running "
                        "process): stop the gateway and move the file away; the next start makes a "
                        "larger one, seeded with the spend persisted in the trace store"
                    )
                i = free.pop(0)
                off = _HEADER_BYTES + i * _SLOT_BYTES
                mm[off : off + 16] = d
                base = _HEADER_DOUBLES + i * _SLOT_DOUBLES
                for f in range(_DAY, _STAMP + 1):
                    self._v[base + f] = 0.0
                self._v[base + _TOKENS] = -1.0  # bucket not started: full on first use
                used[d] = i
                new.append(kid)
            self._slots[kid] = (_HEADER_DOUBLES + i * _SLOT_DOUBLES, me + _W_HEAD + i * _W_FIELDS)
        return new

    def _recycle(self, keep: set[bytes], used: dict[bytes, int]) -> list[int]:
        """Free the slots of key ids that went quiet, when no slot is free (lock held): a file that
        outlives many keys (rotated, revoked) must not stop the gateway from starting. A slot is
        taken back only while no other live process maps the file (so no one else still holds
        its index) and only from a key this process does not use whose books show no activity in
        the latest month any key was active (its spend is persisted in the trace store: should it
        come back, its new slot is seeded from there, as in a new file). Returns the freed slot
        indices (removed from `used`)."""
        self._reclaim()  # entries of dead processes first
        v = self._v
        for w in range(self._nw):
            wb = self._w0 + w * self._wstride
            if int(v[wb]) != 0 and not self._mine(wb):
                return []
        mine = {base for base, _ in self._slots.values()}
        bases = [_HEADER_DOUBLES + i * _SLOT_DOUBLES for i in range(self._cap)]
        latest = max(v[b + _MONTH] for b in bases)
        freed: list[int] = []
        for d, i in list(used.items()):
            b = bases[i]
            if d in keep or b in mine or (v[b + _MONTH] == latest and latest > 0):
                continue
            off = _HEADER_BYTES + i * _SLOT_BYTES
            self._mm[off : off + 16] = bytes(16)
            e = self._me + _W_HEAD + i * _W_FIELDS
            for f in range(_W_FIELDS):
                v[e + f] = 0.0
            del used[d]
            freed.append(i)
        return sorted(freed)

    def free_slots(self) -> int:
        """How many more key ids the file has room for (any process may take them)."""
        empty = bytes(16)
        with self._tlock:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            try:
                offs = (_HEADER_BYTES + i * _SLOT_BYTES for i in range(self._cap))
                return sum(self._mm[o : o + 16] == empty for o in offs)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._slots

    # ---- budgets ------------------------------------------------------------------------------

    def reserve(
        self,
        key_id: str,
        day: int,
        month: int,
        budget_day: float | None,
        budget_month: float | None,
        amount: float,
    ) -> tuple[str, float, float] | None:
        """Admit and hold `amount` USD, or refuse: one atomic step across processes.

        Admitted (None) while spent + reserved < budget in both the day `day` and the month
        `month`; refused with ('day' | 'month', spent, reserved) of the exhausted period.
        """
        base, w = self._slots[key_id]
        v = self._v
        fd = self._fd
        with self._tlock:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if v[base + _DAY] != day:
                    v[base + _DAY], v[base + _DAY_SPENT], v[base + _DAY_RES] = day, 0.0, 0.0
                if v[base + _MONTH] != month:
                    v[base + _MONTH], v[base + _MONTH_SPENT], v[base + _MONTH_RES] = month, 0.0, 0.0
                refused = self._refused(base, budget_day, budget_month)
                if refused is not None:
                    now = time.monotonic()
                    if now - self._last_reclaim < self.reclaim_interval_s:
                        return refused
                    self._last_reclaim = now
                    if not self._reclaim():
                        return refused
                    refused = self._refused(base, budget_day, budget_month)
                    if refused is not None:
                        return refused
                v[base + _DAY_RES] += amount
                v[base + _MONTH_RES] += amount
                # this process's share, so that it can be given back if the process dies
                if v[w] != day:
                    v[w], v[w + 1] = day, 0.0
                v[w + 1] += amount
                if v[w + 2] != month:
                    v[w + 2], v[w + 3] = month, 0.0
                v[w + 3] += amount
                return None
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _refused(
        self, base: int, budget_day: float | None, budget_month: float | None
    ) -> tuple[str, float, float] | None:
        v = self._v
        ds, dr = v[base + _DAY_SPENT], v[base + _DAY_RES]
        if budget_day is not None and ds + dr >= budget_day:
            return "day", ds, dr
        ms, mr = v[base + _MONTH_SPENT], v[base + _MONTH_RES]
        if budget_month is not None and ms + mr >= budget_month:
            return "month", ms, mr
        return None

    def settle(self, key_id: str, day: int, month: int, amount: float, actual: float) -> None:
        """Replace a reservation of `amount` made in (`day`, `month`) by the `actual` cost.

        A period that has rolled over since the reservation is left alone (its books are closed).
        """
        base, w = self._slots[key_id]
        v = self._v
        fd = self._fd
        with self._tlock:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if v[base + _DAY] == day:
                    v[base + _DAY_RES] = max(0.0, v[base + _DAY_RES] - amount)
                    v[base + _DAY_SPENT] += actual
                if v[base + _MONTH] == month:
                    v[base + _MONTH_RES] = max(0.0, v[base + _MONTH_RES] - amount)
                    v[base + _MONTH_SPENT] += actual
                if v[w] == day:
                    v[w + 1] = max(0.0, v[w + 1] - amount)
                if v[w + 2] == month:
                    v[w + 3] = max(0.0, v[w + 3] - amount)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def usage(self, key_id: str, day: int, month: int) -> tuple[float, float, float, float]:
        """(day spent, day reserved, month spent, month reserved) of `key_id` in those periods."""
        base = self._slots[key_id][0]
        v = self._v
        with self._tlock:
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            try:
                d = (v[base + _DAY_SPENT], v[base + _DAY_RES]) if v[base + _DAY] == day else (0.0, 0.0)
                m = (
                    (v[base + _MONTH_SPENT], v[base + _MONTH_RES])
                    if v[base + _MONTH] == month
                    else (0.0, 0.0)
                )
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return d[0], d[1], m[0], m[1]

    # ---- rate limits ----------------------------------------------------------------------------

    def take(self, key_id: str, rate: float, capacity: float, now: float, n: float = 1.0) -> float:
        """A token bucket shared by all processes: 0.0 if `n` tokens were taken, else the seconds
        until they would be available. `now` must come from a clock all processes share
        (time.monotonic is system-wide on Linux)."""
        base = self._slots[key_id][0]
        v = self._v
        fd = self._fd
        with self._tlock:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                tokens = v[base + _TOKENS]
                if tokens < 0.0:
                    tokens = capacity
                else:
                    tokens = min(capacity, tokens + max(0.0, now - v[base + _STAMP]) * rate)
                v[base + _STAMP] = now
                if tokens >= n:
                    v[base + _TOKENS] = tokens - n
                    return 0.0
                v[base + _TOKENS] = tokens
                return (n - tokens) / rate
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    # ---- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap and close the file (the counters stay in it for the other processes)."""
        v = getattr(self, "_v", None)
        if v is not None:
            v.release()
            self._v = None  # type: ignore[assignment]
        mm = getattr(self, "_mm", None)
        if mm is not None:
            mm.close()
            self._mm = None  # type: ignore[assignment]
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()
