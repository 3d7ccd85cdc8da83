"""The default encoder: a static (model2vec-style) distillation of all-MiniLM-L6-v2.

Run time needs only numpy, tokenizers and safetensors: a text is WordPiece-tokenised (no special
tokens, no padding, truncated to ``max_tokens``), its token rows are averaged and the mean is
L2-normalised.  The rows already carry model2vec's PCA and SIF weighting; special tokens and
``[UNK]`` have zero rows, so they do not move the direction of the mean.  The asset is built by
``scripts/build_static_encoder.py`` and ships in ``llmroute/assets/static-minilm``.

Speed (the ids are always the tokenizer's, checked in the tests): one text is split with a regex
and looked up word by word; a batch of 8+ texts is tokenised in one numpy pass over all its ASCII
text (word boundaries from byte classes, words keyed exactly by their bytes in a hash table), with
non-ASCII chunks and words outside the vocabulary going through the tokenizer once (memoised).
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
# Written to scan fast: tried only where a chunk can start (after whitespace), ASCII characters
# first (no backtracking); the same matches as r"[^ \t\n\r]*[^\x00-\x7f][^ \t\n\r]*".
_NON_ASCII_CHUNK = re.compile(r"(?<![^ \t\n\r])[\x00-\x08\x0b\x0c\x0e-\x1f\x21-\x7f]*[^\x00-\x7f][^ \t\n\r]*")
_MAX_NON_ASCII_CHUNKS = 8
_WORD_CACHE_MAX = 200_000
_CHUNK_CACHE_MAX = 50_000
# Batches of at least this many texts tokenise their ASCII text in one vectorised numpy pass.
_VECTOR_MIN_TEXTS = 8
# The batch path has a fixed cost of ~0.15 ms per call; it pays off once the batch holds about this
# many characters (measured break-even: 32 texts of 60 chars, 16 of 150, < 8 of 600).
_VECTOR_MIN_CHARS = 2500
_VECTOR_CHUNK = 4096
# Vectorised lookup: a word of up to 16 bytes is keyed exactly by its bytes (two little-endian
# uint64, zero padded); the hash only orders the table, every hit is verified on both halves.
_KEY_BYTES = 16
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_HASH_MUL2 = np.uint64(0xBF58476D1CE4E5B9)
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)


def _byte_classes() -> np.ndarray:
    """256-entry table: 0 whitespace (space, tab, newline, CR), 1 [a-z0-9], 2 other printable
    ASCII, 3 control characters (texts with those take the tokenizer path)."""
    lut = np.full(256, 2, dtype=np.uint8)
    lut[[*range(32), 127]] = 3
    lut[list(b" \t\n\r")] = 0
    lut[list(b"abcdefghijklmnopqrstuvwxyz0123456789")] = 1
    return lut


def _word_keys(data: bytes, starts: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact keys (low, high uint64) of the words data[s : s + n] (bytes past 16 ignored)."""
    padded = data + bytes(_KEY_BYTES + 8)
    # an overlapping view: element i is the 8 bytes starting at byte i (unaligned loads)
    v8 = np.ndarray(shape=(len(data) + 8,), dtype="<u8", buffer=padded, offset=0, strides=(1,))
    lo = v8[starts] & _BYTE_MASKS[np.minimum(lens, 8)]
    hi = v8[starts + 8] & _BYTE_MASKS[np.clip(lens - 8, 0, 8)]
    return lo, hi


def _slot(lo: np.ndarray, hi: np.ndarray, size: int) -> np.ndarray:
    """Hash-table slot of each key (multiplicative hashing; `size` a power of two)."""
    h = (lo ^ (hi * _HASH_MUL)) * _HASH_MUL2
    return (h >> np.uint64(64 - size.bit_length() + 1)).astype(np.int64)


