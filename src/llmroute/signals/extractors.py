"""Signal extractors: cheap facts about a request that rules are written over.

Each signal type is a small class built from its YAML parameters (`build_signal`). A signal
declares the shape of its value (`fields()`: path -> `FieldSpec`) so the rules engine can
validate thresholds at load time, and computes its value from a `SignalRequest`. Values are
plain JSON-able Python (numbers, bools, strings, lists of labels, flat dicts). Explanations
(`detail`) never contain the personal data a signal found.

Types: tokens, shape, language, keywords, regex, similarity, domain, difficulty, pii, jailbreak, ood.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from llmroute.guards.pii import PII_TYPES, PIIDetector
from llmroute.signals.request import SignalRequest, content_text, has_image


class SignalConfigError(ValueError):
    """A signal definition is invalid; the message names the signal and the parameter."""


@dataclass(frozen=True)
class FieldSpec:
    """Shape of a signal value (or one field of a dict value).

    kind: "number" | "bool" | "str" | "list" (list of string labels).
    lo / hi: the possible numeric range (numbers). choices: the possible labels (str / list), or
    None when open-ended.
    """

    kind: str
    lo: float = -math.inf
    hi: float = math.inf
    choices: frozenset[str] | None = None


@dataclass
class BuildContext:
    """What signals may need at build time: the shared encoder, the router, a base directory."""

    encoder: Any = None
    router: Any = None
    base_dir: Path | None = None


class Signal:
    """Base class: `name` (as used in rules), parameters in `__init__`, `compute(req)` -> value."""

    type: ClassVar[str] = "base"
    needs_embedding: ClassVar[bool] = False
    _params: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, params: Mapping[str, Any], ctx: BuildContext) -> None:
        unknown = sorted(set(params) - set(self._params) - {"type", "description"})
        if unknown:
            raise SignalConfigError(
                f"signal {name!r} (type {self.type}): unknown parameter(s) {unknown}; "
                f"allowed: {sorted(self._params)}"
            )
        self.name = name
        self.params = dict(params)

    def fields(self) -> dict[str, FieldSpec]:
        """Path -> spec; "" is the value itself, "x" a field of a dict value (used as `name.x`)."""
        raise NotImplementedError

    def compute(self, req: SignalRequest) -> Any:
        """The signal value for this request."""
        raise NotImplementedError

    def detail(self, req: SignalRequest, value: Any) -> Any:
        """Extra explanation for traces (default: none). Must not contain personal data."""
        return None

    def _text(self, req: SignalRequest) -> str:
        return req.all_text if self.params.get("scope", "last") == "all" else req.text


def _need(name: str, params: Mapping[str, Any], key: str) -> Any:
    if key not in params or params[key] in (None, "", [], {}):
        raise SignalConfigError(f"signal {name!r}: parameter {key!r} is required")
    return params[key]


_WORDISH = re.compile(r"\w+|[^\w\s]")


class TokensSignal(Signal):
    """Approximate token count (BPE-like: ~1 token per short word, +1 per 6 extra chars, punctuation).

    scope: "all" (default: every message, what the context window sees) or "last".
    """

    type = "tokens"
    _params = frozenset({"scope"})

    def fields(self) -> dict[str, FieldSpec]:
        return {"": FieldSpec("number", 0.0)}

    def compute(self, req: SignalRequest) -> int:
        text = req.all_text if self.params.get("scope", "all") == "all" else req.text
        return sum(1 + (len(w) - 1) // 6 for w in _WORDISH.findall(text))


class ShapeSignal(Signal):
    """Conversation shape: turns (user messages), messages, has_system, has_tools, has_images."""

    type = "shape"

    def fields(self) -> dict[str, FieldSpec]:
        n = FieldSpec("number", 0.0)
        b = FieldSpec("bool")
        return {"turns": n, "messages": n, "has_system": b, "has_tools": b, "has_images": b}

    def compute(self, req: SignalRequest) -> dict[str, Any]:
        msgs = req.messages
        return {
            "turns": sum(1 for m in msgs if m.get("role") == "user"),
            "messages": len(msgs),
            "has_system": any(m.get("role") in ("system", "developer") for m in msgs),
            "has_tools": bool(req.tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in msgs),
            "has_images": any(has_image(m.get("content")) for m in msgs),
        }


_SCRIPTS: tuple[tuple[str, str], ...] = (
    ("ko", r"[\uac00-\ud7af]"),
    ("ja", r"[\u3040-\u30ff]"),
    ("zh", r"[\u4e00-\u9fff]"),
    ("ru", r"[\u0400-\u04ff]"),
    ("ar", r"[\u0600-\u06ff]"),
    ("he", r"[\u0590-\u05ff]"),
    ("hi", r"[\u0900-\u097f]"),
    ("el", r"[\u0370-\u03ff]"),
    ("th", r"[\u0e00-\u0e7f]"),
)


class LanguageSignal(Signal):
    """ISO 639-1 language of the last user message (py3langid, first 400 chars; script shortcut).

    languages: restrict the detector to these codes (faster, fewer confusions). min_chars: below
    this many letters return `default` (langid is unreliable on a few words; default "en").
    """

    type = "language"
    _params = frozenset({"languages", "min_chars", "default", "scope"})

    def __init__(self, name: str, params: Mapping[str, Any], ctx: BuildContext) -> None:
        super().__init__(name, params, ctx)
        self._ident: Any = None
        self._scripts = [(code, re.compile(p)) for code, p in _SCRIPTS]
        self.default = str(self.params.get("default", "en"))
        self.min_chars = int(self.params.get("min_chars", 12))

    def fields(self) -> dict[str, FieldSpec]:
        langs = self.params.get("languages")
        return {"": FieldSpec("str", choices=frozenset([*langs, self.default]) if langs else None)}

    def _identifier(self) -> Any:
        if self._ident is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            if self.params.get("languages"):
                ident.set_languages(list(self.params["languages"]))
            self._ident = ident
        return self._ident

    def warm(self) -> None:
        """Load the language model now (about a second) instead of on the first request."""
        self._identifier()

    def compute(self, req: SignalRequest) -> str:
        text = self._text(req)[:400]
        if sum(c.isalpha() for c in text) < self.min_chars:
            return self.default
        allowed = self.params.get("languages")
        if not text.isascii():
            for code, rx in self._scripts:
                if (not allowed or code in allowed) and len(rx.findall(text)) * 3 > len(
                    text.replace(" ", "")
                ):
                    return code
        return str(self._identifier().classify(text)[0])


class KeywordsSignal(Signal):
    """Which of `keywords` occur (whole words, case-insensitive unless case_sensitive). Value: list."""

    type = "keywords"
    _params = frozenset({"keywords", "case_sensitive", "scope"})

    def __init__(self, name: str, params: Mapping[str, Any], ctx: BuildContext) -> None:
        super().__init__(name, params, ctx)
        kws = [str(k) for k in _need(name, params, "keywords")]
        self.case = bool(self.params.get("case_sensitive", False))
        self.keywords = kws if self.case else [k.lower() for k in kws]
        alts = "|".join(re.escape(k) for k in sorted(self.keywords, key=len, reverse=True))
        self._rx = re.compile(rf"(?<!\w)(?:{alts})(?!\w)", 0 if self.case else re.IGNORECASE)

    def fields(self) -> dict[str, FieldSpec]:
        return {"": FieldSpec("list", choices=frozenset(self.keywords))}

    def compute(self, req: SignalRequest) -> list[str]:
        found = self._rx.findall(self._text(req))
        return sorted(set(found if self.case else (f.lower() for f in found)))


class RegexSignal(Signal):
    """Which named `patterns` ({name: regex} or a list) match. Value: list of pattern names."""

    type = "regex"
    _params = frozenset({"patterns", "ignore_case", "scope"})

    def __init__(self, name: str, params: Mapping[str, Any], ctx: BuildContext) -> None:
        super().__init__(name, params, ctx)
        pats = _need(name, params, "patterns")
        if isinstance(pats, Sequence) and not isinstance(pats, str):
            pats = {str(p): p for p in pats}
        flags = re.IGNORECASE if self.params.get("ignore_case", True) else 0
        self.patterns: dict[str, re.Pattern[str]] = {}
        for k, p in dict(pats).items():
            try:
                self.patterns[str(k)] = re.compile(str(p), flags)
            except re.error as e:
                raise SignalConfigError(f"signal {name!r}: pattern {k!r} is not a valid regex: {e}") from e

    def fields(self) -> dict[str, FieldSpec]:
        return {"": FieldSpec("list", choices=frozenset(self.patterns))}

    def compute(self, req: SignalRequest) -> list[str]:
        text = self._text(req)
        return [k for k, rx in self.patterns.items() if rx.search(text)]


def _examples_from(name: str, params: Mapping[str, Any], ctx: BuildContext, key: str) -> Any:
    if "file" in params:
        import yaml

        path = Path(params["file"])
        if not path.is_absolute() and ctx.base_dir is not None:
            path = ctx.base_dir / path
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise SignalConfigError(f"signal {name!r}: cannot read examples file {path}: {e}") from e
        return data[key] if isinstance(data, dict) and key in data else data
    return _need(name, params, key)


def _encoder_for(name: str, ctx: BuildContext) -> Any:
    if ctx.encoder is None:
        raise SignalConfigError(f"signal {name!r} needs an embedding encoder but none is configured")
    return ctx.encoder


class SimilaritySignal(Signal):
    """Cosine similarity of the last user message to a named set of example utterances.

    examples: list of texts (or `file:` YAML with a list / {examples: [...]}). aggregate: "max"
    (default) or "top3" (mean of the 3 best). Value in [-1, 1].
    """

    type = "similarity"
    needs_embedding = True
    _params = frozenset({"examples", "file", "aggregate"})

    def __init__(self, name: str, params: Mapping[str, Any], ctx: BuildContext) -> None:
        super().__init__(name, params, ctx)
        ex = [str(t) for t in _examples_from(name, params, ctx, "examples")]
        self.examples_ = _encoder_for(name, ctx).encode(ex)
        self.aggregate = self.params.get("aggregate", "max")
        if self.aggregate not in ("max", "top3"):
            raise SignalConfigError(f"signal {name!r}: aggregate must be 'max' or 'top3'")

    def fields(self) -> dict[str, FieldSpec]:
        return {"": FieldSpec("number", -1.0, 1.0)}

    def compute(self, req: SignalRequest) -> float:
        sims = self.examples_ @ req.embedding()
        if self.aggregate == "top3" and len(sims) > 3:
            return float(np.sort(sims)[-3:].mean())
        return float(sims.max())


class DomainSignal(Signal):
    """Domain label from a classifier trained on labelled examples ({label: [texts]}).

    method: "logistic" (default) or "centroid". min_confidence: below it the value is `other`.
    Value: a label or "other"; detail carries the confidence.
    """

    type = "domain"
    needs_embedding = True
    _params = frozenset({"examples", "file", "method", "min_confidence", "other"})

    def __init__(self, name: str, params: Mapping[str, Any], ctx: BuildContext) -> None:
        super().__init__(name, params, ctx)
        ex = _examples_from(name, params, ctx, "examples")
        if not isinstance(ex, Mapping) or len(ex) < 2:
            raise SignalConfigError(f"signal {name!r}: examples must map at least two labels to texts")
        enc = _encoder_for(name, ctx)
        self.labels = [str(k) for k in ex]
        self.other = str(self.params.get("other", "other"))
        self.min_conf = float(self.params.get("min_confidence", 0.0))
        texts = [str(t) for k in ex for t in ex[k]]
        y = np.array([i for i, k in enumerate(ex) for _ in ex[k]])
        X = enc.encode(texts)
        method = self.params.get("method", "logistic")
        if method == "centroid":
            c = np.stack([X[y == i].mean(0) for i in range(len(self.labels))])
            self.W_ = (c / np.linalg.norm(c, axis=1, keepdims=True)).T.astype(np.float32) * 20.0
            self.b_ = np.zeros(len(self.labels), np.float32)
        elif method == "logistic":
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(C=10.0, max_iter=3000).fit(X, y)
            W, b = clf.coef_, clf.intercept_
            if len(self.labels) == 2:  # binary: sklearn keeps one row
                W, b = np.vstack([-W[0] / 2, W[0] / 2]), np.array([-b[0] / 2, b[0] / 2])
            self.W_, self.b_ = W.T.astype(np.float32), b.astype(np.float32)
        else:
            raise SignalConfigError(f"signal {name!r}: method must be 'logistic' or 'centroid'")

    def fields(self) -> dict[str, FieldSpec]:
        return {"": FieldSpec("str", choices=frozenset([*self.labels, self.other]))}

    def probabilities(self, req: SignalRequest) -> np.ndarray:
        """Class probabilities (softmax) in `labels` order."""
        return req.memo(f"domain:{self.name}", lambda: _softmax(req.embedding() @ self.W_ + self.b_))

    def compute(self, req: SignalRequest) -> str:
        p = self.probabilities(req)
        i = int(p.argmax())
        return self.labels[i] if p[i] >= self.min_conf else self.other

    def detail(self, req: SignalRequest, value: Any) -> Any:
        return {"confidence": round(float(self.probabilities(req).max()), 3)}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


class DifficultySignal(Signal):
    """The router's difficulty estimate: 1 - mean expected quality over the router's models.

    Needs the active router (`Router.estimate`); value in [0, 1]. detail: best model's quality.
    """

    type = "difficulty"
    _params = frozenset({"reduce"})

    def fields(self) -> dict[str, FieldSpec]:
        return {"": FieldSpec("number", 0.0, 1.0)}

    def compute(self, req: SignalRequest) -> float:
        if req.router is None:
            raise RuntimeError(f"signal {self.name!r} (difficulty) needs a router; none is active")
        q, _ = req.memo("router_estimate", lambda: req.router.estimate([req.text]))
        row = np.asarray(q)[0]
        agg = row.max() if self.params.get("reduce", "mean") == "max" else np.nanmean(row)
        return float(np.clip(1.0 - agg, 0.0, 1.0))


class PIISignal(Signal):
    """Personal-data types present (email, phone, card, iban, ssn, nino, ip, secret). Value: list.

    types: subset to detect (default all). scope: "all" (default) or "last". presidio: bool.
    """

    type = "pii"
    _params = frozenset({"types", "scope", "presidio"})

    def __init__(self, name: str, params: Mapping[str, Any], ctx: BuildContext) -> None:
        super().__init__(name, params, ctx)
        try:
            self.detector = PIIDetector(self.params.get("types"), bool(self.params.get("presidio", False)))
        except ValueError as e:
            raise SignalConfigError(f"signal {name!r}: {e}") from e

    def fields(self) -> dict[str, FieldSpec]:
        return {"": FieldSpec("list", choices=frozenset(self.detector.types))}

    def compute(self, req: SignalRequest) -> list[str]:
        text = req.all_text if self.params.get("scope", "all") == "all" else req.text
        return self.detector.types_in(text)

    def detail(self, req: SignalRequest, value: Any) -> Any:
        if not value:
            return None
        text = req.all_text if self.params.get("scope", "all") == "all" else req.text
        counts: dict[str, int] = {}
        for m in self.detector.find(text):
            counts[m.type] = counts.get(m.type, 0) + 1
        return {"counts": counts}


class JailbreakSignal(Signal):
    """Jailbreak / prompt-injection score in [0, 1] (patterns + lexical classifier).

    classifier: use the classifier as well as the patterns (default true; it needs no encoder).
    examples: extra [{text, label}] to train on. scope: "last" (default) or "all".
    A score >= 0.9 means a blocking-grade pattern matched or the classifier rates the text above
    every benign training example, each scored out-of-fold (see `llmroute.guards.jailbreak`).
    """

    type = "jailbreak"
    _params = frozenset({"classifier", "examples", "scope"})

    def __init__(self, name: str, params: Mapping[str, Any], ctx: BuildContext) -> None:
        super().__init__(name, params, ctx)
        from llmroute.guards.jailbreak import JailbreakDetector

        use_clf = bool(self.params.get("classifier", True))
        try:
            extra = [(str(e["text"]), int(e["label"])) for e in self.params.get("examples", [])]
            self.detector = JailbreakDetector(use_clf, extra)
        except (KeyError, TypeError, ValueError) as e:
            raise SignalConfigError(
                f"signal {name!r} (jailbreak): examples must be a list of {{text, label}} with label 0 or 1 ({e})"
            ) from e

    def fields(self) -> dict[str, FieldSpec]:
        return {"": FieldSpec("number", 0.0, 1.0)}

    def compute(self, req: SignalRequest) -> float:
        return round(self.detector.score(self._text(req)), 4)

    def detail(self, req: SignalRequest, value: Any) -> Any:
        hits = self.detector.pattern_hits(self._text(req))
        return {"patterns": [n for n, _ in hits]} if hits else None


class OODSignal(Signal):
    """Out-of-domain score (0 = median in-domain prompt, 1 = in-domain 95th percentile).

    state (an .npz written by `OODDetector.save`; loaded when it exists), table (a routing table
    whose prompts are the in-domain set; fitted at load when `state` is absent, then saved to
    `state` if given), or the active router's `ood_detector` attribute. n_clusters / use_shape / ridge / use_ngrams / novelty_floor / ngram_dims: OODDetector parameters when fitting.
    """

    type = "ood"
    needs_embedding = True
    _params = frozenset(
        {"state", "table", "n_clusters", "use_shape", "ridge", "use_ngrams", "novelty_floor", "ngram_dims"}
    )

    def __init__(self, name: str, params: Mapping[str, Any], ctx: BuildContext) -> None:
        super().__init__(name, params, ctx)
        from llmroute.guards.ood import OODDetector

        def _path(p: str) -> Path:
            q = Path(p)
            return q if q.is_absolute() or ctx.base_dir is None else ctx.base_dir / q

        kw: dict[str, Any] = {
            k: self.params[k]
            for k in ("n_clusters", "use_shape", "ridge", "use_ngrams", "novelty_floor", "ngram_dims")
            if k in self.params
        }
        state = _path(self.params["state"]) if "state" in self.params else None
        if state is not None and state.is_file():
            self.detector = OODDetector.load(state)
        elif "table" in self.params:
            from llmroute.data import load_table

            try:
                table = load_table(_path(self.params["table"]))
            except (OSError, ValueError) as e:
                raise SignalConfigError(f"signal {name!r} (ood): cannot read table: {e}") from e
            self.detector = OODDetector.from_table(table, _encoder_for(name, ctx), **kw)
            if state is not None:  # cache the fitted model for the next start
                state.parent.mkdir(parents=True, exist_ok=True)
                self.detector.save(state)
        elif ctx.router is not None and getattr(ctx.router, "ood_detector", None) is not None:
            self.detector = ctx.router.ood_detector
        else:
            missing = f" ({state} does not exist)" if state is not None else ""
            raise SignalConfigError(
                f"signal {name!r} (ood): give 'state' (a saved OODDetector .npz){missing} and/or 'table' "
                "(the in-domain routing table to fit on), or use a router that carries an ood_detector"
            )

    def fields(self) -> dict[str, FieldSpec]:
        return {"": FieldSpec("number")}

    def compute(self, req: SignalRequest) -> float:
        return round(float(self.detector.score(req.embedding(), req.text)), 4)


SIGNAL_TYPES: dict[str, type[Signal]] = {
    c.type: c
    for c in (
        TokensSignal, ShapeSignal, LanguageSignal, KeywordsSignal, RegexSignal, SimilaritySignal,
        DomainSignal, DifficultySignal, PIISignal, JailbreakSignal, OODSignal,
    )
}  # fmt: skip

# Signals usable in rules without a `signals:` entry (zero-configuration types).
BUILTIN_SIGNALS: dict[str, dict[str, Any]] = {
    "tokens": {"type": "tokens"},
    "shape": {"type": "shape"},
    "language": {"type": "language"},
    "pii": {"type": "pii"},
    "jailbreak": {"type": "jailbreak"},
    "difficulty": {"type": "difficulty"},
}


def build_signal(name: str, params: Mapping[str, Any], ctx: BuildContext) -> Signal:
    """Instantiate signal `name` from its YAML parameters (`type` selects the class)."""
    t = params.get("type")
    if t not in SIGNAL_TYPES:
        raise SignalConfigError(f"signal {name!r}: unknown type {t!r}; known types: {sorted(SIGNAL_TYPES)}")
    return SIGNAL_TYPES[t](name, params, ctx)


__all__ = [
    "BUILTIN_SIGNALS",
    "PII_TYPES",
    "SIGNAL_TYPES",
    "BuildContext",
    "FieldSpec",
    "Signal",
    "SignalConfigError",
    "build_signal",
    "content_text",
]  # fmt: skip
