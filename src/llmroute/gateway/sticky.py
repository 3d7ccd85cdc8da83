"""Sticky sessions and implicit outcomes (issue 13 items 1 and 3).

**Sessions.** An alias with a `sticky:` or `implicit:` block tracks conversations. A request's
session is, per alias and scoped by the caller's API key id and the body's `user` (OpenAI's field;
`/v1/messages` maps `metadata.user_id` onto it), so two keys or users never share one:

1. the header `x-llmroute-session: <id>` when the client sends it (any string; e.g.
   `OpenAI(default_headers={"x-llmroute-session": conversation_id})`): every request with the same
   id continues the session, whatever its messages;
2. else the conversation itself: a BLAKE2b digest of the role and text of each `system`,
   `developer` and `user` message up to a point (text parts only, in order). Assistant and tool
   messages, images, files, tool calls and message names are not hashed (clients re-serialise
   answers; the answer is unknown when the turn is recorded). A request whose messages end with a
   user message continues the turn recorded under the digest of the messages *before* that last
   user message and is recorded under the digest *through* it; a request with assistant / tool
   messages after its last user message (a tool loop, a prefill) continues the turn recorded under
   the digest through its last user message. So the same conversation continued finds its earlier
   turn, and a changed system prompt (or any edited earlier user message) starts a new session:
   clients whose system prompt carries per-request data (a date, a request id) should send the
   header. A first message (nothing before it) starts a session.

Sessions are kept per alias, at most `sticky.max_sessions`, each forgotten `sticky.ttl_s` after
its last answered request arrived: in memory (an LRU) with one worker; with `llmroute serve
--workers N` in a SQLite file in the workers' shared folder (`LLMROUTE_SHARED_DIR`; WAL, no fsync;
the sessions answered longest ago go first), so a conversation keeps its session whichever worker
serves its next request, for a few SQLite lookups and one write per request (best effort: a
database error is a miss). Not shared: gateways on different hosts. Only digests, the answering
model, the request id and hashed words of the last user message are kept; never text.

**Stickiness** (`sticky.enabled`): the router decides as usual; when the session's earlier turn was
answered by model S, the request stays on S unless the expected gain of switching,
`reward(pick) - reward(S)` with reward = quality - tradeoff * cost at the request's effective
trade-off, exceeds `sticky.margin`. S is never kept when it is not admissible now: not allowed for
the request (a rule narrowed the candidates), its context window is too small, its circuit breaker
is open, it misses max_cost / min_quality where the pick meets them, or it is no longer a candidate.
A rule that routes to a concrete model, a guard or a cache hit decides without the router and
without stickiness. The decision says what happened: `extra.sticky` in the trace
(`{state: held | broken | new, model, reason, gain, margin, session: header | prefix}`), the reason
(`sticky=held` ...) and the header `x-llmroute-sticky` (e.g. `held model=fake-weak gain=0.01
margin=0.02`, `broken model=fake-weak reason=breaker_open`).

**Implicit outcomes** (`implicit:`, each switchable): each grades an earlier answer with
`implicit.score` (default 0) and names its source:

- `reask`: within a session, the last user message is near-identical to the previous turn's
  (Jaccard similarity of the normalised word sets >= `reask_similarity`, both >= `reask_min_words`
  words): the previous answer is graded;
- `regenerate`: the same conversation (through its last user message) is sent again: the earlier
  answer to it is graded;
- `length`: the answer ended with `finish_reason=length`: this answer is graded;
- `refusal`: the answer matches the cascade's refusal cues (`llmroute.cascade.verifiers`): graded;
- `tool_error`: a tool result after the last assistant message is marked as an error (Anthropic's
  `is_error: true`, an `"error"` key in a JSON object, or text starting with "error", "exception"
  or "traceback"): the answer that made the tool call is graded.

`length` and `refusal` read streamed answers too (the stream relay assembles them). On
`/v1/messages` a tool_result's `is_error` is not carried through the translation to the OpenAI
chat body yet, so only the content cues apply there. Outcomes go to `SessionTracker.sink`
(the gateway stores them with their source beside explicit `/v1/feedback` scores).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import sqlite3
import struct
import threading
import time
import unicodedata
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, NamedTuple

import orjson

from llmroute.cascade.verifiers import check_refusal
from llmroute.gateway.config import AliasConfig, ImplicitConfig, StickyConfig

__all__ = [
    "SESSION_HEADER",
    "Outcome",
    "Session",
    "SessionTable",
    "SessionTracker",
    "SharedSessionTable",
    "Turn",
    "attach_sessions",
    "detect_length",
    "detect_reask",
    "detect_refusal",
    "detect_regenerate",
    "detect_tool_error",
    "excluded_reason",
    "similarity",
    "split_turn",
    "sticky_choice",
    "sticky_header",
    "word_set",
]

#: The request header that names a session explicitly.
SESSION_HEADER = "x-llmroute-session"
#: Roles whose text identifies a conversation (assistant and tool messages are not hashed).
HASHED_ROLES = frozenset({"system", "developer", "user"})
_MAX_WORDS = 256


class Outcome(NamedTuple):
    """An implicit grade of an earlier answer: its request id, a score in [0, 1], the signal."""

    request_id: str
    score: float
    source: str


@dataclass(slots=True)
class Turn:
    """What a session remembers of its last answered request."""

    model: str
    request_id: str
    at: float
    turn: bytes  # digest of the conversation through its last user message
    words: frozenset[int]  # hashed normalised words of that last user message


class SessionTable:
    """LRU of `Turn`s with a time to live (per alias and worker); `clock` is monotonic seconds."""

    def __init__(self, max_sessions: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.clock = clock
        self._d: OrderedDict[bytes, Turn] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key: bytes) -> Turn | None:
        """The session's turn, None when unknown or older than `ttl_s` (then forgotten)."""
        t = self._d.get(key)
        if t is None:
            return None
        if self.clock() - t.at > self.ttl_s:
            del self._d[key]
            return None
        self._d.move_to_end(key)
        return t

    def put(self, key: bytes, turn: Turn) -> None:
        """Remember `turn` (the least recently used sessions go beyond `max_sessions`)."""
        d = self._d
        d[key] = turn
        d.move_to_end(key)
        while len(d) > self.max_sessions:
            d.popitem(last=False)


