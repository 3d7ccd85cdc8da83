"""The learned answer-quality verifier (llmroute.cascade.learned): fit, calibration report, files,
and its use by a gateway cascade (`cascade.learned_verifier`)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pandas as pd
import pytest

from conftest import FakeServer, GatewayHandle, StubRouter, run_gateway
from llmroute.cascade.learned import FEATURES, LearnedVerifier, answer_features
from llmroute.cascade.verifiers import verify
from llmroute.gateway.fake import skill_prompts


def _table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Answers right or wrong by construction: right ones answer, wrong ones refuse or hedge."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = f"Question {i}: what is {i} plus {i}?"
        if rng.random() < 0.6:
            good = rng.choice(
                [f"The sum is {2 * i}.", "Sure! Happy to help with that, here it is.", "Gladly: twice it."]
            )
            rows.append({"prompt": prompt, "response": good, "quality": 1.0})
        else:
            bad = rng.choice(["Sorry, I cannot help with that.", "I'm not sure, I don't know."])
            rows.append({"prompt": prompt, "response": bad, "quality": 0.0})
    return pd.DataFrame(rows)


def test_features_have_the_declared_names() -> None:
    assert len(answer_features("Write a Python function f", "no code")) == len(FEATURES)
    f = dict(zip(FEATURES, answer_features("Write a Python function f", "no code"), strict=True))
    assert f["code_prompt"] == 1.0 and f["code_prompt_no_code"] == 1.0 and f["has_code"] == 0.0
    f = dict(
        zip(FEATURES, answer_features("Write code", "```python\ndef f(x):\n    return x\n```"), strict=True)
    )
    assert f["has_code"] == 1.0 and f["code_parses"] == 1.0 and f["code_prompt_no_code"] == 0.0
    f = dict(zip(FEATURES, answer_features("Pick one", "B"), strict=True))
    assert f["lone_letter"] == 1.0
    f = dict(zip(FEATURES, answer_features("q", "Sorry, I cannot help with that."), strict=True))
    assert f["refusal"] == 1.0


def test_fit_separates_right_from_wrong_and_reports_calibration(tmp_path: Path) -> None:
    train, test = _table(300, 0), _table(200, 1)
    lv = LearnedVerifier.fit_table(train)
    p = lv.predict(test["prompt"].tolist(), test["response"].tolist())
    right = test["quality"].to_numpy() >= 0.5
    assert p[right].min() > 0.5 > p[~right].max()
    rep = LearnedVerifier.reliability(p, test["quality"])
    assert rep["auroc"] == pytest.approx(1.0)
    assert 0 <= rep["ece"] < 0.2
    assert sum(b["n"] for b in rep["bins"]) == len(test)
    # the cascade check: a refusal fails, a plain answer passes
    body = {"messages": [{"role": "user", "content": "Question 3: what is 3 plus 3?"}]}
    good = {"choices": [{"message": {"content": "The sum is 6."}, "finish_reason": "stop"}]}
    bad = {"choices": [{"message": {"content": "Sorry, I cannot help with that."}, "finish_reason": "stop"}]}
    assert verify(body, good, [], extra=[lv]).passed(0.5)
    assert not verify(body, bad, [], extra=[lv]).passed(0.5)
    # files: same scores after a round trip; wrong files are refused with what to do
    path = tmp_path / "lv.json"
    lv.save(path)
    again = LearnedVerifier.load(path)
    assert (again.predict(test["prompt"].tolist(), test["response"].tolist()) == p).all()
    doc = json.loads(path.read_text())
    doc["features"] = ["other"]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="refit"):
        LearnedVerifier.load(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="not a learned verifier"):
        LearnedVerifier.load(path)


def test_fit_needs_both_outcomes() -> None:
    t = _table(50)
    t["quality"] = 1.0
    with pytest.raises(ValueError, match="both right"):
        LearnedVerifier.fit_table(t)


@pytest.fixture(scope="module")
def gw(fake_server: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHandle]:
    tmp = tmp_path_factory.mktemp("learned")
    LearnedVerifier.fit_table(_table(300)).save(tmp / "lv.json")
    before = dict(fake_server.state.skills)
    fake_server.state.skills.update(
        {"lv-cheap": {"math": 1.0, "chat": 0.0}, "lv-strong": {"math": 1.0, "chat": 1.0}}
    )
    url = fake_server.base_url
    cfg: dict[str, Any] = {
        "server": {"request_timeout_s": 60},
        "models": [
            {
                "name": "lv-cheap",
                "base_url": url,
                "router_model": "weak",
                "input_per_mtok": 0.1,
                "output_per_mtok": 0.1,
            },
            {
                "name": "lv-strong",
                "base_url": url,
                "router_model": "strong",
                "input_per_mtok": 5,
                "output_per_mtok": 5,
            },
        ],
        "aliases": {
            "c/learned": {
                "cascade": {
                    "models": ["lv-cheap", "lv-strong"],
                    "verifier": [],
                    "learned_verifier": "lv.json",
                }
            }
        },
        "store": {"url": "memory://"},
        "base_dir": str(tmp),
    }
    try:
        with run_gateway(cfg, routers={"default": StubRouter()}) as h:
            yield h
    finally:
        fake_server.state.skills.clear()
        fake_server.state.skills.update(before)


def test_gateway_cascade_uses_the_learned_verifier(gw: GatewayHandle) -> None:
    c = openai.OpenAI(base_url=gw, api_key="unused", max_retries=0, timeout=30)
    chat = skill_prompts(3)[2]["prompt"]  # chit-chat: lv-cheap refuses it
    raw = c.chat.completions.with_raw_response.create(
        model="c/learned", messages=[{"role": "user", "content": chat}]
    )
    items = raw.headers["x-llmroute-cascade"].split(", ")
    assert [i.split(";")[0] for i in items[:-1]] == ["lv-cheap", "lv-strong"]
    assert "why=learned" in items[0]
    assert raw.parse().choices[0].message.content.startswith("Sure!")
