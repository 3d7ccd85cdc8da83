"""The backend contract: one upstream model behind a uniform OpenAI-chat-shaped interface.

Every backend takes an OpenAI chat-completions request body (a dict; fields it does not know are
passed through untouched where the upstream API allows it) and returns an OpenAI chat-completion
dict, or, for streams, an async iterator of lists of OpenAI `chat.completion.chunk` dicts (the
chunks that arrived together). Failures raise
`BackendError`, which says whether the same backend may be retried and whether the gateway may
fall back to another candidate.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from llmroute.gateway.backends.http import HTTPClient, HTTPError, error_reason, public_url, tls_context
from llmroute.gateway.backends.proxies import ProxySettings
from llmroute.gateway.config import ModelConfig, ServerConfig
from llmroute.guards.pii import PIIDetector

__all__ = [
    "Backend",
    "BackendError",
    "Deadline",
    "ErrorScrubber",
    "classify_status",
    "model_client",
    "os_reason",
    "upstream_client",
]


def _proxy_settings(option: str | None, where: str) -> ProxySettings:
    try:
        return ProxySettings.from_option(option)
    except ValueError as e:
        raise ValueError(f"{e}; fix the variable, or set {where}: none to ignore the environment") from None


def upstream_client(server: ServerConfig, limit_per_origin: int = 1024) -> HTTPClient:
    """The gateway's shared upstream client: `server.ca_bundle` trusted besides the system's CAs,
    `server.proxy` ('env': the environment's proxies, 'none', or a proxy URL). ValueError names a
    malformed proxy variable."""
    ctx = tls_context(server.ca_bundle) if server.ca_bundle else None
    return HTTPClient(limit_per_origin, ssl_context=ctx, proxy=_proxy_settings(server.proxy, "server.proxy"))


def model_client(client: HTTPClient, cfg: ModelConfig) -> HTTPClient:
    """`client`, or a view of it (same pools) with the model's own `ca_bundle` (trusted besides the
    system's CAs, instead of `server.ca_bundle`) and/or `proxy`."""
    if not cfg.ca_bundle and cfg.proxy is None:
        return client
    return client.with_options(
        ssl_context=tls_context(cfg.ca_bundle) if cfg.ca_bundle else None,
        proxy=_proxy_settings(cfg.proxy, f"models[{cfg.name}].proxy") if cfg.proxy is not None else None,
    )


class BackendError(Exception):
    """An upstream call failed.

    `status` is what the client sees if no fallback succeeds; `retryable`: the same backend may
    succeed on a retry (timeouts, resets, 429, 5xx); `fallback`: another model may be tried (False
    for errors caused by the request itself, e.g. an upstream 400, which go straight back).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        retryable: bool = True,
        fallback: bool = True,
        code: str = "upstream_error",
        etype: str = "upstream_error",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.fallback = fallback
        self.code = code
        self.etype = etype
        self.param = param  # the request field at fault, for client errors


def classify_status(model: str, status: int, detail: str = "") -> BackendError:
    """The `BackendError` for an upstream HTTP error status; `detail` must already be safe to show
    (see `ErrorScrubber`), it is only capped here."""
    detail = detail[:300]
    if status == 429:
        return BackendError(
            f"model {model!r}: upstream rate limit (429) {detail}".strip(),
            status=429,
            code="upstream_rate_limited",
            etype="rate_limit_error",
        )
    if status >= 500 or status == 408:
        return BackendError(f"model {model!r}: upstream error {status} {detail}".strip(), status=502)
    if status in (401, 403):
        return BackendError(
            f"model {model!r}: upstream rejected the gateway's credentials ({status})",
            status=502,
            retryable=False,
            code="upstream_auth_failed",
        )
    return BackendError(
        f"model {model!r}: upstream rejected the request ({status}) {detail}".strip(),
        status=status if 400 <= status < 500 else 502,
        retryable=False,
        fallback=False,
        code="upstream_bad_request",
        etype="invalid_request_error",
    )


DETAIL_MAX_CHARS = 200
"""The most characters of an upstream error message that reach the client and the trace."""

PROMPT_ECHO_MIN_CHARS = 12
"""Shortest run of request text recognised (and removed) when an upstream echoes it in an error."""

_FULL_SCAN_CORPUS = 256 * 1024  # requests up to this size: every window of an error is looked up
_SCAN_CHARS = 2000  # of an upstream message scrubbed before the cap (a key cut at the cap is cut off)
_HEADER_VALUE = re.compile(
    r"(?i)\b(authorization|proxy-authorization|x-api-key|api-key|x-goog-api-key|cookie|set-cookie)"
    r"([\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?[^\s\"',;}\]]+"
)
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_URL = re.compile(r"(?i)\bhttps?://[^\s\"'<>]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SPACES = re.compile(r"\s{2,}")
REDACTED = "[REDACTED]"


def _strings(obj: Any, out: list[str]) -> list[str]:
    """Every string value inside a decoded JSON document."""
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _strings(v, out)
    return out


def _request_text(payload: bytes | None) -> str:
    """The text an upstream could echo back from the request `payload`: its JSON as sent, each
    string in it decoded, and each string ASCII-escaped (how Python's json module would echo it)."""
    if not payload:
        return ""
    raw = payload.decode("utf-8", "replace")
    try:
        strings = _strings(orjson.loads(payload), [])
    except orjson.JSONDecodeError:
        return raw
    return "\x00".join([raw, *strings, *(json.dumps(x)[1:-1] for x in strings if not x.isascii())])


def _message_of(raw: bytes) -> str:
    """The human part of an upstream error body: `error.message` (OpenAI, Anthropic), `error` as a
    string (Ollama), `detail` or `message` (vLLM, FastAPI); the text itself if it is not JSON, and
    nothing for JSON without a message (the rest of the body is not echoed)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw[: _SCAN_CHARS * 4].decode("utf-8", "replace")
    if isinstance(data, str):
        return data
    if not isinstance(data, dict):
        return ""
    for field in ("error", "detail", "message"):
        v = data.get(field)
        if isinstance(v, dict):
            v = v.get("message")
        if isinstance(v, str):
            return v
    return ""


class ErrorScrubber:
    """Makes upstream error text safe to show the client and to store in a trace.

    An upstream may echo the request in its error (headers, body): `detail(raw, payload)` keeps the
    error's message only (see `_message_of`) and removes from it, in order: credential header values
    (`Authorization`, `x-api-key`, cookies) and `Bearer`/`Basic` tokens, the configured secrets of
    this model (its API key, its custom header values), anything else key-like (the secret detector
    of `llmroute.guards.pii`), URLs' credentials and queries, the upstream's host:port (the model's name stands for it), control
    characters, and every run of `PROMPT_ECHO_MIN_CHARS`+ characters found in the request payload
    (prompt text, never stored or shown); then caps it at `DETAIL_MAX_CHARS`. `text(s)` does the
    same to a message that is not an upstream body."""

    def __init__(self, model: str, base_url: str | None = None, secrets: Iterable[str] = ()) -> None:
        self.model = model
        self.secrets: list[str] = []
        for x in secrets:
            self.add_secret(x)
        self._address: re.Pattern[str] | None = None  # the upstream's host:port and host, as words
        if base_url:
            u = urlsplit(base_url)
            netloc = u.netloc.rsplit("@", 1)[-1]
            names = sorted({a for a in (netloc, u.hostname or "") if a}, key=len, reverse=True)
            if names:
                alts = "|".join(re.escape(a) for a in names)
                self._address = re.compile(rf"(?i)(?<![\w.-])(?:{alts})(?![\w-])")
        self._pii = PIIDetector(types=("secret",))

    def add_secret(self, secret: str | None) -> None:
        """Also remove this literal (ignored when shorter than 6 characters: too common to be a key)."""
        if secret and len(secret) >= 6 and secret not in self.secrets:
            self.secrets.append(secret)
            self.secrets.sort(key=len, reverse=True)

    @classmethod
    def for_model(cls, cfg: ModelConfig) -> ErrorScrubber:
        """The scrubber of one configured model: its name, base URL, header values and API key."""
        return cls(cfg.name, cfg.base_url, [*cfg.headers.values(), cfg.api_key() or ""])

    def _redact_keylike(self, s: str) -> str:
        """`s` with the secret detector's finds replaced (not those already redacted above)."""
        out, pos = [], 0
        for m in self._pii.find(s):
            if REDACTED not in m.text:
                out += [s[pos : m.start], REDACTED]
                pos = m.end
        return "".join(out) + s[pos:] if out else s

    def detail(self, raw: bytes, payload: bytes | None = None) -> str:
        """The safe message of an upstream error body `raw` (the request `payload`: text to remove)."""
        return self.text(_message_of(raw), payload)

    def text(self, message: str, payload: bytes | None = None) -> str:
        """`message` scrubbed as described in the class docstring."""
        s = message[:_SCAN_CHARS]
        if not s:
            return ""
        s = _HEADER_VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, s)
        s = _AUTH_SCHEME.sub(lambda m: m.group(1) + " " + REDACTED, s)
        for secret in self.secrets:
            s = s.replace(secret, REDACTED)
        s = self._redact_keylike(s)
        s = _URL.sub(lambda m: public_url(m.group()) or "", s)
        if self._address is not None:
            s = self._address.sub(f"[{self.model} upstream]", s)
        s = _SPACES.sub(" ", _CONTROL.sub(" ", s)).strip()
        s = s[: DETAIL_MAX_CHARS + 40]
        corpus = _request_text(payload)
        if corpus:
            s = _remove_echo(s, corpus)
        if len(s) > DETAIL_MAX_CHARS:
            s = s[: DETAIL_MAX_CHARS - 1] + "…"
        return s


def _remove_echo(s: str, corpus: str, w: int = PROMPT_ECHO_MIN_CHARS) -> str:
    """`s` with every run of `w`+ characters that also occurs in `corpus` replaced by `[request text]`.

    Checks the `w`-character windows of `s` (error path only, `s` is short): at every position when
    the request is small, else at every `w // 2`-th position (then runs of `1.5 w`+ are caught for
    sure) and widens each hit window by window; marks the characters they cover and replaces each
    marked run."""
    n = len(s)
    if n < w:
        return s
    step = 1 if len(corpus) <= _FULL_SCAN_CORPUS else max(1, w // 2)
    marked = bytearray(n)
    for i in range(0, n - w + 1, step):
        if s[i : i + w] in corpus:
            marked[i : i + w] = b"\x01" * w
            if step > 1:  # widen to the left and right edges of the echoed run
                j = i - 1
                while j >= 0 and not marked[j] and s[j : j + w] in corpus:
                    marked[j] = 1
                    j -= 1
                j = i + 1
                while j + w <= n and s[j : j + w] in corpus and not marked[j + w - 1]:
                    marked[j + w - 1] = 1
                    j += 1
    if not any(marked):
        return s
    out: list[str] = []
    i = 0
    while i < n:
        if marked[i]:
            while i < n and marked[i]:
                i += 1
            out.append("[request text]")
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def os_reason(e: BaseException) -> str:
    """Why a connection failed, without addresses: our own `HTTPError` messages name none; other
    OS errors (whose text may name host and port) give their errno text or class name."""
    if isinstance(e, HTTPError):
        return str(e)
    return error_reason(e)


class Backend(Protocol):
    """One upstream model."""

    cfg: ModelConfig

    async def start(self, session: Any) -> None:
        """Bind to the shared aiohttp session (called once at gateway startup)."""
        ...

    async def close(self) -> None:
        """Release resources (the shared session is closed by the gateway)."""
        ...

    async def chat(self, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """One non-streaming completion in OpenAI format."""
        ...

    def chat_stream(self, body: dict[str, Any], timeout_s: float) -> AsyncIterator[list[dict[str, Any]]]:
        """Lists of OpenAI chunk dicts, one list per burst that arrived together (forwarded in one
        write); `timeout_s` bounds the wait for each burst."""
        ...


class Deadline:
    """`async with Deadline(delay):` is `async with asyncio.timeout(delay):` (TimeoutError when the
    delay passes first; a cancellation from elsewhere stays a CancelledError), for the hot path.

    One timer handle and the task's cancel count, without asyncio.Timeout's state machine and
    rescheduling: ~14k instead of ~29k instructions per use under uvloop (callgrind), once per
    upstream call and once per batch of stream lines. Use a fresh one per `async with`."""

    __slots__ = ("_cancelling", "_delay", "_expired", "_handle", "_task")

    def __init__(self, delay: float) -> None:
        self._delay = delay

    async def __aenter__(self) -> Deadline:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline should be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._expired = False
        self._handle = asyncio.get_running_loop().call_later(self._delay, self._on_timeout)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: Any) -> None:
        if not self._expired:
            self._handle.cancel()
        # our cancel, and no other cancel request since entering: the delay passed
        elif self._task.uncancel() <= self._cancelling and et is asyncio.CancelledError:
            raise TimeoutError from e

    def _on_timeout(self) -> None:
        self._task.cancel()
        self._expired = True


async def post_json(
    client: Any,
    url: str,
    headers: dict[str, str],
    payload: bytes,
    model: str,
    timeout_s: float,
    scrub: ErrorScrubber | None = None,
) -> Any:
    """POST `payload` and return the decoded JSON answer of a non-streamed call (at most `timeout_s`).

    Timeouts, connection failures, non-200 statuses and invalid JSON become `BackendError`; an
    error body's message passes through `scrub` (default: a scrubber that knows no secrets).
    """
    try:
        async with Deadline(timeout_s):
            resp = await client.request("POST", url, headers, payload)
    except TimeoutError:
        raise BackendError(
            f"model {model!r}: upstream timed out after {timeout_s:.1f}s", status=504, code="upstream_timeout"
        ) from None
    except OSError as e:
        raise BackendError(f"model {model!r}: upstream connection failed ({os_reason(e)})") from None
    if resp.status != 200:
        raise classify_status(model, resp.status, (scrub or ErrorScrubber(model)).detail(resp.body, payload))
    try:
        return orjson.loads(resp.body)
    except orjson.JSONDecodeError:
        raise BackendError(f"model {model!r}: upstream returned invalid JSON") from None


async def open_stream(
    client: Any, url: str, headers: dict[str, str], payload: bytes, model: str, timeout_s: float
) -> Any:
    """POST `payload` and wait (at most `timeout_s`) for the response head of a streamed call.

    Returns the client's stream response; timeouts and connection failures become `BackendError`.
    """
    ctx = client.stream("POST", url, headers, payload)
    try:
        async with Deadline(timeout_s):
            return await ctx.__aenter__()
    except TimeoutError:
        raise BackendError(
            f"model {model!r}: upstream timed out after {timeout_s:.1f}s", status=504, code="upstream_timeout"
        ) from None
    except OSError as e:
        raise BackendError(f"model {model!r}: upstream connection failed ({os_reason(e)})") from None


async def next_lines(batches: AsyncIterator[list[bytes]], model: str, timeout_s: float) -> list[bytes] | None:
    """The next batch of stream lines (None at the end); a stall longer than `timeout_s` is a `BackendError`."""
    try:
        async with Deadline(timeout_s):
            return await anext(batches, None)
    except TimeoutError:
        raise BackendError(
            f"model {model!r}: stream stalled for {timeout_s:.1f}s", status=504, code="upstream_timeout"
        ) from None