class _SharedDB:
    """One SQLite file (WAL, no fsync: sessions are a cache) shared by a host's workers; the
    connection is opened lazily per process (a gateway built before a fork does not share it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=0.1, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS sessions (k BLOB PRIMARY KEY, alias TEXT NOT NULL, "
                "model TEXT NOT NULL, rid TEXT NOT NULL, at REAL NOT NULL, turn BLOB NOT NULL, "
                "words BLOB NOT NULL) WITHOUT ROWID"
            )
            conn.execute("CREATE INDEX IF NOT EXISTS sessions_at ON sessions(alias, at)")
            self._conn, self._pid = conn, os.getpid()
        return self._conn


class SharedSessionTable:
    """`SessionTable` in a SQLite file shared by the workers of `llmroute serve --workers N` (in
    `LLMROUTE_SHARED_DIR`), so a conversation keeps its session whichever worker serves it.
    Beyond `max_sessions` the sessions answered longest ago go first (checked every few puts, so
    the table may hold a few more for a moment). Best effort: a database error (e.g. the file
    locked for more than 0.1 s) is a miss, or a turn not recorded; routing goes on."""

    def __init__(
        self,
        db: _SharedDB,
        alias: str,
        max_sessions: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.alias = alias
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.clock = clock
        self.errors = 0
        self._puts = 0
        self._prune_every = max(1, min(256, max_sessions // 8))

    def __len__(self) -> int:
        try:
            with self.db._lock:
                row = self.db.conn().execute("SELECT COUNT(*) FROM sessions WHERE alias = ?", (self.alias,))
                return int(row.fetchone()[0])
        except sqlite3.Error:
            self.errors += 1
            return 0

    def get(self, key: bytes) -> Turn | None:
        """The session's turn, None when unknown, older than `ttl_s` or unreadable now."""
        try:
            with self.db._lock:
                row = (
                    self.db.conn()
                    .execute("SELECT model, rid, at, turn, words FROM sessions WHERE k = ?", (key,))
                    .fetchone()
                )
        except sqlite3.Error:
            self.errors += 1
            return None
        if row is None or self.clock() - row[2] > self.ttl_s:
            return None
        words = row[4]
        return Turn(row[0], row[1], row[2], row[3], frozenset(struct.unpack(f"<{len(words) // 4}I", words)))

    def put(self, key: bytes, turn: Turn) -> None:
        """Record `turn` (then, every few puts, forget expired sessions and the oldest beyond
        `max_sessions`)."""
        words = struct.pack(f"<{len(turn.words)}I", *turn.words)
        try:
            with self.db._lock:
                conn = self.db.conn()
                conn.execute(
                    "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key, self.alias, turn.model, turn.request_id, turn.at, turn.turn, words),
                )
                self._puts += 1
                if self._puts % self._prune_every == 0:
                    self._prune(conn)
        except sqlite3.Error:
            self.errors += 1

    def _prune(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM sessions WHERE alias = ? AND at < ?", (self.alias, self.clock() - self.ttl_s)
        )
        n = int(conn.execute("SELECT COUNT(*) FROM sessions WHERE alias = ?", (self.alias,)).fetchone()[0])
        if n > self.max_sessions:
            conn.execute(
                "DELETE FROM sessions WHERE k IN (SELECT k FROM sessions WHERE alias = ? ORDER BY at LIMIT ?)",
                (self.alias, n - self.max_sessions),
            )


