"""The per-request view every signal reads: normalised messages plus lazily computed shared facts.

A `SignalRequest` is built once per request (from a prompt string, a list of OpenAI-style
messages or a whole chat-completions body). Expensive shared facts (the embedding of the last
user message, the router estimate) are computed on first use and memoised on the object, so
several signals that need the same embedding pay for it once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Message = dict[str, Any]


def normalise_messages(prompt_or_messages: str | Sequence[Mapping[str, Any]]) -> list[Message]:
    """A prompt string or OpenAI/Anthropic-style messages as a list of `{"role", "content"}` dicts."""
    if isinstance(prompt_or_messages, str):
        return [{"role": "user", "content": prompt_or_messages}]
    out: list[Message] = []
    for i, m in enumerate(prompt_or_messages):
        if not isinstance(m, Mapping) or "role" not in m:
            raise ValueError(f"message {i} must be a mapping with a 'role' (got {type(m).__name__})")
        out.append(dict(m))
    return out


def content_text(content: Any) -> str:
    """The text of a message content: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for p in content:
            if isinstance(p, Mapping):
                if p.get("type") in ("text", "input_text") and isinstance(p.get("text"), str):
                    parts.append(p["text"])
            elif isinstance(p, str):
                parts.append(p)
        return "\n".join(parts)
    return str(content)


def has_image(content: Any) -> bool:
    """Whether a message content carries an image part."""
    if isinstance(content, Sequence) and not isinstance(content, str):
        return any(
            isinstance(p, Mapping) and p.get("type") in ("image_url", "image", "input_image") for p in content
        )
    return False


@dataclass
class SignalRequest:
    """One request as signals see it.

    messages: normalised chat messages. tools: the request's tool definitions (may be empty).
    alias / key: the requested model alias and the caller's key id (for scoping, never secrets).
    encoder: the `Encoder` used for embedding signals (shared; may be None when no rule needs it).
    router: the active `llmroute.router.Router` (for difficulty), or None.
    """

    messages: list[Message]
    tools: list[Any] = field(default_factory=list)
    alias: str | None = None
    key: str | None = None
    encoder: Any = None
    router: Any = None
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        prompt_or_messages: str | Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Any] | None = None,
        alias: str | None = None,
        key: str | None = None,
        encoder: Any = None,
        router: Any = None,
    ) -> SignalRequest:
        """Normalise `prompt_or_messages` and wrap it with its context."""
        return cls(
            normalise_messages(prompt_or_messages),
            list(tools or []),
            alias,
            key,
            encoder,
            router,
        )

    def memo(self, name: str, fn: Callable[[], Any]) -> Any:
        """`fn()` computed once per request under `name`."""
        if name not in self._memo:
            self._memo[name] = fn()
        return self._memo[name]

    @property
    def text(self) -> str:
        """Text of the last user message (what most signals judge)."""
        return self.memo("text", self._last_user_text)

    @property
    def all_text(self) -> str:
        """Text of every message (system and history included), newline-joined."""
        return self.memo("all_text", lambda: "\n".join(content_text(m.get("content")) for m in self.messages))

    def _last_user_text(self) -> str:
        for m in reversed(self.messages):
            if m.get("role") == "user":
                return content_text(m.get("content"))
        return content_text(self.messages[-1].get("content")) if self.messages else ""

    def embedding(self) -> np.ndarray:
        """L2-normalised embedding of `text` with the request's encoder (computed once)."""
        if self.encoder is None:
            raise RuntimeError("an embedding signal was used but no encoder is configured")
        return self.memo("embedding", lambda: np.asarray(self.encoder.encode([self.text])[0], np.float32))