_BYTE_CLASS = _byte_classes()


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
        # Fast path (same ids as the tokenizer, checked in the tests): plain-ASCII texts are split
        # with a regex and looked up word by word; words not in the vocabulary go through the
        # tokenizer's own WordPiece model once and are memoised.
        self._fast = type(tok.model).__name__ == "WordPiece" and tok.normalizer is not None
        self._word_id: dict[str, int] = {}  # whole vocabulary words (one token each)
        self._pieces: dict[str, tuple[int, ...]] = {}  # memo: other words -> their WordPiece ids
        self._chunk_ids: dict[str, list[int]] = {}  # memo: non-ASCII chunks -> tokenizer ids
        self._table: tuple[np.ndarray, ...] | None = None  # vectorised lookup, built on first use
        if self._fast:
            vocab = tok.get_vocab(with_added_tokens=False)
            self._word_id = {w: i for w, i in vocab.items() if not w.startswith("##")}
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

    # ---- per-text tokenisation ----------------------------------------------------------------
    def _slow(self, text: str) -> bool:
        """True when `text` (already cut to max_chars) must go through the tokenizer whole."""
        return not self._fast or bool(_ASCII_CONTROL.search(text)) or self._has_special(text)

    def _ids(self, text: str) -> list[int]:
        """Token ids of one text, in order (the tokenizer's ids, truncated)."""
        text = text[: self._max_chars]
        if self._slow(text):
            return self._tok.encode(text, add_special_tokens=False).ids
        if text.isascii():
            out = self._ascii_ids(text, ordered=True)
        else:
            matches = list(_NON_ASCII_CHUNK.finditer(text))
            if len(matches) > _MAX_NON_ASCII_CHUNKS:  # mostly non-ASCII: one tokenizer call is cheaper
                return self._tok.encode(text, add_special_tokens=False).ids
            out = []
            pos = 0
            for m in matches:
                out += self._ascii_ids(text[pos : m.start()], ordered=True)
                out += self._chunk(m.group())
                pos = m.end()
            out += self._ascii_ids(text[pos:], ordered=True)
        return out[: self.max_tokens]

    def _bag(self, text: str) -> list[int]:
        """The ids `_ids` gives, as a multiset (order may differ): what mean pooling needs."""
        text = text[: self._max_chars]
        if text.isascii() and not self._slow(text):
            ids = self._ascii_ids(text, ordered=False)
            if len(ids) <= self.max_tokens:
                return ids
        return self._ids(text)

    def _ascii_ids(self, text: str, ordered: bool) -> list[int]:
        """Ids of an ASCII text; with `ordered=False` the WordPiece pieces of words outside the
        vocabulary are appended at the end instead of in place (same multiset)."""
        found = _ASCII_WORDS.findall(text.lower())
        ids = list(map(self._word_id.get, found))
        if None not in ids:
            return ids  # type: ignore[return-value]
        pieces = self._pieces
        if ordered:
            out: list[int] = []
            for w, i in zip(found, ids, strict=True):
                if i is None:
                    out.extend(pieces.get(w) or self._wordpiece_ids(w))
                else:
                    out.append(i)
            return out
        extra: list[int] = []
        for w in (w for w, i in zip(found, ids, strict=True) if i is None):
            extra.extend(pieces.get(w) or self._wordpiece_ids(w))
        out = [i for i in ids if i is not None]
        out += extra
        return out

    def _has_special(self, text: str) -> bool:
        return "[" in text and any(t in text for t in self._specials)

    def _wordpiece_ids(self, word: str) -> tuple[int, ...]:
        ids = tuple(t.id for t in self._wordpiece.tokenize(word))
        if len(self._pieces) >= _WORD_CACHE_MAX:  # bound the memo
            self._pieces.clear()
        self._pieces[word] = ids
        return ids

    def _chunk(self, chunk: str) -> list[int]:
        """Tokenizer ids of one whitespace-free chunk holding non-ASCII characters (memoised)."""
        ids = self._chunk_ids.get(chunk)
        if ids is None:
            ids = self._tok.encode(chunk, add_special_tokens=False).ids
            if len(self._chunk_ids) >= _CHUNK_CACHE_MAX:
                self._chunk_ids.clear()
            self._chunk_ids[chunk] = ids
        return ids

    # ---- batch tokenisation -------------------------------------------------------------------
    def _batch_bags(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token ids of many texts as (flat ids, row pointers) blocks, one row per text in each.

        Summed over the blocks, row i holds the multiset of `_ids(texts[i])` (the order within
        a row may differ, which mean pooling ignores). Texts are cut into ASCII stretches, all
        tokenised in one vectorised pass (`_vector_ascii`), and id lists (non-ASCII chunks,
        texts the tokenizer must handle whole). Texts longer than `max_tokens` tokens and ASCII
        stretches with control characters go through `_ids` one by one (exact truncation).
        """
        n = len(texts)
        parts: list[str] = []  # ASCII stretches
        part_text: list[int] = []
        lists: list[list[int]] = []  # id lists
        list_text: list[int] = []
        encode = self._tok.encode
        for ti, text in enumerate(texts):
            text = text[: self._max_chars]
            if text.isascii():
                if self._has_special(text):
                    lists.append(encode(text, add_special_tokens=False).ids)
                    list_text.append(ti)
                else:
                    parts.append(text)
                    part_text.append(ti)
                continue
            matches = list(_NON_ASCII_CHUNK.finditer(text))
            if len(matches) > _MAX_NON_ASCII_CHUNKS or self._has_special(text):
                lists.append(encode(text, add_special_tokens=False).ids)
                list_text.append(ti)
                continue
            pos = 0
            for m in matches:
                parts.append(text[pos : m.start()])
                lists.append(self._chunk(m.group()))
                pos = m.end()
            parts.append(text[pos:])
            part_text += [ti] * (len(matches) + 1)
            list_text += [ti] * len(matches)
        p_text = np.asarray(part_text, dtype=np.int64)
        a_tok, a_count, bad = self._vector_ascii(parts)
        per_text = np.bincount(p_text, weights=a_count, minlength=n)
        has_list = np.zeros(n, dtype=bool)
        if lists:
            l_text = np.asarray(list_text, dtype=np.int64)
            l_len = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
            per_text += np.bincount(l_text, weights=l_len, minlength=n)
            has_list[l_text] = True
        over = per_text > self.max_tokens
        # texts with id lists or control characters are redone one by one when they need it;
        # long pure-ASCII texts (a single stretch, tokens in order) are cut here
        redo = over & has_list
        if bad.any():
            redo[p_text[bad]] = True
        cut = over & ~redo
        blocks = []
        if redo.any() or cut.any():  # drop token ranges part by part (few parts)
            keep = np.ones(len(a_tok), dtype=bool)
            p_redo, p_cut = redo[p_text], cut[p_text] & (a_count > self.max_tokens)
            a_end = np.cumsum(a_count)
            for p, r in zip(
                np.flatnonzero(p_redo | p_cut).tolist(), p_redo[p_redo | p_cut].tolist(), strict=True
            ):
                keep[a_end[p] - a_count[p] + (0 if r else self.max_tokens) : a_end[p]] = False
            a_tok = a_tok[keep]
            a_count = np.where(
                redo[p_text], 0, np.where(cut[p_text], np.minimum(a_count, self.max_tokens), a_count)
            )
        if redo.any():
            r_idx = np.flatnonzero(redo).tolist()
            blocks.append(_block([self._ids(texts[i]) for i in r_idx], np.asarray(r_idx, dtype=np.int64), n))
        a_ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(p_text, weights=a_count, minlength=n).astype(np.int64), out=a_ptr[1:])
        blocks.insert(0, (a_tok, a_ptr))
        if lists:
            keep_l = ~redo[l_text]
            kept = [ids for ids, k in zip(lists, keep_l.tolist(), strict=True) if k]
            blocks.append(_block(kept, l_text[keep_l], n))
        return blocks

    def _lookup_table(self) -> tuple[np.ndarray, ...]:
        """Open-addressing hash table (linear probing) of the vocabulary words of <= 16 bytes:
        (low keys, high keys, ids), empty slots have low key 0 (no word has that key)."""
        if self._table is None:
            words = [w for w in self._word_id if w.isascii() and 0 < len(w) <= _KEY_BYTES]
            raw = b"".join(w.encode("ascii").ljust(_KEY_BYTES, b"\0") for w in words)
            keys = np.frombuffer(raw, dtype="<u8").reshape(-1, 2)
            size = 1 << max(int(np.ceil(np.log2(max(len(words), 1) * 4))), 4)
            lo_tab, hi_tab, id_tab = [0] * size, [0] * size, [-1] * size
            slots = _slot(keys[:, 0], keys[:, 1], size).tolist()
            for w, s, lo, hi in zip(words, slots, keys[:, 0].tolist(), keys[:, 1].tolist(), strict=True):
                while lo_tab[s] != 0:
                    s = (s + 1) & (size - 1)
                lo_tab[s], hi_tab[s], id_tab[s] = lo, hi, self._word_id[w]
            self._table = (
                np.array(lo_tab, dtype=np.uint64),
                np.array(hi_tab, dtype=np.uint64),
                np.array(id_tab, dtype=np.int64),
            )
        return self._table

    def _lookup(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Vocabulary id of each key (-1 when absent)."""
        lo_tab, hi_tab, id_tab = self._lookup_table()
        size = len(lo_tab)
        slot = _slot(lo, hi, size)
        t_lo = lo_tab[slot]
        found = (t_lo == lo) & (hi_tab[slot] == hi)
        out = np.where(found, id_tab[slot], -1)
        active = np.flatnonzero(~found & (t_lo != 0))  # slot taken by another word: probe on
        slot, lo, hi = slot[active], lo[active], hi[active]
        while active.size:
            slot = (slot + 1) & (size - 1)
            t_lo = lo_tab[slot]
            found = (t_lo == lo) & (hi_tab[slot] == hi)
            out[active[found]] = id_tab[slot[found]]
            go = ~found & (t_lo != 0)
            active, slot, lo, hi = active[go], slot[go], lo[go], hi[go]
        return out

    def _vector_ascii(self, parts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token ids of ASCII texts, all in one numpy pass.

        Returns (flat ids in order, token count per text, texts holding a control character);
        the ids of the latter are not valid. Same words as `_ASCII_WORDS` (runs of [a-z0-9], or
        one other non-space character) after lower-casing; words are looked up by their exact
        byte keys, the rest (outside the vocabulary or longer than 16 bytes) go through the
        memoised per-word path.
        """
        k = len(parts)
        joined = " ".join(parts).lower()  # the space keeps words of neighbouring parts apart
        data = joined.encode("ascii")
        empty = np.zeros(0, dtype=np.int64)
        if not data.strip():
            return empty, np.zeros(k, dtype=np.int64), np.zeros(k, dtype=bool)
        cls = _BYTE_CLASS[np.frombuffer(data, dtype=np.uint8)]
        part_len = np.fromiter(map(len, parts), dtype=np.int64, count=k)
        part_start = np.cumsum(part_len + 1) - (part_len + 1)
        ctrl = np.flatnonzero(cls == 3)
        bad = np.zeros(k, dtype=bool)
        if ctrl.size:
            bad[np.searchsorted(part_start, ctrl, side="right") - 1] = True
        alnum = (cls == 1).view(np.int8)
        edge = np.diff(alnum, prepend=np.int8(0), append=np.int8(0))  # +1 run start, -1 run end
        run_start = edge[:-1] == 1
        starts = np.flatnonzero(run_start | (cls == 2))
        lens = np.ones(len(starts), dtype=np.int64)
        in_run = run_start[starts]
        lens[in_run] = np.flatnonzero(edge == -1) - starts[in_run]
        first_word = np.searchsorted(starts, part_start)  # words are in part order
        words_per_part = np.diff(first_word, append=len(starts))
        lo, hi = _word_keys(data, starts, lens)
        word_ids = self._lookup(lo, hi)
        miss = np.flatnonzero((word_ids < 0) | (lens > _KEY_BYTES))
        if len(miss) == 0:
            return word_ids, words_per_part, bad
        word_id, pieces = self._word_id, self._pieces
        got: list[tuple[int, ...]] = []
        for s, n in zip(starts[miss].tolist(), lens[miss].tolist(), strict=True):
            w = joined[s : s + n]
            i = word_id.get(w)
            got.append((i,) if i is not None else (pieces.get(w) or self._wordpiece_ids(w)))
        m_len = np.fromiter(map(len, got), dtype=np.int64, count=len(got))
        n_pieces = np.ones(len(starts), dtype=np.int64)
        n_pieces[miss] = m_len
        tok = np.repeat(word_ids, n_pieces)
        t_start = np.cumsum(n_pieces) - n_pieces
        m_flat = np.fromiter((i for ids in got for i in ids), dtype=np.int64, count=int(m_len.sum()))
        m_off = np.cumsum(m_len) - m_len
        m_k = np.repeat(np.arange(len(miss)), m_len)
        tok[t_start[miss][m_k] + (np.arange(len(m_flat)) - m_off[m_k])] = m_flat
        ends = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(n_pieces, out=ends[1:])
        return tok, ends[first_word + words_per_part] - ends[first_word], bad

    # ---- embedding ----------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts: (len(texts), dim) float32, rows L2-normalised (zero rows for empty text)."""
        texts = _check_texts(texts)
        n = len(texts)
        if n >= _VECTOR_MIN_TEXTS and self._fast and sum(map(len, texts)) >= _VECTOR_MIN_CHARS:
            out = np.empty((n, self.dim), np.float32)
            for i in range(0, n, _VECTOR_CHUNK):  # in slices: bounded memory, arrays stay in cache
                out[i : i + _VECTOR_CHUNK] = self._pool(self._batch_bags(texts[i : i + _VECTOR_CHUNK]))
            return out
        # text by text (a request, or a small batch): no sparse-matrix set-up to pay for
        out = np.zeros((n, self.dim), np.float32)
        if n == 1:
            ids = self._bag(texts[0])
            if ids:
                v = np.take(self._emb, ids, axis=0).sum(axis=0)  # = _emb[ids].sum(0), faster
                norm = float(np.sqrt(v @ v))
                if norm > 0.0:
                    out[0] = v / norm
            return out
        # several texts (the gateway's micro-batches): the same float32 operations per text (rows
        # summed in order, `v @ v`, `v / sqrt(v @ v)`), but each sum lands in its output row and
        # the square roots and divisions run once for the batch; the token rows of all texts are
        # gathered by one np.take, and each text sums its own contiguous block of them (the same
        # rows in the same order as a take per text: the same sums)
        # (np.add.reduceat would sum the whole batch at once but adds long bags in another order)
        dots = np.zeros(n, np.float32)
        bags = [self._bag(text) for text in texts]
        rows = np.take(self._emb, [i for ids in bags for i in ids], axis=0)
        k = 0
        for i, ids in enumerate(bags):
            if ids:
                v = rows[k : k + len(ids)].sum(axis=0, out=out[i])
                dots[i] = v @ v
                k += len(ids)
        norms = np.sqrt(dots)
        keep = norms > 0.0
        if keep.all():
            out /= norms[:, None]
        else:
            out[keep] /= norms[keep, None]
            out[~keep] = 0.0
        return out

    def _pool(self, blocks: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Sum the token rows of each text (sparse count matrices times the embeddings), normalise."""
        from scipy.sparse import csr_matrix

        n = len(blocks[0][1]) - 1
        sums: np.ndarray | None = None
        for flat, indptr in blocks:
            counts = csr_matrix((np.ones(flat.size, np.float32), flat, indptr), shape=(n, self.vocab_size))
            part = np.asarray(counts @ self._emb, dtype=np.float32)
            sums = part if sums is None else sums + part
        assert sums is not None
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


def _block(ids: list[list[int]], rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat ids, row pointers) of an n-row block whose rows `rows` (increasing) hold `ids`."""
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, weights=lens, minlength=n).astype(np.int64), out=indptr[1:])
    flat = np.fromiter((i for row in ids for i in row), dtype=np.int64, count=int(lens.sum()))
    return flat, indptr


def _check_texts(texts: Sequence[str]) -> Sequence[str]:
    if isinstance(texts, str):
        raise TypeError("encode() takes a sequence of texts; wrap a single text in a list: encode([text])")
    return texts