# ---- pure helpers ---------------------------------------------------------------------------------
def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def split_turn(messages: Sequence[Any]) -> tuple[int, int]:
    """(index of the last user message or -1, number of messages after it)."""
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, dict) and m.get("role") == "user":
            return i, len(messages) - 1 - i
    return -1, len(messages)


def _digests(scope: Sequence[str], messages: Sequence[Any], last: int) -> tuple[bytes, bytes]:
    """BLAKE2b-128 digests of the scope and the role + text of each hashed-role message: of the
    messages before `last` and of those through `last`, in one pass."""
    h = blake2b(digest_size=16)
    h.update("\x1f".join(scope).encode("utf-8", "surrogatepass"))
    h.update(b"\x1d")
    head = b""
    for i in range(last + 1):
        if i == last:
            head = h.digest()
        m = messages[i]
        if isinstance(m, dict):
            role = m.get("role")
            if role in HASHED_ROLES:
                h.update(f"{role}\x1f{_text(m.get('content'))}\x1e".encode("utf-8", "surrogatepass"))
    return head, h.digest()


_WORD = re.compile(r"\w+")


def word_set(text: str) -> frozenset[int]:
    """The normalised words of `text` (NFKC, case-folded, punctuation dropped; at most 256),
    each kept as a CRC-32 of its UTF-8 bytes, not as text."""
    norm = unicodedata.normalize("NFKC", text).casefold()
    out: set[int] = set()
    for w in _WORD.findall(norm):
        out.add(zlib.crc32(w.encode("utf-8", "surrogatepass")))
        if len(out) >= _MAX_WORDS:
            break
    return frozenset(out)


def similarity(a: frozenset[int], b: frozenset[int]) -> float:
    """Jaccard similarity of two word sets (0 when either is empty)."""
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def detect_reask(prev: Turn | None, words: frozenset[int], cfg: ImplicitConfig) -> Outcome | None:
    """`reask`: the previous turn's last user message is near-identical to this one."""
    if prev is None or len(words) < cfg.reask_min_words or len(prev.words) < cfg.reask_min_words:
        return None
    if similarity(prev.words, words) >= cfg.reask_similarity:
        return Outcome(prev.request_id, cfg.score, "reask")
    return None


def detect_regenerate(same: Turn | None, cfg: ImplicitConfig) -> Outcome | None:
    """`regenerate`: this conversation (through its last user message) was answered before."""
    return None if same is None else Outcome(same.request_id, cfg.score, "regenerate")


_ERROR_TEXT = re.compile(r"(?i)^\s*(?:error|exception|traceback)\b")


def _tool_failed(m: dict[str, Any]) -> bool:
    if m.get("is_error") is True:
        return True
    content = m.get("content")
    if isinstance(content, list):
        if any(isinstance(p, dict) and p.get("is_error") is True for p in content):
            return True
        content = _text(content)
    if not isinstance(content, str):
        return False
    s = content.lstrip()
    if s.startswith("{"):
        try:
            obj = orjson.loads(s)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and obj.get("error") not in (None, False, "", {}):
            return True
    return bool(_ERROR_TEXT.match(s))


