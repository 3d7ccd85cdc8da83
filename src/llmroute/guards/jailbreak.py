"""Jailbreak / prompt-injection score: project-written patterns plus a small lexical classifier.

`JailbreakDetector.score(text)` returns a number in [0, 1]: the largest weight of the patterns
that match, or the classifier's score when it is higher.

The classifier is a logistic regression on hashed character 3/4/5-grams (`guards.ood.distinct_ngrams`)
and word uni/bigrams, each block L2-normalised over all of the text's n-grams, trained at
construction on the project-written set in `llmroute.guards.jailbreak_data` (~740 texts, ~0.3 s,
cached per training set). Why these features and not the request's sentence embedding: a linear
model on a dense embedding extrapolates to confident scores on texts unlike its training data (a
greeting, a law exam question scored 0.9), while on sparse n-grams an unfamiliar text is mostly
n-grams with no weight, which dilute towards the benign side; held-out attack families are also
ranked better (benchmarks/signals.py).

Calibration (threshold semantics): the classifier's logit z is shifted so that score 0.9 sits at
the highest out-of-fold logit of any benign training prompt (5-fold: each benign prompt scored by
a model that did not see it): score = sigmoid(z - z_benign_max + ln 9). A classifier score >= 0.9
thus means "more attack-like than every benign example, each judged unseen"; 0.5 lies ln 9 below.
Only patterns precise enough to block alone weigh >= 0.9.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from llmroute.guards.ood import distinct_ngrams

# (name, weight, pattern). Weights are the score a match gives on its own: only patterns precise
# enough to block alone (no false positives on benchmark and everyday prompts) weigh >= 0.9.
# Words that only read as an attack when they describe the model carry an AI / "you" context.
_AI = r"(?:ai|assistant|model|chatbot|bot|llm|gpt|language model)"
_RULES = (
    r"(?:instructions?|rules|directions|guidelines|guidance|directives|prompts?|polic(?:y|ies)|restrictions|"
    r"filters?|programming|system message)"
)
PATTERNS: tuple[tuple[str, float, str], ...] = (
    ("ignore-instructions", 0.95,
     r"\b(?:ignore|disregard|forget|override|bypass|skip|drop|abandon|set aside|stop following|no longer follow)\b"
     r"[^.\n]{0,40}\b(?:previous|prior|above|earlier|all|any|your|the|system|old|original)\b[^.\n]{0,25}\b"
     + _RULES + r"\b"),
    ("ignore-what-you-were-told", 0.9,
     r"\b(?:ignore|disregard|forget)\b[^.\n]{0,15}\b(?:everything|anything|all|what) you (?:were|have been|'ve been)"
     r" (?:told|given|instructed)"),
    ("instructions-cancelled", 0.9,
     r"\b(?:previous|prior|old|original|earlier) (?:instructions|directives|guidelines) (?:are|were|have been) "
     r"(?:now )?(?:cancelled|canceled|void|revoked|overridden|replaced|lifted)"
     r"|\byour (?:rules|instructions|guidelines|directives|restrictions) (?:are|were|have been) (?:now )?"
     r"(?:cancelled|canceled|void|revoked|overridden|replaced|lifted)"
     r"|\b(?:rules|instructions|guidelines|directives) you were given no longer apply"),
    ("new-instructions", 0.8, r"\bnew (?:instructions|policy|rules|directive)\b[^.\n]{0,30}(?:override|must|:)"),
    ("dan", 0.95, r"\bDAN\b[^.\n]{0,40}\b(?:do anything|no restrictions|jailbr)|\bdo anything now\b"),
    ("developer-mode", 0.85, r"\b(?:developer|god|admin|jailbreak|unrestricted) mode\b[^.\n]{0,40}"
     r"(?:enabled|activated|is on|now on|never refuse|no filters|begin)|\b(?:begin|enter|activate|enable) (?:admin|god|developer|"
     r"jailbreak) mode\b"),
    ("unfiltered-persona", 0.9,
     r"\b(?:unfiltered|uncensored|jailbroken|amoral) (?:ai|assistant|model|chatbot|bot|llm|gpt|version|persona)\b"
     r"|\bunrestricted (?:ai|assistant|chatbot|bot|llm|gpt|persona)\b"
     r"|\b(?:you are|you're|you will be|act as|become|pretend to be|simulate)\b[^.\n]{0,30}\b(?:unfiltered|"
     r"uncensored|jailbroken)\b"
     r"|\bfreed from (?:its|your) (?:alignment|rules)\b"),
    ("no-rules", 0.85,
     r"\b(?:" + _AI + r"|you|yourself)\b[^.\n]{0,30}\b(?:(?:with|has|have) no|without(?: any)?|free from(?: all)?|"
     r"zero) (?:restrictions|filters|content polic(?:y|ies)|safety (?:guidelines|training|filters|rules)|ethics|"
     r"moral guidelines|morals|rules|limitations|limits)\b"
     r"|\bno (?:filters|ethics|refusals), no (?:ethics|refusals|filters|limits)\b"),
    ("never-refuse", 0.8, r"\b(?:" + _AI + r"|you)\b[^.\n]{0,40}\bnever (?:refuses?|says? no|declines?)\b"),
    ("safety-off", 0.85, r"\bsafety (?:settings|filters?|layers?|guidelines) (?:are |is )?(?:now )?(?:off|disabled|"
     r"removed)\b|\b(?:every|all) safety (?:layers?|filters?) removed\b"),
    ("system-prompt-leak", 0.9,
     r"\b(?:print|reveal|repeat|show|output|leak|tell me|give me|paste|dump|quote|spell out|copy)\b[^.\n]{0,30}\b"
     r"(?:system prompt|system message|initial prompt|hidden (?:instructions|rules|preamble|prompt)|secret "
     r"(?:instructions|rules|prompt)|confidential (?:instructions|guidelines)|developer message|"
     r"your (?:instructions|configuration|initial prompt|original prompt))\b"
     r"|\bwhat is your (?:system|initial|original) prompt\b"),
    ("what-were-you-told", 0.8,
     r"\bwhat (?:instructions|rules|directives) (?:were|have) you (?:been )?(?:given|told)\b"),
    ("everything-above", 0.8, r"\b(?:output|print|repeat|copy) everything above\b"),
    ("chat-template-injection", 0.9, r"<\|im_start\|>|\[INST\]|###\s*SYSTEM\s*:|<!--\s*assistant\s*:|"
     r"\bEND OF USER INPUT\b|\bSYSTEM OVERRIDE\b"),
    ("note-to-ai", 0.85, r"\b(?:note|message|instruction)s? to (?:the|any|all) (?:ai|model|assistant|llm)s?\b"
     r"|\b(?:any|all) ai (?:agents?|models?|assistants?) (?:reading|processing) this\b"),
    ("authority-claim", 0.7, r"\bas (?:the|your) (?:system )?(?:administrator|developer|creator)\b[^.\n]{0,30}"
     r"\b(?:order|command|instruct)"),
    ("leetspeak-ignore", 0.9, r"\b1gn[o0]re\b|\bI G N O R E\b"),
    ("hypothetical-no-filter", 0.8, r"\bif you had no (?:content )?filters?\b|\bno disclaimers\b"),
    ("opposite-policy", 0.8, r"\bopposite of your (?:policy|rules|guidelines)\b|\bbypass the safety\b"),
)  # fmt: skip


# Lower-case substrings at least one of which every match of a pattern contains: a pattern's regex
# runs only when one is present (most prompts contain none, and the regexes cost ~2 us each).
# Patterns without an entry (e.g. a deployment's own) always run.
PATTERN_HINTS: dict[str, tuple[str, ...]] = {
    "ignore-instructions": ("ignore", "disregard", "forget", "override", "bypass", "skip", "drop", "abandon",
                            "set aside", "stop following", "no longer follow"),
    "ignore-what-you-were-told": ("ignore", "disregard", "forget"),
    "instructions-cancelled": ("cancel", "void", "revoked", "overridden", "replaced", "lifted", "no longer apply"),
    "new-instructions": ("new ",),
    "dan": ("dan", "do anything now"),
    "developer-mode": (" mode",),
    "unfiltered-persona": ("unfiltered", "uncensored", "jailbroken", "amoral", "unrestricted", "freed from"),
    "no-rules": ("no ", "without", "free from", "zero "),
    "never-refuse": ("never ",),
    "safety-off": ("safety",),
    "system-prompt-leak": ("prompt", "system message", "hidden", "secret", "confidential", "developer message",
                           "your instructions", "your configuration"),
    "what-were-you-told": ("were you", "have you"),
    "everything-above": ("everything above",),
    "chat-template-injection": ("<|", "[inst]", "system", "<!--", "end of user input"),
    "note-to-ai": (" to the ", " to any ", " to all ", "reading this", "processing this"),
    "authority-claim": ("administrator", "developer", "creator"),
    "leetspeak-ignore": ("1gn", "i g n o r e"),
    "hypothetical-no-filter": ("filter", "disclaimer"),
    "opposite-policy": ("opposite of your", "bypass the safety"),
}  # fmt: skip

_DEFAULT_REGEX = {n: p for n, _, p in PATTERNS}

FEATURE_BITS = 18  # hashed buckets per block (character n-grams, word n-grams)
MAX_CHARS = 2000  # the classifier reads the first and last MAX_CHARS / 2 characters of longer texts
_WORD = re.compile(r"\w+")
_LOGIT_09 = math.log(9.0)


def _clip(text: str) -> str:
    if len(text) <= MAX_CHARS:
        return text
    return text[: MAX_CHARS // 2] + "\n" + text[-(MAX_CHARS // 2) :]


def lexical_features(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(column ids, values) of the classifier's sparse feature vector for `text`.

    Columns [0, 2**FEATURE_BITS): hashed character 3/4/5-grams; the next 2**FEATURE_BITS: hashed
    lower-cased word unigrams and bigrams. Binary presence, each block L2-normalised over all of
    the text's distinct n-grams (known to the model or not).
    """
    size = 1 << FEATURE_BITS
    text = _clip(text)
    chars = distinct_ngrams(text, MAX_CHARS + 1) & (size - 1)  # (rare bucket collisions count twice)
    words = _WORD.findall(text.lower())
    grams = set(words)
    grams.update(f"{a} {b}" for a, b in itertools.pairwise(words))
    wids = np.unique(np.fromiter((zlib.crc32(g.encode()) & (size - 1) for g in grams), np.int64, len(grams)))
    cols = np.concatenate([chars, wids + size])
    vals = np.concatenate([
        np.full(len(chars), 1.0 / math.sqrt(max(len(chars), 1)), np.float32),
        np.full(len(wids), 1.0 / math.sqrt(max(len(wids), 1)), np.float32),
    ])  # fmt: skip
    return cols, vals


