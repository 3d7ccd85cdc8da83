"""A learned answer-quality verifier: a logistic model on (prompt, answer) text features.

`LearnedVerifier.fit(table)` learns P(answer is right) from a routing table with responses (rows
with `prompt`, `response` and `quality`; quality >= 0.5 counts as right), e.g.
`../shared/data/routerbench_subset`. The features are the answer's own (length, lines, refusal and
hedging cues, digits, a lone option letter, fenced code and whether it parses, non-ASCII share)
and its relation to the prompt (word overlap, length ratio, a code prompt answered without code):
no model identity, so it scores any model's answers. A logistic regression is calibrated by
construction on its training distribution; `reliability()` measures it on held-out rows (ECE and
the reliability-diagram bins). Saved as JSON (weights and feature names, no pickle).

Used by a cascade as `verify(..., extra=[LearnedVerifier.load(path)])`, or in the gateway with
`cascade.learned_verifier: path.json`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmroute.cascade.verifiers import _FENCE, _HEDGE, _REFUSAL, Check, _prompt_text, answer_text

__all__ = ["FEATURES", "LearnedVerifier", "answer_features"]

FEATURES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "log_len_ratio",
    "refusal",
    "hedge",
    "has_digit",
    "lone_letter",
    "has_code",
    "code_parses",
    "code_prompt",
    "code_prompt_no_code",
    "overlap",
    "non_ascii",
    "question_marks",
)
"""The feature names, in the order `answer_features` returns them."""

_WORD = re.compile(r"\w+")
_CODE_PROMPT = re.compile(r"(?i)\b(?:def |function|python|code|implement|program)\b")
_LONE_LETTER = re.compile(r"^\W*(?:\(?[A-E]\)?|option\s*[12]|[12])\W*$", re.I)


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def answer_features(prompt: str, answer: str) -> list[float]:
    """The `FEATURES` of one (prompt, answer) pair."""
    words_a = _WORD.findall(answer.lower())
    words_p = set(_WORD.findall(prompt.lower()))
    blocks = [c for _, c in _FENCE.findall(answer)]
    looks_code = bool(blocks) or answer.lstrip().startswith(("def ", "import ", "class "))
    code = blocks or ([answer] if looks_code else [])
    parses = bool(code) and all(_parses(c) for c in code)
    code_prompt = bool(_CODE_PROMPT.search(prompt))
    overlap = len(set(words_a) & words_p) / max(1, len(set(words_a)))
    return [
        math.log1p(len(answer)),
        math.log1p(len(words_a)),
        math.log1p(answer.count("\n")),
        math.log1p(len(answer)) - math.log1p(len(prompt)),
        1.0 if _REFUSAL.search(answer) else 0.0,
        1.0 if _HEDGE.search(answer) else 0.0,
        1.0 if any(ch.isdigit() for ch in answer) else 0.0,
        1.0 if _LONE_LETTER.match(answer.strip() or "-") else 0.0,
        1.0 if looks_code else 0.0,
        1.0 if parses else 0.0,
        1.0 if code_prompt else 0.0,
        1.0 if code_prompt and not looks_code else 0.0,
        overlap,
        sum(1 for ch in answer if ord(ch) > 127) / max(1, len(answer)),
        math.log1p(answer.count("?")),
    ]


class LearnedVerifier:
    """P(answer is right) from text features (see the module docstring); a cascade `Verifier`."""

    name = "learned"

    def __init__(
        self,
        coef: Sequence[float],
        intercept: float,
        mean: Sequence[float],
        scale: Sequence[float],
        meta: dict[str, Any] | None = None,
    ) -> None:
        if not (len(coef) == len(mean) == len(scale) == len(FEATURES)):
            raise ValueError(f"a learned verifier needs {len(FEATURES)} weights (features {list(FEATURES)})")
        self.coef = np.asarray(coef, dtype=float)
        self.intercept = float(intercept)
        self.mean = np.asarray(mean, dtype=float)
        self.scale = np.asarray(scale, dtype=float)
        self.meta = dict(meta or {})

    # ---- training ------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls, prompts: Sequence[str], answers: Sequence[str], quality: Sequence[float], *, c: float = 1.0
    ) -> LearnedVerifier:
        """Fit on (prompt, answer, quality) triples; quality >= 0.5 counts as right."""
        from sklearn.linear_model import LogisticRegression

        x = np.array([answer_features(p, a) for p, a in zip(prompts, answers, strict=True)], dtype=float)
        y = (np.asarray(quality, dtype=float) >= 0.5).astype(int)
        if len(set(y.tolist())) < 2:
            raise ValueError("the training rows must hold both right (quality >= 0.5) and wrong answers")
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale == 0] = 1.0
        lr = LogisticRegression(C=c, max_iter=1000).fit((x - mean) / scale, y)
        return cls(
            lr.coef_[0],
            float(lr.intercept_[0]),
            mean,
            scale,
            {"rows": len(y), "right_share": float(y.mean())},
        )

    @classmethod
    def fit_table(cls, table: Any, *, c: float = 1.0) -> LearnedVerifier:
        """Fit on a routing table's rows that have a `response` and a `quality`."""
        t = table[table["response"].notna() & table["quality"].notna()]
        if t.empty:
            raise ValueError("the table has no rows with both a response and a quality; profile models first")
        return cls.fit(
            t["prompt"].astype(str).tolist(), t["response"].astype(str).tolist(), t["quality"].tolist(), c=c
        )

    # ---- scoring -------------------------------------------------------------------------------
    def predict(self, prompts: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """P(right) for each (prompt, answer)."""
        x = np.array([answer_features(p, a) for p, a in zip(prompts, answers, strict=True)], dtype=float)
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def score(self, body: dict[str, Any], response: dict[str, Any]) -> Check:
        """The cascade check: P(right) of the response's answer to the request's last user turn."""
        p = float(self.predict([_prompt_text(body)], [answer_text(response)])[0])
        return Check(self.name, p, f"p(right)={p:.2f}")

    @staticmethod
    def reliability(p: Sequence[float], quality: Sequence[float], bins: int = 10) -> dict[str, Any]:
        """Calibration of predictions `p` against outcomes: ECE and per-bin (mean p, right share,
        count), the data of a reliability diagram; plus AUROC."""
        from sklearn.metrics import roc_auc_score

        pp = np.asarray(p, dtype=float)
        y = (np.asarray(quality, dtype=float) >= 0.5).astype(float)
        edges = np.linspace(0, 1, bins + 1)
        idx = np.clip(np.digitize(pp, edges[1:-1]), 0, bins - 1)
        rows = []
        ece = 0.0
        for b in range(bins):
            m = idx == b
            if not m.any():
                continue
            conf, acc = float(pp[m].mean()), float(y[m].mean())
            ece += m.mean() * abs(conf - acc)
            rows.append({"bin": b, "mean_p": conf, "right_share": acc, "n": int(m.sum())})
        auroc = float(roc_auc_score(y, pp)) if 0 < y.sum() < len(y) else float("nan")
        return {"ece": float(ece), "auroc": auroc, "bins": rows}

    # ---- files ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the weights as JSON."""
        doc = {
            "kind": "llmroute.cascade.learned",
            "features": list(FEATURES),
            "coef": self.coef.tolist(),
            "intercept": self.intercept,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "meta": self.meta,
        }
        Path(path).write_text(json.dumps(doc, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> LearnedVerifier:
        """Read weights written by `save` (errors name the file and what is wrong)."""
        p = Path(path)
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{p}: cannot read a learned verifier ({e}); write one with LearnedVerifier.save"
            ) from None
        if not isinstance(doc, dict) or doc.get("kind") != "llmroute.cascade.learned":
            raise ValueError(f"{p}: not a learned verifier file (kind llmroute.cascade.learned)")
        if doc.get("features") != list(FEATURES):
            raise ValueError(
                f"{p}: trained on other features {doc.get('features')}; refit it with this version"
            )
        return cls(doc["coef"], doc["intercept"], doc["mean"], doc["scale"], doc.get("meta"))