def detect_tool_error(messages: Sequence[Any], prev: Turn | None, cfg: ImplicitConfig) -> Outcome | None:
    """`tool_error`: a tool result after the last assistant message is marked as an error; grades
    `prev`, the answer that made the tool call."""
    if prev is None:
        return None
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if not isinstance(m, dict) or m.get("role") != "tool":
            break
        if _tool_failed(m):
            return Outcome(prev.request_id, cfg.score, "tool_error")
    return None


def _choices(response: Any) -> list[dict[str, Any]]:
    if isinstance(response, dict):
        response = response.get("choices")
    return [c for c in response if isinstance(c, dict)] if isinstance(response, list) else []


def detect_length(request_id: str, response: Any, cfg: ImplicitConfig) -> Outcome | None:
    """`length`: the answer (a chat completion or its `choices`) ended with finish_reason=length."""
    if any(c.get("finish_reason") == "length" for c in _choices(response)):
        return Outcome(request_id, cfg.score, "length")
    return None


def detect_refusal(request_id: str, response: Any, cfg: ImplicitConfig) -> Outcome | None:
    """`refusal`: the first choice's text matches the cascade's refusal cues."""
    choices = _choices(response)
    if choices and check_refusal({}, {"choices": choices[:1]}).score == 0.0:
        return Outcome(request_id, cfg.score, "refusal")
    return None


def excluded_reason(
    j: int,
    pick: int,
    names: Sequence[str],
    q: Sequence[float],
    c: Sequence[float],
    *,
    allowed: Sequence[str] | None,
    input_tokens: float,
    windows: Sequence[float],
    down: Callable[[str], bool] | None,
    max_cost: float | None,
    min_quality: float | None,
) -> str | None:
    """Why candidate `j` may not keep the session now (None: it may): `not_allowed` (a rule or the
    request narrowed the candidates), `context_window`, `breaker_open`, `constraint` (it misses
    max_cost / min_quality where the pick `pick` meets them)."""
    name = names[j]
    if allowed is not None and name not in allowed:
        return "not_allowed"
    if input_tokens > windows[j]:
        return "context_window"
    if down is not None and down(name):
        return "breaker_open"
    if max_cost is not None or min_quality is not None:
        from llmroute.policy import unmet_constraints

        if unmet_constraints(q[j], c[j], max_cost=max_cost, min_quality=min_quality) and not (
            unmet_constraints(q[pick], c[pick], max_cost=max_cost, min_quality=min_quality)
        ):
            return "constraint"
    return None


def sticky_choice(
    sticky_model: str,
    names: Sequence[str],
    reward: Sequence[float],
    pick: int,
    margin: float,
    excluded: Callable[[int], str | None],
) -> tuple[int, dict[str, Any]]:
    """(index to serve, verdict) for a session last answered by `sticky_model` when the router picks
    `pick`; `reward[j]` = quality - tradeoff * cost. Held unless `reward[pick] - reward[sticky]`
    exceeds `margin` or the sticky model is excluded (`excluded(j)` names why) or not a candidate."""
    verdict: dict[str, Any] = {"model": sticky_model, "margin": margin}
    try:
        j = list(names).index(sticky_model)
    except ValueError:
        return pick, verdict | {"state": "broken", "reason": "not_candidate"}
    why = excluded(j)
    if why is not None:
        return pick, verdict | {"state": "broken", "reason": why}
    gain = 0.0 if j == pick else reward[pick] - reward[j]
    if not math.isnan(gain):
        verdict["gain"] = gain
    if gain > margin:
        return pick, verdict | {"state": "broken", "reason": "gain"}
    return j, verdict | {"state": "held"}


def sticky_header(verdict: dict[str, Any]) -> str:
    """`x-llmroute-sticky`: e.g. "held model=m gain=0.01 margin=0.02", "broken model=m
    reason=breaker_open", "new"."""
    state = verdict["state"]
    if state == "new":
        return "new"
    parts = [state, f"model={verdict['model']}"]
    if state == "broken":
        parts.append(f"reason={verdict['reason']}")
    if "gain" in verdict:
        parts.append(f"gain={verdict['gain']:.4g}")
        parts.append(f"margin={verdict['margin']:g}")
    return " ".join(parts)


