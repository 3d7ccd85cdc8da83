"""Budget and rate-limit counters shared by the gateway's worker processes on one host.

`llmroute serve --workers N` (N > 1) creates a private temporary folder and names it in the
`LLMROUTE_SHARED_DIR` environment variable before the workers start. `BudgetManager` and
`Authenticator` (llmroute.gateway.auth) then keep their per-key counters in a `SharedLedger`: a
small file in that folder, memory-mapped by every worker, where each read-modify-write runs under
an exclusive `flock` on the file (plus a thread lock, since flock does not exclude threads that
share a file descriptor). A budget check-and-reserve is therefore atomic across all workers, so a
key overspends its budget by at most one request's maximum cost however many workers serve it.
One locked update costs a few microseconds; a single worker does not use the ledger at all.

Layout: a 64-byte header (magic, slot count) and one 80-byte slot per key: a 16-byte digest of
the key id, then 8 doubles: day number, day spent, day reserved, month number, month spent, month
reserved (USD), rate-limit tokens, rate-limit stamp. Day number = whole UTC days since the epoch,
month number = year * 12 + month - 1; a slot rolls over to a new period on its first use in it.

Limits: the ledger lives only as long as the folder (one `serve` run): spend is persisted through
the trace store as before and seeded into the ledger by the first worker that opens it. A worker
killed mid-request leaves its in-flight reservations held until the gateway restarts (the error
is on the side of refusing, never of overspending). Workers on different hosts do not share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["SHARED_DIR_ENV", "SharedLedger", "shared_dir_from_env"]

SHARED_DIR_ENV = "LLMROUTE_SHARED_DIR"

_MAGIC = b"LLMRLED1"
_HEADER_BYTES = 64
_SLOT_BYTES = 80  # 16-byte digest + 8 doubles
_SLOT_DOUBLES = _SLOT_BYTES // 8
_HEADER_DOUBLES = _HEADER_BYTES // 8
# field offsets (in doubles) inside a slot, after the 2-double digest
_DAY, _DAY_SPENT, _DAY_RES, _MONTH, _MONTH_SPENT, _MONTH_RES, _TOKENS, _STAMP = range(2, 10)

Initial = Callable[[Sequence[str]], Mapping[str, tuple[float, float, float, float]]]


def shared_dir_from_env() -> str | None:
    """The folder named by `LLMROUTE_SHARED_DIR` (set by `llmroute serve --workers N>1`), or None."""
    return os.environ.get(SHARED_DIR_ENV) or None


def _digest(key_id: str) -> bytes:
    return hashlib.blake2b(key_id.encode("utf-8"), digest_size=16).digest()


class SharedLedger:
    """Per-key (day, month) spend/reservations and token buckets in a shared, file-locked map.

    `path` is created if missing (with room for `capacity` keys, default max(64, 2 x keys)).
    Every id in `key_ids` gets a slot. When this process is the first to claim slots, `initial`
    (if given) is called with the new ids, under the lock, and returns
    {key_id: (day_number, day_spent, month_number, month_spent)} to seed them with persisted spend.
    """

    def __init__(
        self,
        path: str | Path,
        key_ids: Sequence[str],
        *,
        capacity: int | None = None,
        initial: Initial | None = None,
    ) -> None:
        self.path = str(path)
        self._tlock = threading.Lock()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._slots: dict[str, int] = {}
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if os.fstat(self._fd).st_size == 0:
                    cap = int(capacity or max(64, 2 * len(key_ids)))
                    os.ftruncate(self._fd, _HEADER_BYTES + cap * _SLOT_BYTES)
                    os.pwrite(self._fd, _MAGIC + cap.to_bytes(8, "little"), 0)
                head = os.pread(self._fd, 16, 0)
                if head[:8] != _MAGIC:
                    raise ValueError(f"{self.path} is not an llmroute ledger file")
                cap = int.from_bytes(head[8:16], "little")
                self._mm = mmap.mmap(self._fd, _HEADER_BYTES + cap * _SLOT_BYTES)
                self._v = memoryview(self._mm).cast("d")
                new = self._claim(key_ids, cap)
                if new and initial is not None:
                    for kid, (day, day_spent, month, month_spent) in initial(new).items():
                        base = self._slots.get(kid)
                        if base is None:
                            continue
                        v = self._v
                        v[base + _DAY], v[base + _DAY_SPENT] = float(day), float(day_spent)
                        v[base + _MONTH], v[base + _MONTH_SPENT] = float(month), float(month_spent)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except BaseException:
            self.close()
            raise

    def _claim(self, key_ids: Sequence[str], cap: int) -> list[str]:
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
                    raise ValueError(f"the ledger {self.path} has no free slot for key '{kid}' ({cap} slots)")
                i = free.pop(0)
                off = _HEADER_BYTES + i * _SLOT_BYTES
                mm[off : off + 16] = d
                base = _HEADER_DOUBLES + i * _SLOT_DOUBLES
                for f in range(_DAY, _STAMP + 1):
                    self._v[base + f] = 0.0
                self._v[base + _TOKENS] = -1.0  # bucket not started: full on first use
                used[d] = i
                new.append(kid)
            self._slots[kid] = _HEADER_DOUBLES + i * _SLOT_DOUBLES
        return new

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
        base = self._slots[key_id]
        v = self._v
        fd = self._fd
        with self._tlock:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if v[base + _DAY] != day:
                    v[base + _DAY], v[base + _DAY_SPENT], v[base + _DAY_RES] = day, 0.0, 0.0
                if v[base + _MONTH] != month:
                    v[base + _MONTH], v[base + _MONTH_SPENT], v[base + _MONTH_RES] = month, 0.0, 0.0
                ds, dr = v[base + _DAY_SPENT], v[base + _DAY_RES]
                if budget_day is not None and ds + dr >= budget_day:
                    return "day", ds, dr
                ms, mr = v[base + _MONTH_SPENT], v[base + _MONTH_RES]
                if budget_month is not None and ms + mr >= budget_month:
                    return "month", ms, mr
                v[base + _DAY_RES] = dr + amount
                v[base + _MONTH_RES] = mr + amount
                return None
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def settle(self, key_id: str, day: int, month: int, amount: float, actual: float) -> None:
        """Replace a reservation of `amount` made in (`day`, `month`) by the `actual` cost.

        A period that has rolled over since the reservation is left alone (its books are closed).
        """
        base = self._slots[key_id]
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
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def usage(self, key_id: str, day: int, month: int) -> tuple[float, float, float, float]:
        """(day spent, day reserved, month spent, month reserved) of `key_id` in those periods."""
        base = self._slots[key_id]
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
        base = self._slots[key_id]
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