def _design(texts: Sequence[str]) -> Any:
    from scipy import sparse

    feats = [lexical_features(t) for t in texts]
    indptr = np.cumsum([0] + [len(c) for c, _ in feats])
    cols = np.concatenate([c for c, _ in feats]) if feats else np.zeros(0, np.int64)
    vals = np.concatenate([v for _, v in feats]) if feats else np.zeros(0, np.float32)
    return sparse.csr_matrix((vals, cols, indptr), shape=(len(texts), 2 << FEATURE_BITS))


def _logreg(C: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, solver="newton-cg", max_iter=1000, class_weight="balanced")


def _training_matrix(data: Sequence[tuple[str, int]]) -> tuple[Any, np.ndarray, np.ndarray]:
    """(X restricted to the columns that occur, y, those columns) for (text, label) pairs."""
    y = np.array([int(label) for _, label in data])
    if set(y.tolist()) != {0, 1}:
        raise ValueError(
            "jailbreak classifier: training data needs attacks (label 1) and benign texts (label 0), and no other labels"
        )
    X = _design([t for t, _ in data])
    used = np.unique(X.indices)  # fitting on the columns that occur gives the same solution, ~30x faster
    return X[:, used], y, used


def out_of_fold_logits(
    data: Sequence[tuple[str, int]], C: float = 16.0, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Logit of every training text from a model fitted on the other folds (stratified, shuffled)."""
    from sklearn.model_selection import StratifiedKFold

    X, y, _ = _training_matrix(data)
    k = min(folds, int(np.bincount(y).min()))
    if k < 2:
        raise ValueError("jailbreak classifier: calibration needs at least 2 attacks and 2 benign texts")
    oof = np.empty(len(y))
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(X, y):
        oof[te] = _logreg(C).fit(X[tr], y[tr]).decision_function(X[te])
    return oof


def fit_classifier(
    data: Sequence[tuple[str, int]], C: float = 16.0, folds: int = 5, seed: int = 0, calibrate: bool = True
) -> tuple[np.ndarray, float]:
    """Train the lexical classifier on (text, label) pairs; returns (weights over `lexical_features`, bias).

    With `calibrate` the bias is the fitted intercept - (highest out-of-fold logit of a benign text)
    + ln 9, so that the score sigmoid(features @ weights + bias) is exactly 0.9 at the most
    attack-like benign example as judged by a model that did not see it.
    """
    X, y, used = _training_matrix(data)
    clf = _logreg(C).fit(X, y)
    weights = np.zeros(2 << FEATURE_BITS, np.float32)
    weights[used] = clf.coef_[0]
    bias = float(clf.intercept_[0])
    if calibrate:
        oof = out_of_fold_logits(data, C=C, folds=folds, seed=seed)
        bias += _LOGIT_09 - float(oof[y == 0].max())
    return weights, bias


@functools.lru_cache(maxsize=8)
def _fit_cached(data: tuple[tuple[str, int], ...], C: float, seed: int) -> tuple[np.ndarray, float]:
    return fit_classifier(data, C=C, seed=seed)


class JailbreakDetector:
    """Scores how much a prompt looks like a jailbreak or prompt-injection attempt.

    classifier: train the lexical classifier (default); False or None: patterns only. (Older code
    passed an encoder here; any truthy value still means "with classifier", embeddings are unused.)
    extra_examples: more (text, label) pairs to train on (e.g. a deployment's own red-team set).
    patterns: override the pattern table (name, weight, regex).
    train_examples: replace the built-in training set. C: inverse regularisation strength.
    The fitted weights are cached per (training set, C, seed), so building many detectors is cheap.
    """

    def __init__(
        self,
        classifier: Any = True,
        extra_examples: Sequence[tuple[str, int]] = (),
        patterns: Sequence[tuple[str, float, str]] = PATTERNS,
        seed: int = 0,
        train_examples: Sequence[tuple[str, int]] | None = None,
        C: float = 16.0,
    ) -> None:
        self._patterns: list[tuple[str, float, re.Pattern[str], tuple[str, ...] | None]] = []
        for n, w, p in patterns:
            hints = (
                PATTERN_HINTS.get(n) if _DEFAULT_REGEX.get(n) == p else None
            )  # hints fit the built-in regex only
            self._patterns.append((n, float(w), re.compile(p, re.IGNORECASE), hints))
        self.coef_: np.ndarray | None = None
        self.intercept_: float = 0.0
        if classifier is not None and classifier is not False:
            if train_examples is None:
                from llmroute.guards.jailbreak_data import examples

                train_examples = [(t, y) for t, y, _ in examples(seed)]
            data = tuple((str(t), int(y)) for t, y in [*train_examples, *extra_examples])
            self.coef_, self.intercept_ = _fit_cached(data, float(C), seed)

    def pattern_hits(self, text: str) -> list[tuple[str, float]]:
        """(pattern name, weight) for every pattern that matches `text`."""
        lower = text.lower()
        return [
            (n, w)
            for n, w, r, hints in self._patterns
            if (hints is None or any(h in lower for h in hints)) and r.search(text)
        ]

    def classifier_score(self, text: str) -> float:
        """Calibrated attack score of the lexical classifier (0 when there is none)."""
        if self.coef_ is None:
            return 0.0
        cols, vals = lexical_features(text)
        z = float(self.coef_[cols] @ vals) + self.intercept_
        return float(1.0 / (1.0 + math.exp(-z))) if z > -50 else 0.0

    def score(self, text: str, emb: np.ndarray | None = None) -> float:
        """Attack score in [0, 1]: max of matching pattern weights and the classifier score.

        `emb` is accepted for compatibility and unused.
        """
        s = max((w for _, w in self.pattern_hits(text)), default=0.0)
        if self.coef_ is not None and s < 0.95:
            s = max(s, self.classifier_score(text))
        return s

    def explain(self, text: str, emb: np.ndarray | None = None) -> dict[str, Any]:
        """Score with its reasons (matching patterns and classifier score)."""
        hits = self.pattern_hits(text)
        clf = self.classifier_score(text)
        return {
            "score": max([w for _, w in hits] + [clf]),
            "patterns": [n for n, _ in hits],
            "classifier": clf,
        }