# ---- the gateway's tracker ------------------------------------------------------------------------
@dataclass(slots=True)
class Session:
    """One request's view of its session (kept in `RequestContext.extra["session"]`)."""

    alias: str
    source: str  # "header" | "prefix" | "none" (no session kept: answer-level signals only)
    key: bytes  # where this request's answer is recorded
    turn: bytes
    words: frozenset[int]
    prev: Turn | None  # the turn this request continues: its model is the sticky one
    key_id: str | None
    at: float  # when the request arrived (the recorded turn's time)
    decide_only: bool = False  # `/v1/route`: no answer follows (not counted, not recorded)


class SessionTracker:
    """Sessions, stickiness and implicit outcomes of every alias configured with them.

    The routing engine calls `begin` (session + re-ask / regenerate / tool-error signals) and
    `choose` (stickiness; `/v1/route` decisions are not counted) for each routed request; the gateway calls `finished` after the answer
    (records the turn, length / refusal signals). `sink(outcome, alias, key_id)` receives every
    implicit outcome; `on_sticky(alias, result)` counts decisions (metrics)."""

    def __init__(
        self,
        aliases: Mapping[str, AliasConfig],
        clock: Callable[[], float] = time.monotonic,
        shared_dir: str | None = None,
    ) -> None:
        self.clock = clock
        db = _SharedDB(os.path.join(shared_dir, "sessions.sqlite")) if shared_dir else None
        self.sticky: dict[str, StickyConfig] = {}
        self.implicit: dict[str, ImplicitConfig] = {}
        self.tables: dict[str, SessionTable | SharedSessionTable] = {}
        for name, a in aliases.items():
            if a.sticky is None and a.implicit is None:
                continue
            st = a.sticky if a.sticky is not None else StickyConfig(enabled=False)
            if st.enabled:
                self.sticky[name] = st
            if a.implicit is not None:
                self.implicit[name] = a.implicit
            im = a.implicit
            if st.enabled or (im is not None and (im.reask or im.regenerate or im.tool_error)):
                self.tables[name] = (
                    SharedSessionTable(db, name, st.max_sessions, st.ttl_s, clock)
                    if db is not None
                    else SessionTable(st.max_sessions, st.ttl_s, clock)
                )
        self.sink: Callable[[Outcome, str, str | None], None] | None = None
        self.on_sticky: Callable[[str, str], None] | None = None

    def __bool__(self) -> bool:
        return bool(self.tables or self.implicit)

    def begin(self, ctx: Any, alias: str) -> Session | None:
        """The request's session on `alias` (None when the alias tracks none); emits the re-ask,
        regenerate and tool-error outcomes it reveals (not for `/v1/route`: no answer follows)."""
        table = self.tables.get(alias)
        if table is None:
            if alias not in self.implicit:
                return None
            # only answer-level signals (length, refusal): no session kept
            return Session(
                alias, "none", b"", b"", frozenset(), None, ctx.key_id, 0.0, ctx.endpoint == "route"
            )
        messages = ctx.messages
        last, tail = split_turn(messages)
        user = ctx.body.get("user")
        scope = (alias, ctx.key_id or "", user if isinstance(user, str) else "")
        head, turn = _digests(scope, messages, last)
        sid = ctx.headers.get(SESSION_HEADER) if ctx.headers else None
        if sid:
            source = "header"
            key = _digests((*scope, "session", sid), (), -1)[1]
            prev = table.get(key)
            same = prev if prev is not None and tail == 0 and prev.turn == turn else None
        elif last < 0:  # no user message and no header: nothing identifies the conversation
            source, key, prev, same = "none", b"", None, None
        else:
            source = "prefix"
            key = turn
            if tail:  # a tool loop / prefill: the same turn's earlier answer
                prev, same = table.get(turn), None
            else:
                prev = table.get(head) if last > 0 else None
                im = self.implicit.get(alias)
                same = table.get(turn) if im is not None and im.regenerate else None
        words = word_set(_text(messages[last].get("content"))) if last >= 0 else frozenset()
        s = Session(alias, source, key, turn, words, prev, ctx.key_id, self.clock(), ctx.endpoint == "route")
        im = self.implicit.get(alias)
        if im is not None and ctx.endpoint != "route":
            out: Outcome | None = None
            if tail:
                out = detect_tool_error(messages, prev, im) if im.tool_error else None
            else:
                out = detect_regenerate(same, im) if im.regenerate else None
                if out is None and im.reask and prev is not None and prev.turn != turn:
                    out = detect_reask(prev, words, im)
            if out is not None:
                self._emit(out, alias, ctx.key_id)
        return s

    def choose(
        self,
        s: Session,
        names: Sequence[str],
        reward: Sequence[float],
        pick: int,
        excluded: Callable[[int], str | None],
    ) -> tuple[int, dict[str, Any] | None]:
        """(index to serve, verdict for the decision or None when the alias is not sticky)."""
        st = self.sticky.get(s.alias)
        if st is None:
            return pick, None
        if s.prev is None:
            verdict: dict[str, Any] = {"state": "new"}
            j = pick
        else:
            j, verdict = sticky_choice(s.prev.model, names, reward, pick, st.margin, excluded)
        verdict["session"] = s.source
        if self.on_sticky is not None and not s.decide_only:
            result = verdict["state"] if verdict["state"] != "broken" else f"broken_{verdict['reason']}"
            self.on_sticky(s.alias, result)
        return j, verdict

    def wants_answer(self, alias: str | None) -> bool:
        """Whether `alias` grades whole answers (length, refusal): a stream then collects its chunks
        into `ctx.extra["answer"]` for `finished`."""
        im = self.implicit.get(alias) if alias is not None else None
        return im is not None and (im.length or im.refusal)

    def finished(self, ctx: Any, model: str, status: int, response: Any) -> None:
        """After a request ends: on a 200 answer record the turn (`model` answered it) and emit the
        length / refusal outcomes of the answer (`response`: its choices; a stream's assembled
        answer is in `ctx.extra["answer"]`)."""
        s: Session | None = ctx.extra.get("session") if ctx.extra else None
        if s is None or status != 200 or not model or ctx.endpoint == "route":
            return
        table = self.tables.get(s.alias)
        if table is not None and s.source != "none":
            table.put(s.key, Turn(model, ctx.request_id, s.at, s.turn, s.words))
        im = self.implicit.get(s.alias)
        if response is None:
            response = ctx.extra.get("answer")
        if im is None or response is None:
            return
        out = detect_length(ctx.request_id, response, im) if im.length else None
        if out is None and im.refusal:
            out = detect_refusal(ctx.request_id, response, im)
        if out is not None:
            self._emit(out, s.alias, s.key_id)

    def _emit(self, out: Outcome, alias: str, key_id: str | None) -> None:
        if self.sink is not None:
            self.sink(out, alias, key_id)


