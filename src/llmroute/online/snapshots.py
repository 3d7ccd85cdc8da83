"""The online learner's state on disk and in bytes: one small safetensors file (no pickle) with
the posteriors, the random projection and the settings (`OnlineLearner.snapshot` / `restore`,
`to_bytes` / `from_bytes`).

The seam: persistence touches only the learner's arrays and settings, never the arithmetic
(`llmroute.online.learner`, `llmroute.online.picking`), so a change of the format stays here.
`SnapshotMixin` is a base class of `OnlineLearner` (not used alone); its class methods build
the learner through its constructor. Pending decisions are not part of the state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import numpy as np

__all__ = ["SnapshotMixin"]

_FORMAT = "llmroute-online-learner/1"


class SnapshotMixin:
    """`OnlineLearner`'s snapshot / restore (see the module docstring); the attributes below
    are the learner's (`OnlineLearner.__init__`)."""

    models: list[str]
    A_inv_: np.ndarray
    b_: np.ndarray
    n_: np.ndarray
    cost_res_: np.ndarray
    profiled_: np.ndarray
    proj_: np.ndarray
    explore_base_: float
    _theta: np.ndarray | None
    _fact: Any

    def to_bytes(self) -> bytes:
        """The learner's state (posteriors, projection, settings) as safetensors bytes."""
        from safetensors.numpy import save

        meta = {"format": _FORMAT, "models": self.models, "settings": self._settings()}
        return save(self._tensors(), metadata={"llmroute": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """A learner from `to_bytes` output (ValueError when it is not one)."""
        from safetensors.numpy import load

        try:
            arrays = load(data)
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + n])
            meta = json.loads((header.get("__metadata__") or {}).get("llmroute", "{}"))
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(f"not a learner snapshot ({exc})") from exc
        return cls._from_parts(meta, arrays, "<bytes>")

    def _tensors(self) -> dict[str, np.ndarray]:
        return {
            "A_inv": np.ascontiguousarray(self.A_inv_),
            "b": np.ascontiguousarray(self.b_),
            "n": self.n_,
            "cost_res": self.cost_res_,
            "profiled": self.profiled_.astype(np.uint8),
            "proj": np.ascontiguousarray(self.proj_),
            "explore_base": np.array([self.explore_base_]),
        }

    def snapshot(self, path: str | Path) -> Path:
        """Write the learner's state (posteriors, projection, settings) to one safetensors file."""
        from safetensors.numpy import save_file

        path = Path(path)
        meta = {"format": _FORMAT, "models": self.models, "settings": self._settings()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(self._tensors(), str(tmp), metadata={"llmroute": json.dumps(meta)})
        tmp.replace(path)
        return path

    def _settings(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in (
                "method",
                "tradeoff",
                "max_explore",
                "dim",
                "embed_dim",
                "prior_var",
                "new_model_prior_var",
                "noise_var",
                "prior_quality",
                "ucb_alpha",
                "confidence",
                "explore_loss",
                "explore_decay",
                "n_samples",
                "max_pending",
                "seed",
            )
        }

    @classmethod
    def restore(cls, path: str | Path) -> Self:
        """Load a learner written by `snapshot` (pending decisions are not part of the state)."""
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = json.loads((fh.metadata() or {}).get("llmroute", "{}"))
                arrays = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
        except Exception as exc:  # safetensors raises its own error types
            raise ValueError(
                f"{path}: not a learner snapshot ({exc}); write one with OnlineLearner.snapshot"
            ) from exc
        return cls._from_parts(meta, arrays, str(path))

    @classmethod
    def _from_parts(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray], where: str) -> Self:
        if meta.get("format") != _FORMAT:
            raise ValueError(
                f"{where}: not a learner snapshot (format {meta.get('format')!r}, expected {_FORMAT})"
            )
        s = dict(meta["settings"])
        embed_dim = s.pop("embed_dim")
        learner = cls(meta["models"], embed_dim, **s)
        learner.A_inv_ = arrays["A_inv"].astype(np.float64)
        learner.b_ = arrays["b"].astype(np.float64)
        learner.n_ = arrays["n"].astype(np.float64)
        learner.cost_res_ = arrays["cost_res"].astype(np.float64)
        learner.profiled_ = arrays["profiled"].astype(bool)
        learner.proj_ = arrays["proj"].astype(np.float64)
        if "explore_base" in arrays:  # absent from snapshots written before it
            learner.explore_base_ = float(arrays["explore_base"][0])
        learner._theta = learner._fact = None
        return learner
