"""Jailbreak / prompt-injection score: project-written patterns plus a small embedding classifier.

`JailbreakDetector.score(text, emb=None)` returns a number in [0, 1]: the largest weight of the
patterns that match, or the classifier's probability when it is higher. The classifier is a
logistic regression on prompt embeddings, trained at construction on the project-written set in
`llmroute.guards.jailbreak_data` (a few hundred texts; ~50 ms with the static encoder) — it
reuses the request's embedding, so scoring costs one dot product.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

# (name, weight, pattern). Weights are the score a match gives on its own.
PATTERNS: tuple[tuple[str, float, str], ...] = (
    ("ignore-instructions", 0.95,
     r"\b(?:ignore|disregard|forget|override|bypass|skip)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|"
     r"all|any|your|the|system|old)\b[^.\n]{0,25}\b(?:instructions?|rules|directions|guidelines|prompts?|"
     r"polic(?:y|ies)|restrictions|filters?)\b"),
    ("instructions-cancelled", 0.9,
     r"\b(?:previous|prior|old) instructions (?:are|were) (?:cancelled|void|revoked|overridden)"),
    ("new-instructions", 0.8, r"\bnew (?:instructions|policy|rules)\b[^.\n]{0,30}(?:override|must|:)"),
    ("dan", 0.95, r"\bDAN\b[^.\n]{0,40}\b(?:do anything|no restrictions|jailbr)|\bdo anything now\b"),
    ("developer-mode", 0.85, r"\b(?:developer|god|admin|jailbreak|unrestricted) mode\b[^.\n]{0,40}"
     r"(?:enabled|on|never refuse|no filters|begin)|\bbegin admin mode\b|\benter god mode\b"),
    ("unfiltered-persona", 0.9,
     r"\b(?:unfiltered|uncensored|jailbroken|unrestricted|freed from (?:its|your) (?:alignment|rules))\b"),
    ("no-rules", 0.85, r"\b(?:no|without any|free from all|without) (?:restrictions|filters|content polic(?:y|ies)|"
     r"safety guidelines|ethics|rules and limitations|rules)\b[^.\n]{0,40}"),
    ("system-prompt-leak", 0.9,
     r"\b(?:print|reveal|repeat|show|output|leak|tell me)\b[^.\n]{0,30}\b(?:system prompt|initial prompt|"
     r"hidden instructions|confidential instructions|developer message|your instructions|your configuration)\b"),
    ("everything-above", 0.8, r"\b(?:output|print|repeat) everything above\b"),
    ("chat-template-injection", 0.9, r"<\|im_start\|>|\[INST\]|###\s*SYSTEM\s*:|<!--\s*assistant\s*:|"
     r"\bEND OF USER INPUT\b"),
    ("note-to-ai", 0.85, r"\b(?:note|message|instruction)s? to the (?:ai|model|assistant|llm)\b"),
    ("authority-claim", 0.7, r"\bas (?:the|your) (?:system )?(?:administrator|developer|creator)\b[^.\n]{0,30}"
     r"\b(?:order|command|instruct)"),
    ("leetspeak-ignore", 0.9, r"\b1gn[o0]re\b|\bI G N O R E\b"),
    ("hypothetical-no-filter", 0.8, r"\bif you had no (?:content )?filters?\b|\bno disclaimers\b"),
    ("opposite-policy", 0.8, r"\bopposite of your (?:policy|rules|guidelines)\b|\bbypass the safety\b"),
)  # fmt: skip


class JailbreakDetector:
    """Scores how much a prompt looks like a jailbreak or prompt-injection attempt.

    encoder: an `Encoder` to train and apply the embedding classifier (None: patterns only).
    extra_examples: more (text, label) pairs to train on (e.g. a deployment's own red-team set).
    patterns: override the pattern table (name, weight, regex).
    """

    def __init__(
        self,
        encoder: Any = None,
        extra_examples: Sequence[tuple[str, int]] = (),
        patterns: Sequence[tuple[str, float, str]] = PATTERNS,
        seed: int = 0,
        train_examples: Sequence[tuple[str, int]] | None = None,
    ) -> None:
        self._patterns = [(n, float(w), re.compile(p, re.IGNORECASE)) for n, w, p in patterns]
        self.encoder = encoder
        self.coef_: np.ndarray | None = None
        self.intercept_: float = 0.0
        if encoder is not None:
            if train_examples is None:
                from llmroute.guards.jailbreak_data import examples

                train_examples = [(t, y) for t, y, _ in examples(seed)]
            self._fit(list(train_examples) + list(extra_examples))

    def _fit(self, data: list[tuple[str, int]]) -> None:
        from sklearn.linear_model import LogisticRegression

        X = self.encoder.encode([t for t, _ in data])
        y = np.array([y for _, y in data])
        clf = LogisticRegression(C=4.0, max_iter=2000, class_weight="balanced").fit(X, y)
        self.coef_ = clf.coef_[0].astype(np.float32)
        self.intercept_ = float(clf.intercept_[0])

    def pattern_hits(self, text: str) -> list[tuple[str, float]]:
        """(pattern name, weight) for every pattern that matches `text`."""
        return [(n, w) for n, w, r in self._patterns if r.search(text)]

    def classifier_score(self, emb: np.ndarray) -> float:
        """Probability of attack from the embedding classifier (0 when there is none)."""
        if self.coef_ is None:
            return 0.0
        z = float(emb @ self.coef_) + self.intercept_
        return float(1.0 / (1.0 + np.exp(-z)))

    def score(self, text: str, emb: np.ndarray | None = None) -> float:
        """Attack score in [0, 1]: max of matching pattern weights and the classifier probability."""
        s = max((w for _, w in self.pattern_hits(text)), default=0.0)
        if self.coef_ is not None and s < 0.95:
            if emb is None:
                emb = self.encoder.encode([text])[0]
            s = max(s, self.classifier_score(emb))
        return s

    def explain(self, text: str, emb: np.ndarray | None = None) -> dict[str, Any]:
        """Score with its reasons (matching patterns and classifier probability)."""
        hits = self.pattern_hits(text)
        clf = (
            self.classifier_score(emb if emb is not None else self.encoder.encode([text])[0])
            if (self.coef_ is not None)
            else 0.0
        )
        return {
            "score": max([w for _, w in hits] + [clf]),
            "patterns": [n for n, _ in hits],
            "classifier": clf,
        }
