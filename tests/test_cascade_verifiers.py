"""Each cascade verifier check (llmroute.cascade.verifiers): what passes, what fails, and the
boundaries a flipped comparison would move."""

from __future__ import annotations

import math
from typing import Any

import pytest

from llmroute.cascade.verifiers import (
    Check,
    check_code,
    check_empty,
    check_final_answer,
    check_json,
    check_logprob,
    check_refusal,
    schema_errors,
    verify,
)
from llmroute.gateway.config import ConfigError, parse_config


def _resp(content: Any = "ok", finish: str = "stop", **choice: Any) -> dict[str, Any]:
    return {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
                **choice,
            }
        ]
    }


def _body(prompt: str = "hi", **kw: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": prompt}], **kw}


def test_empty_and_truncated() -> None:
    assert check_empty(_body(), _resp("Paris.")).score == 1.0
    assert check_empty(_body(), _resp("   ")).score == 0.0
    assert check_empty(_body(), _resp(None)).score == 0.0
    assert check_empty(_body(), _resp("a long answer cut", finish="length")).score == 0.0
    tool = {
        "choices": [
            {"message": {"content": None, "tool_calls": [{"id": "x"}]}, "finish_reason": "tool_calls"}
        ]
    }
    assert check_empty(_body(), tool).score == 1.0
    assert check_empty(_body(), {"choices": []}).score == 0.0


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("Sorry, I cannot help with that.", 0.0),
        ("I'm sorry, but I can't assist with this request.", 0.0),
        ("I am unable to provide that information.", 0.0),
        ("As an AI language model, I cannot browse.", 0.0),
        ("I'm not sure, but it might be 42.", 0.5),
        ("I might be wrong here: 42.", 0.5),
        ("The answer is 42.", 1.0),
        ("I can help with that: 42.", 1.0),
    ],
)
def test_refusal_and_hedging(text: str, score: float) -> None:
    assert check_refusal(_body(), _resp(text)).score == score


def test_json_only_when_asked_and_against_the_schema() -> None:
    assert check_json(_body(), _resp("not json")).score is None  # not asked for JSON
    obj = {"type": "json_object"}
    assert check_json(_body(response_format=obj), _resp('{"a": 1}')).score == 1.0
    assert check_json(_body(response_format=obj), _resp('{"a": 1')).score == 0.0
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "n": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        },
        "required": ["name", "n"],
        "additionalProperties": False,
    }
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert check_json(_body(response_format=rf), _resp('{"name": "a", "n": 2, "tags": ["t"]}')).score == 1.0
    for bad in (
        '{"name": "a"}',  # missing required
        '{"name": "a", "n": "2"}',  # wrong type
        '{"name": "a", "n": 2, "extra": 1}',  # additional property
        '{"name": "a", "n": 2, "tags": []}',  # minItems
        '{"name": "a", "n": 2, "tags": [1]}',  # item type
        '{"name": "a", "n": true}',  # a bool is not an integer
        "[1, 2]",
    ):
        assert check_json(_body(response_format=rf), _resp(bad)).score == 0.0, bad


def test_schema_subset_keywords() -> None:
    assert schema_errors(3, {"enum": [1, 2, 3]}) == []
    assert schema_errors(4, {"enum": [1, 2, 3]})
    assert schema_errors("x", {"const": "x"}) == []
    assert schema_errors("y", {"const": "x"})
    assert schema_errors([1, 2], {"type": "array", "maxItems": 2}) == []
    assert schema_errors([1, 2, 3], {"type": "array", "maxItems": 2})
    assert schema_errors(1.5, {"type": ["number", "null"]}) == []
    assert schema_errors(None, {"type": ["number", "null"]}) == []
    assert schema_errors("1", {"type": ["number", "null"]})
    assert schema_errors({"a": 1}, {"type": "object", "properties": {"b": {"type": "string"}}}) == []


def test_code_blocks_must_parse() -> None:
    good = "Here:\n```python\ndef f(x):\n    return x + 1\n```"
    bad = "Here:\n```python\ndef f(x)\n    return x + 1\n```"
    assert check_code(_body(), _resp(good)).score == 1.0
    assert check_code(_body(), _resp(bad)).score == 0.0
    assert check_code(_body(), _resp("```\nprint(1\n```")).score == 0.0  # unlabelled blocks count as Python
    assert check_code(_body(), _resp("```bash\nls -la |\n```")).score is None  # other languages do not
    assert check_code(_body(), _resp("no code here")).score is None