def attach_sessions(gw: Any) -> SessionTracker:
    """Build the tracker of a `Gateway`'s aliases and wire it: the routing engine consults it (and
    the circuit breakers: an open one breaks stickiness), sticky decisions and implicit outcomes are
    counted in the metrics, and each outcome is stored and learned through
    `llmroute.gateway.outcomes.record_outcome` (with the graded request's key as owner), off the
    request's path."""
    from llmroute.gateway.ledger import shared_dir_from_env

    tracker = SessionTracker(gw.config.aliases, shared_dir=shared_dir_from_env())
    tasks: set[asyncio.Task[Any]] = set()

    async def record(out: Outcome, key_id: str | None) -> None:
        from llmroute.gateway.outcomes import record_outcome

        try:
            await record_outcome(gw, out.request_id, out.score, out.source, owner=key_id)
        except Exception as e:  # a bug: logged (rate-limited), never the client's problem
            gw.errors.exception(e, "recording the implicit outcome %s failed", out.source)

    def sink(out: Outcome, alias: str, key_id: str | None) -> None:
        gw.metrics.observe_implicit(alias, out.source)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - the gateway always runs in its event loop
            return
        task = loop.create_task(record(out, key_id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def down(name: str) -> bool:
        br = gw.executor.breakers.get(name)
        return br is not None and br.state == "open" and br.clock() - br.opened_at < br.cooldown_s

    tracker.sink = sink
    tracker.on_sticky = gw.metrics.observe_sticky
    gw.engine.sessions = tracker
    gw.engine.model_down = down
    return tracker
