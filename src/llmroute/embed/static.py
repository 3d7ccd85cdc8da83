"""The default encoder: a static (model2vec-style) distillation of all-MiniLM-L6-v2.

Run time needs only numpy, tokenizers and safetensors: a text is WordPiece-tokenised (no special
tokens, no padding, truncated to ``max_tokens``), its token rows are averaged and the mean is
L2-normalised.  The rows already carry model2vec's PCA and SIF weighting; special tokens and
``[UNK]`` have zero rows, so they do not move the direction of the mean.  The asset is built by
``scripts/build_static_encoder.py`` and ships in ``llmroute/assets/static-minilm``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

import numpy as np

NAME = "static-minilm"
_CHARS_PER_TOKEN_BOUND = 16  # texts are cut to max_tokens * this many characters before tokenising
# BERT basic tokenisation of printable ASCII: lowercase, split on whitespace, every punctuation
# character (all printable non-alphanumerics are punctuation for BERT) is a word of its own.
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[^a-z0-9\s]")
# Texts the fast path leaves to the real tokenizer: control characters BERT deletes (\t\n\r excepted).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# A whitespace-delimited chunk (ASCII whitespace) holding a non-ASCII character.  BERT's
# pre-tokenisation never joins across whitespace, so such chunks can go through the real
# tokenizer one by one while the ASCII text around them takes the fast path.
_NON_ASCII_CHUNK = re.compile(r"[^ \t\n\r]*[^\x00-\x7f][^ \t\n\r]*")
_MAX_NON_ASCII_CHUNKS = 8
_WORD_CACHE_MAX = 200_000


def default_asset_dir() -> Path:
    """The folder of the shipped static MiniLM asset."""
    return Path(str(files("llmroute").joinpath("assets", NAME)))


class StaticEncoder:
    """Static token-embedding encoder (mean pooling, L2-normalised, float32 output).

    Args:
        path: asset folder with ``embeddings.safetensors``, ``tokenizer.json`` and ``config.json``;
            defaults to the shipped ``static-minilm``.
        max_tokens: truncation length in tokens (default: the asset's, 512).
    """

    def __init__(self, path: str | Path | None = None, max_tokens: int | None = None) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        self.path = Path(path) if path is not None else default_asset_dir()
        self._custom_path = path is not None
        cfg_file = self.path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(
                f"static encoder asset not found at {self.path} (expected config.json, "
                "embeddings.safetensors, tokenizer.json); rebuild it with "
                "`python scripts/build_static_encoder.py`"
            )
        self.config: dict = json.loads(cfg_file.read_text())
        arrays = load_file(str(self.path / "embeddings.safetensors"))
        emb = arrays["embeddings"]
        if "scales" in arrays:  # int8 rows with per-row scales
            emb = emb.astype(np.float32)
            emb *= arrays["scales"].astype(np.float32)[:, None]
        self._emb = np.ascontiguousarray(emb, dtype=np.float32)
        self.name: str = self.config.get("name", NAME)
        self.dim: int = int(self._emb.shape[1])
        self.max_tokens: int = int(max_tokens or self.config.get("max_tokens", 512))
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        self._max_chars = self.max_tokens * _CHARS_PER_TOKEN_BOUND
        tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(self.max_tokens)
        self._tok = tok
        self._encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
        # Fast path (same ids as the tokenizer, checked in the tests): plain-ASCII texts are split
        # with a regex and looked up word by word; words not in the vocabulary go through the
        # tokenizer's own WordPiece model once and are memoised.
        self._fast = type(tok.model).__name__ == "WordPiece" and tok.normalizer is not None
        self._words: dict[str, tuple[int, ...]] = {}
        if self._fast:
            vocab = tok.get_vocab(with_added_tokens=False)
            self._words = {w: (i,) for w, i in vocab.items() if not w.startswith("##")}
            self._n_vocab_words = len(self._words)
            self._wordpiece = tok.model
            self._specials = [t.content for t in tok.get_added_tokens_decoder().values()]

    @property
    def vocab_size(self) -> int:
        """Number of rows in the embedding matrix."""
        return int(self._emb.shape[0])

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text as used for pooling (truncated, no special tokens)."""
        texts = _check_texts(texts)
        return [self._ids(t) for t in texts]

    def _ids(self, text: str) -> list[int]:
        text = text[: self._max_chars]
        if not self._fast or _ASCII_CONTROL.search(text) or self._has_special(text):
            return self._tok.encode(text, add_special_tokens=False).ids
        if text.isascii():
            out = self._ascii_ids(text)
        else:
            matches = list(_NON_ASCII_CHUNK.finditer(text))
            if len(matches) > _MAX_NON_ASCII_CHUNKS:  # mostly non-ASCII: one tokenizer call is cheaper
                return self._tok.encode(text, add_special_tokens=False).ids
            out = []
            pos = 0
            encode = self._tok.encode
            for m in matches:
                out += self._ascii_ids(text[pos : m.start()])
                out += encode(m.group(), add_special_tokens=False).ids
                pos = m.end()
            out += self._ascii_ids(text[pos:])
        return out[: self.max_tokens]

    def _ascii_ids(self, text: str) -> list[int]:
        words = self._words
        out: list[int] = []
        for w in _ASCII_WORDS.findall(text.lower()):
            pieces = words.get(w)
            if pieces is None:
                pieces = self._wordpiece_ids(w)
            out.extend(pieces)
        return out

    def _has_special(self, text: str) -> bool:
        return "[" in text and any(t in text for t in self._specials)

    def _wordpiece_ids(self, word: str) -> tuple[int, ...]:
        ids = tuple(t.id for t in self._wordpiece.tokenize(word))
        if len(self._words) >= self._n_vocab_words + _WORD_CACHE_MAX:  # bound the memo
            for key in list(self._words)[self._n_vocab_words :]:
                del self._words[key]
        self._words[word] = ids
        return ids

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts: (len(texts), dim) float32, rows L2-normalised (zero rows for empty text)."""
        texts = _check_texts(texts)
        n = len(texts)
        if n == 1:  # a single request: no batch machinery
            ids = self._ids(texts[0])
            out = np.zeros((1, self.dim), np.float32)
            if ids:
                v = self._emb[ids].sum(axis=0)
                norm = float(np.sqrt(v @ v))
                if norm > 0.0:
                    out[0] = v / norm
            return out
        out = np.zeros((n, self.dim), np.float32)
        if n == 0:
            return out
        return self._pool([self._ids(t) for t in texts])

    def _pool(self, ids: list[list[int]]) -> np.ndarray:
        """Sum the token rows of each id list (a sparse count matrix times the embeddings), normalise."""
        from scipy.sparse import csr_matrix

        n = len(ids)
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=n)
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(lens, out=indptr[1:])
        flat = np.fromiter((i for row in ids for i in row), dtype=np.int64, count=int(indptr[-1]))
        counts = csr_matrix((np.ones(flat.size, np.float32), flat, indptr), shape=(n, self.vocab_size))
        sums = np.asarray(counts @ self._emb, dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", sums, sums))
        nz = norms > 0.0
        sums[nz] /= norms[nz, None]
        sums[~nz] = 0.0
        return sums

    def spec(self) -> dict:
        """JSON-able description; ``load_encoder(spec)`` rebuilds an equivalent encoder."""
        spec: dict = {"name": NAME, "dim": self.dim, "max_tokens": self.max_tokens}
        if self._custom_path:
            spec["path"] = str(self.path)
        return spec

    def __repr__(self) -> str:
        return f"StaticEncoder(name={self.name!r}, dim={self.dim}, max_tokens={self.max_tokens})"


def _check_texts(texts: Sequence[str]) -> Sequence[str]:
    if isinstance(texts, str):
        raise TypeError("encode() takes a sequence of texts; wrap a single text in a list: encode([text])")
    return texts
