"""TF-IDF (word + character n-grams) reduced with truncated SVD to a fixed dimension.

A model-free encoder fitted on the training prompts.  Its learned state is plain arrays (the two
vocabularies as UTF-8 JSON bytes, the idf weights and the SVD projection): no pickle, so a saved
router can embed it next to its other arrays and rebuild it with
``llmroute.embed.encoder_from_state(spec, arrays)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

NAME = "tfidf"
_STATE_KEYS = ("word_vocab_json", "char_vocab_json", "word_idf", "char_idf", "components")


class TfidfEncoder:
    """Word and char_wb n-gram TF-IDF, projected by TruncatedSVD, L2-normalised.

    Args:
        dim: output dimension (fixed; zero-padded when the training data supports fewer components).
        word_ngrams: word n-gram range.
        char_ngrams: character (``char_wb``) n-gram range; ``None`` disables character features.
        max_word_features: vocabulary cap for words (most frequent kept).
        max_char_features: vocabulary cap for character n-grams.
        min_df: minimum document frequency of a feature.
        seed: random state of the SVD (and of its document sample).
        svd_max_docs: the SVD is fitted on at most this many documents (a seeded sample) to keep
            ``fit`` fast on large tables; the vocabularies and idf always use every text.
    """

    def __init__(
        self,
        dim: int = 256,
        word_ngrams: tuple[int, int] | list[int] = (1, 2),
        char_ngrams: tuple[int, int] | list[int] | None = (3, 5),
        max_word_features: int = 10_000,
        max_char_features: int = 10_000,
        min_df: int = 2,
        seed: int = 0,
        svd_max_docs: int = 4_000,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.name = NAME
        self.dim = int(dim)
        self.word_ngrams = (int(word_ngrams[0]), int(word_ngrams[1]))
        self.char_ngrams = None if char_ngrams is None else (int(char_ngrams[0]), int(char_ngrams[1]))
        self.max_word_features = int(max_word_features)
        self.max_char_features = int(max_char_features)
        self.min_df = int(min_df)
        self.seed = int(seed)
        self.svd_max_docs = int(svd_max_docs)
        self.fingerprint: str | None = None
        self._word = None
        self._char = None
        self.components_: np.ndarray | None = None  # (n_features, k) float32, k <= dim

    # ------------------------------------------------------------------ vectorisers
    def _params(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "word_ngrams": list(self.word_ngrams),
            "char_ngrams": None if self.char_ngrams is None else list(self.char_ngrams),
            "max_word_features": self.max_word_features,
            "max_char_features": self.max_char_features,
            "min_df": self.min_df,
            "seed": self.seed,
            "svd_max_docs": self.svd_max_docs,
        }

    def _new_vectorizers(self, min_df: int):  # type: ignore[no-untyped-def]
        from sklearn.feature_extraction.text import TfidfVectorizer

        common = {"sublinear_tf": True, "dtype": np.float32, "min_df": min_df, "lowercase": True}
        word = TfidfVectorizer(
            analyzer="word",
            ngram_range=self.word_ngrams,
            max_features=self.max_word_features,
            token_pattern=r"(?u)\b\w+\b",
            **common,
        )
        char = None
        if self.char_ngrams is not None:
            char = TfidfVectorizer(
                analyzer="char_wb",
                ngram_range=self.char_ngrams,
                max_features=self.max_char_features,
                **common,
            )
        return word, char

    @property
    def fitted(self) -> bool:
        """Whether ``fit`` (or ``from_state``) has run."""
        return self.components_ is not None

    # ------------------------------------------------------------------ fit / encode
    def fit(self, texts: Sequence[str]) -> TfidfEncoder:
        """Learn the vocabularies, idf weights and SVD projection from ``texts``; returns self."""
        from sklearn.decomposition import TruncatedSVD

        texts = _check_texts(texts)
        if len(texts) == 0:
            raise ValueError("TfidfEncoder.fit needs at least one text")
        min_df = self.min_df if len(texts) >= 4 * self.min_df else 1
        word, char = self._new_vectorizers(min_df)
        blocks = [_fit_or_empty(word, texts)]
        if char is not None:
            blocks.append(_fit_or_empty(char, texts))
        x = _hstack([b for b in blocks if b is not None], len(texts))
        if blocks[0] is None and len(blocks) == 2 and blocks[1] is None:
            blocks = [None, None]
        if x.shape[1] == 0:
            raise ValueError("TfidfEncoder.fit found no features in the texts (all empty?)")
        if x.shape[0] > self.svd_max_docs:
            rows = np.random.default_rng(self.seed).choice(x.shape[0], self.svd_max_docs, replace=False)
            x = x[np.sort(rows)]
        k = min(self.dim, x.shape[1] - 1, x.shape[0] - 1)
        if k >= 1:
            svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=2, random_state=self.seed)
            svd.fit(x)
            comps = svd.components_.T
        else:  # tiny corpora: identity on the (at most dim) features
            comps = np.eye(x.shape[1], min(self.dim, x.shape[1]))
        self._word = word if blocks[0] is not None else None
        self._char = char if char is not None and blocks[-1] is not None and len(blocks) == 2 else None
        for vec in (self._word, self._char):
            if vec is not None:  # the state stores float32 idf: use exactly those weights
                vec.idf_ = np.asarray(vec.idf_, dtype=np.float32)
        # Round through float16 so the state saved (float16) reproduces these vectors exactly.
        self.components_ = np.ascontiguousarray(comps.astype(np.float16).astype(np.float32))
        self.fingerprint = _fingerprint(self.state())
        return self

    def _features(self, texts: Sequence[str]):  # type: ignore[no-untyped-def]
        blocks = []
        if self._word is not None:
            blocks.append(self._word.transform(texts))
        if self._char is not None:
            blocks.append(self._char.transform(texts))
        return _hstack(blocks, len(texts))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised (zero rows for texts with no known feature)."""
        texts = _check_texts(texts)
        if self.components_ is None:
            raise RuntimeError("TfidfEncoder is not fitted: call fit(texts) first (or encoder_from_state)")
        out = np.zeros((len(texts), self.dim), np.float32)
        if len(texts) == 0:
            return out
        z = np.asarray(self._features(texts) @ self.components_, dtype=np.float32)
        out[:, : z.shape[1]] = z
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))
        nz = norms > 0.0
        out[nz] /= norms[nz, None]
        return out

    # ------------------------------------------------------------------ persistence
    def spec(self) -> dict:
        """JSON-able hyper-parameters (+ ``fitted``); the learned arrays come from ``state()``."""
        return {"name": NAME, **self._params(), "fitted": self.fitted}

    def state(self) -> dict[str, np.ndarray]:
        """Learned state as plain arrays (vocabularies as UTF-8 JSON bytes, uint8); no pickle."""
        if self.components_ is None:
            raise RuntimeError("TfidfEncoder is not fitted: nothing to save")
        return {
            "word_vocab_json": _vocab_bytes(self._word),
            "char_vocab_json": _vocab_bytes(self._char),
            "word_idf": _idf(self._word),
            "char_idf": _idf(self._char),
            "components": self.components_.astype(np.float16),
        }

    @classmethod
    def from_state(cls, spec: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> TfidfEncoder:
        """Rebuild a fitted encoder from ``spec()`` and ``state()`` outputs."""
        missing = [k for k in _STATE_KEYS if k not in arrays]
        if missing:
            raise ValueError(f"TF-IDF state is missing arrays: {', '.join(missing)}")
        params = {k: v for k, v in spec.items() if k not in ("name", "fitted")}
        enc = cls(**params)
        word, char = enc._new_vectorizers(1)
        enc._word = _restore(word, arrays["word_vocab_json"], arrays["word_idf"])
        enc._char = (
            _restore(char, arrays["char_vocab_json"], arrays["char_idf"]) if char is not None else None
        )
        comps = np.asarray(arrays["components"]).astype(np.float32)
        n_feat = len(getattr(enc._word, "vocabulary_", ())) + len(getattr(enc._char, "vocabulary_", ()))
        if comps.ndim != 2 or comps.shape[0] != n_feat or comps.shape[1] > enc.dim:
            raise ValueError(f"TF-IDF state components shape {comps.shape} does not fit {n_feat} features")
        enc.components_ = np.ascontiguousarray(comps)
        enc.fingerprint = _fingerprint(enc.state())
        return enc

    def __repr__(self) -> str:
        return f"TfidfEncoder(dim={self.dim}, fitted={self.fitted})"


def _check_texts(texts: Sequence[str]) -> Sequence[str]:
    if isinstance(texts, str):
        raise TypeError("encode() takes a sequence of texts; wrap a single text in a list: encode([text])")
    return list(texts)


def _fit_or_empty(vec, texts: Sequence[str]):  # type: ignore[no-untyped-def]
    try:
        return vec.fit_transform(texts)
    except ValueError:  # "empty vocabulary": no token survives for this analyzer
        return None


def _hstack(blocks: list, n: int):  # type: ignore[no-untyped-def]
    from scipy.sparse import csr_matrix, hstack

    if not blocks:
        return csr_matrix((n, 0), dtype=np.float32)
    return blocks[0].tocsr() if len(blocks) == 1 else hstack(blocks, format="csr")


def _vocab_bytes(vec) -> np.ndarray:  # type: ignore[no-untyped-def]
    vocab = getattr(vec, "vocabulary_", None) if vec is not None else None
    terms = [None] * len(vocab) if vocab else []
    for term, idx in (vocab or {}).items():
        terms[idx] = term
    return np.frombuffer(json.dumps(terms, ensure_ascii=False).encode("utf-8"), dtype=np.uint8).copy()


def _idf(vec) -> np.ndarray:  # type: ignore[no-untyped-def]
    if vec is None or not getattr(vec, "vocabulary_", None):
        return np.zeros(0, np.float32)
    return np.asarray(vec.idf_, dtype=np.float32)


def _restore(vec, vocab_json: np.ndarray, idf: np.ndarray):  # type: ignore[no-untyped-def]
    terms = json.loads(np.asarray(vocab_json, dtype=np.uint8).tobytes().decode("utf-8"))
    if not terms:
        return None
    if len(terms) != len(idf):
        raise ValueError(f"TF-IDF state: {len(terms)} terms but {len(idf)} idf weights")
    vec.vocabulary_ = {t: i for i, t in enumerate(terms)}
    vec.idf_ = np.asarray(idf, dtype=np.float32)
    return vec


def _fingerprint(state: Mapping[str, np.ndarray]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for key in _STATE_KEYS:
        h.update(key.encode())
        h.update(np.ascontiguousarray(state[key]).tobytes())
    return h.hexdigest()