def test_final_answer_present() -> None:
    num = _body("Compute 12 + 5. Reply with the final number.")
    assert check_final_answer(num, _resp("The answer is 17.")).score == 1.0
    assert check_final_answer(num, _resp("Let me think about it.")).score == 0.0
    letter = _body("Which number is largest? A) 1 B) 2. Answer with the letter.")
    assert check_final_answer(letter, _resp("The answer is (B).")).score == 1.0
    assert check_final_answer(letter, _resp("the bigger one")).score == 0.0
    final = _body("Think, then give your final answer.")
    assert check_final_answer(final, _resp("Final answer: yes")).score == 1.0
    assert check_final_answer(final, _resp("hmm")).score == 0.0
    assert check_final_answer(_body("Say hello"), _resp("hello")).score is None


def _lp(*tokens: tuple[float, ...]) -> dict[str, Any]:
    content = [
        {
            "token": "t",
            "logprob": t[0],
            "top_logprobs": [{"token": f"t{i}", "logprob": v} for i, v in enumerate(t)],
        }
        for t in tokens
    ]
    return _resp("x", logprobs={"content": content})


def test_logprob_margin() -> None:
    assert check_logprob(_body(), _resp("x")).score is None  # no logprobs
    sure = check_logprob(_body(), _lp((math.log(0.99), math.log(0.01)))).score
    torn = check_logprob(_body(), _lp((math.log(0.5), math.log(0.45))))
    assert sure == pytest.approx(0.98)
    assert torn.score == pytest.approx(0.05)
    # the order of top_logprobs does not matter: the top token is the most likely one
    assert check_logprob(_body(), _lp((math.log(0.01), math.log(0.99)))).score == pytest.approx(0.98)
    # mean over tokens
    both = check_logprob(
        _body(), _lp((math.log(0.99), math.log(0.01)), (math.log(0.5), math.log(0.45)))
    ).score
    assert both == pytest.approx((0.98 + 0.05) / 2)
    # without alternatives the runner-up is the rest of the mass
    only = {
        "choices": [
            {"message": {"content": "x"}, "logprobs": {"content": [{"token": "t", "logprob": math.log(0.9)}]}}
        ]
    }
    assert check_logprob(_body(), only).score == pytest.approx(0.8)


def test_verify_takes_the_minimum_of_applicable_checks() -> None:
    v = verify(_body("Compute 1 + 1. Reply with the final number."), _resp("The answer is 2."))
    assert v.score == 1.0 and v.passed(0.5) and v.passed(1.0)
    v = verify(_body(), _resp("I'm not sure. Sorry, I cannot help with that."))
    assert v.score == 0.0 and v.why.startswith("refusal") and not v.passed(0.5)
    v = verify(_body(), _resp("I'm not sure, maybe 3."))
    assert v.score == 0.5 and v.passed(0.5) and not v.passed(0.51)
    v = verify(_body(), _resp("hello"), ["json", "code"])  # nothing applies
    assert v.score == 1.0 and v.why == "no check applies"
    assert (
        verify(_body(), _resp("Sorry, I cannot help with that."), ["empty"]).score == 1.0
    )  # only the named checks

    class Learned:
        name = "learned"

        def score(self, body: dict[str, Any], response: dict[str, Any]) -> Check:
            return Check("learned", 0.3, "p(correct)=0.3")

    v = verify(_body(), _resp("fine"), extra=[Learned()])
    assert v.score == 0.3 and v.why == "learned: p(correct)=0.3"
    assert v.as_dict()["checks"]["learned"] == 0.3


def test_config_rejects_unknown_checks_and_models() -> None:
    base = {"models": [{"name": "a", "base_url": "http://x"}], "aliases": {"c": {"cascade": {}}}}
    cfg = parse_config(base)
    assert cfg.aliases["c"].cascade is not None and cfg.aliases["c"].cascade.max_steps == 2
    base["aliases"] = {"c": {"cascade": {"verifier": ["refusal", "magic"]}}}
    with pytest.raises(ConfigError, match="magic"):
        parse_config(base)
    base["aliases"] = {"c": {"cascade": {"models": ["a", "b"]}}}
    with pytest.raises(ConfigError, match=r"cascade\.models"):
        parse_config(base)
    base["aliases"] = {"c": {"cascade": {"verifier": "refusal"}}}
    assert parse_config(base).aliases["c"].cascade.verifier == ["refusal"]
