"""Policies reach the gateway, and decisions are honest (issue 10, items 3 and 4), end to end.

A real gateway on 127.0.0.1 in front of the project's fake OpenAI server, driven with the official
openai client. The stub router's score q(strong) - q(weak) grows with prompt length:
-0.02 + 0.6 * min(len / 200, 1). Configured prices make fake-strong ~150x dearer than fake-weak.

- an alias without a trade-off uses the router file's policy: its trade-off, its calibrated
  strong/weak threshold (mapped onto candidates through `router_model`), and falls back to the
  trade-off, saying why, when the threshold cannot apply;
- a model-name suffix (`llmroute/auto@0.3`, `@share=`, `@tradeoff=`) sets the policy per request;
  bad suffixes and unknown `llmroute.*` fields are 400s naming the field;
- unmet max_cost / min_quality: `constraints_met`, the reason, `x-llmroute-constraint`, and the
  alias / per-request `on_unmet` choice between the closest candidate and a 422;
- a rule that changes the trade-off says so in `x-llmroute-rule` / `x-llmroute-tradeoff`;
- a router calibrated with `llmroute calibrate` sends its share of prompts to the strong model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from typer.testing import CliRunner

from conftest import StubRouter, loopback_config, run_gateway
from llmroute.policy import threshold_for_share

QUANTILES = [float(x) for x in np.linspace(-0.02, 0.58, 101)]  # the stub's score over lengths 0..200


def text(n: int) -> str:
    """A prompt of exactly n characters."""
    return ("abcd " * (n // 5 + 1))[:n]


def score(n: int) -> float:
    return -0.02 + 0.6 * min(n / 200, 1.0)


class PolicyRouter(StubRouter):
    """The stub router with a stored policy, like a saved `Router` (`policy`, `threshold_for_share`)."""

    def __init__(self, **policy: Any) -> None:
        super().__init__()
        self.policy = {"tradeoff": 0.0, "strong": None, "weak": None, "threshold": None, **policy}

    def threshold_for_share(self, share: float) -> float:
        if not self.policy.get("score_quantiles"):
            raise ValueError("no score distribution stored")
        return threshold_for_share(self.policy["score_quantiles"], share)


def _model(name: str, url: str, column: str, pin: float, pout: float, **kw: Any) -> dict[str, Any]:
    return {"name": name, "base_url": url, "input_per_mtok": pin, "output_per_mtok": pout,
            "timeout_s": 2, "router_model": column, **kw}  # fmt: skip


@pytest.fixture(scope="module")
def gw(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("gwpolicy"))
    url = fake_server.base_url
    cfg["models"] += [
        _model("fake-strong-cheap", url, "strong", 1.0, 2.0),
        _model("fake-strong-tiny", url, "strong", 1.0, 2.0, context_window=10),
    ]
    cfg["routers"] = {"default": "builtin:default", "plain": "builtin:default"}
    cfg["aliases"] = {
        "llmroute/auto": {"router": "default", "candidates": ["fake-strong", "fake-weak"]},
        "llmroute/zero": {"router": "default", "tradeoff": 0, "candidates": ["fake-strong", "fake-weak"]},
        "llmroute/three": {"router": "default", "candidates": ["fake-strong", "fake-strong-cheap", "fake-weak"]},
        "llmroute/nostrongweak": {"router": "default", "candidates": ["fake-strong", "fake-strong-cheap"]},
        "llmroute/tiny": {"router": "default", "candidates": ["fake-strong-tiny", "fake-weak"]},
        "llmroute/capped": {"router": "default", "max_cost": 1.0, "candidates": ["fake-strong", "fake-weak"]},
        "llmroute/strict": {"router": "default", "tradeoff": 0, "on_unmet": "reject",
                            "candidates": ["fake-strong", "fake-weak"]},
        "llmroute/plain": {"router": "plain", "candidates": ["fake-strong", "fake-weak"]},
    }  # fmt: skip
    router = PolicyRouter(
        tradeoff=1000.0,  # the trade-off rule alone would always pick fake-weak
        strong="strong",
        weak="weak",
        threshold=0.28,  # prompts of >= 100 characters go strong
        strong_share=0.5,
        score_quantiles=QUANTILES,
        score_pair=["strong", "weak"],
    )
    with run_gateway(cfg, routers={"default": router, "plain": StubRouter()}) as h:
        yield h


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=10)


def ask(base: str, prompt: str, model: str = "llmroute/auto", **kw: Any) -> Any:
    return _client(base).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], **kw
    )


def picked(base: str, prompt: str, model: str = "llmroute/auto", **kw: Any) -> tuple[str, str]:
    r = ask(base, prompt, model, **kw)
    return r.headers["x-llmroute-model"], r.headers["x-llmroute-reason"]


def route(base: Any, prompt: str, model: str = "llmroute/auto", **policy: Any) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "prompt": prompt}
    if policy:
        body["llmroute"] = policy
    return httpx.post(base.root + "/v1/route", json=body, timeout=10)


def _trace(gw: Any, rid: str) -> dict[str, Any]:
    for _ in range(100):
        gw.app.store.flush_sync(5)
        rec = gw.app.store.get(rid)
        if rec is not None:
            return rec
        time.sleep(0.05)
    raise AssertionError(f"no trace record for {rid}")


# ---- item 3: the router file's policy ---------------------------------------------------------
def test_alias_without_tradeoff_uses_the_router_threshold(gw: Any) -> None:
    assert score(101) > 0.28 > score(99)
    model, reason = picked(gw, text(101))
    assert model == "fake-strong" and "threshold=0.28" in reason and f"score={score(101):.3g}" in reason
    assert picked(gw, text(99))[0] == "fake-weak"
    assert picked(gw, text(10))[0] == "fake-weak"
    d = route(gw, text(150)).json()
    assert d["model"] == "fake-strong" and d["policy"]["rule"] == "threshold"
    assert d["policy"]["strong"] == "strong" and d["policy"]["weak"] == "weak"
    assert d["policy"]["threshold"] == 0.28 and d["constraints_met"] is True


def test_explicit_tradeoff_or_limits_replace_the_threshold(gw: Any) -> None:
    # the alias's own trade-off: the trade-off rule (0: best quality)
    model, reason = picked(gw, text(80), "llmroute/zero")
    assert model == "fake-strong" and "lambda=0" in reason and "threshold" not in reason
    # a per-request trade-off beats the router's threshold
    model, reason = picked(gw, text(80), extra_body={"llmroute": {"tradeoff": 0}})
    assert model == "fake-strong" and "lambda=0 lambda_from=request" in reason
    # an alias with max_cost: the router's trade-off (1000), not the threshold
    model, reason = picked(gw, text(150), "llmroute/capped")
    assert model == "fake-weak" and "lambda=1000 lambda_from=router" in reason


def test_threshold_maps_columns_onto_candidates(gw: Any) -> None:
    # two candidates stand for the strong column: the cheaper one wins the strong side
    d = route(gw, text(150), "llmroute/three").json()
    assert d["model"] == "fake-strong-cheap" and d["policy"]["rule"] == "threshold"
    assert [c["model"] for c in d["ranked"]][1:] and {c["model"] for c in d["ranked"]} == {
        "fake-strong",
        "fake-strong-cheap",
        "fake-weak",
    }
    assert route(gw, text(20), "llmroute/three").json()["model"] == "fake-weak"


def test_threshold_falls_back_to_the_router_tradeoff_and_says_why(gw: Any) -> None:
    d = route(gw, text(150), "llmroute/nostrongweak").json()
    assert d["policy"]["rule"] == "tradeoff" and d["policy"]["tradeoff"] == 1000.0
    assert d["policy"]["tradeoff_from"] == "router"
    assert "router threshold not applied: no candidate maps to the router's weak column 'weak'" in d["reason"]
    assert d["model"] == "fake-strong-cheap"  # the cheaper of the two at lambda 1000
    # a strong candidate too small for the prompt: not admissible, so no strong side this time
    d = route(gw, text(150), "llmroute/tiny").json()
    assert d["model"] == "fake-weak" and d["policy"]["rule"] == "tradeoff"
    assert "threshold not applied: no admissible candidate on column 'strong'" in d["reason"]
    d = route(gw, text(30), "llmroute/tiny").json()  # 30 chars fit its 10-token window
    assert d["policy"]["rule"] == "threshold" and d["model"] == "fake-weak"


def test_models_lists_the_effective_policy_and_suffixes(gw: Any) -> None:
    data = {m["id"]: m["llmroute"] for m in httpx.get(gw.root + "/v1/models").json()["data"]}
    auto = data["llmroute/auto"]
    assert auto["rule"] == "threshold" and auto["tradeoff_from"] == "router" and auto["threshold"] == 0.28
    assert auto["model_suffixes"][0] == "llmroute/auto@<strong share 0..1>"
    assert data["llmroute/zero"]["rule"] == "tradeoff" and data["llmroute/zero"]["tradeoff_from"] == "alias"
    plain = data["llmroute/plain"]
    assert plain["tradeoff"] == 0.0 and plain["model_suffixes"] == ["llmroute/plain@tradeoff=<lambda>"]
    assert data["llmroute/strict"]["on_unmet"] == "reject"


# ---- item 3: per-request policy from the model name --------------------------------------------
def test_model_suffix_sets_the_strong_share(gw: Any) -> None:
    # share 0.9: threshold -0.02 + 0.6 * 0.1 = 0.04; share 0.1: 0.52
    n = 80
    assert 0.04 <= score(n) < 0.52
    model, reason = picked(gw, text(n), "llmroute/auto@0.9")
    assert model == "fake-strong" and "share=0.9" in reason
    assert picked(gw, text(n), "llmroute/auto@share=0.9")[0] == "fake-strong"
    assert picked(gw, text(n), "llmroute/auto@0.1")[0] == "fake-weak"
    assert picked(gw, text(190), "llmroute/auto@0.1")[0] == "fake-strong"
    assert picked(gw, text(n), "llmroute/auto@1")[0] == "fake-strong"
    assert picked(gw, text(200), "llmroute/auto@0")[0] == "fake-weak"
    # the same through the body object, and in the decision record
    d = route(gw, text(n), strong_share=0.9).json()
    assert d["model"] == "fake-strong" and d["policy"]["strong_share"] == 0.9
    assert d["policy"]["threshold"] == pytest.approx(0.04)


def test_model_suffix_sets_the_tradeoff(gw: Any) -> None:
    model, reason = picked(gw, text(150), "llmroute/auto@tradeoff=0")
    assert model == "fake-strong" and "lambda=0 lambda_from=request" in reason
    assert picked(gw, text(150), "llmroute/auto@tradeoff=inf")[0] == "fake-weak"
    assert picked(gw, text(150), "llmroute/zero@tradeoff=1000")[0] == "fake-weak"


@pytest.mark.parametrize(
    "name", ["llmroute/auto@abc", "llmroute/auto@1.5", "llmroute/auto@-0.2", "llmroute/auto@speed=3",
             "llmroute/auto@tradeoff=-1", "llmroute/auto@nan", "fake-strong@0.3"],
)  # fmt: skip
def test_bad_model_suffix_is_a_400_naming_model(gw: Any, name: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        ask(gw, "hi", name)
    err = e.value.body
    assert err["param"] == "model" and name in err["message"]
    assert "@share=" in err["message"] and "@tradeoff=" in err["message"]


def test_unknown_base_and_uncalibrated_share(gw: Any) -> None:
    with pytest.raises(openai.NotFoundError):
        ask(gw, "hi", "llmroute/nope@0.3")
    with pytest.raises(openai.BadRequestError) as e:
        ask(gw, "hi", "llmroute/plain@0.3")
    assert e.value.body["param"] == "model" and e.value.body["code"] == "share_not_calibrated"
    assert "llmroute calibrate" in e.value.body["message"]
    assert picked(gw, text(150), "llmroute/plain@tradeoff=0")[0] == "fake-strong"
    # a share on an alias without both columns: the trade-off decides and the reason says why
    d = route(gw, text(150), "llmroute/nostrongweak@0.9").json()
    assert d["policy"]["rule"] == "tradeoff" and "strong share not applied" in d["reason"]


@pytest.mark.parametrize(
    ("policy", "param"),
    [({"tradeof": 1}, "llmroute.tradeof"), ({"max_cost": 1, "speed": "fast"}, "llmroute.speed"),
     ({"tradeoff": -1}, "llmroute.tradeoff"), ({"min_quality": 1.5}, "llmroute.min_quality"),
     ({"strong_share": 2}, "llmroute.strong_share"), ({"on_unmet": "fail"}, "llmroute.on_unmet"),
     ({"max_cost": "1"}, "llmroute.max_cost")],
)  # fmt: skip
def test_bad_llmroute_fields_are_a_400_naming_the_field(gw: Any, policy: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        ask(gw, "hi", extra_body={"llmroute": policy})
    assert e.value.body["param"] == param and param in e.value.body["message"]


# ---- item 4: honest decisions ------------------------------------------------------------------
def test_unmet_max_cost_serves_the_closest_and_says_so(gw: Any) -> None:
    r = ask(gw, text(150), "llmroute/zero", extra_body={"llmroute": {"max_cost": 1e-9}})
    assert r.headers["x-llmroute-model"] == "fake-weak"  # the cheapest
    hdr = r.headers["x-llmroute-constraint"]
    assert hdr.startswith("unmet max_cost: expected $") and hdr.endswith("closest candidate served")
    assert "unmet=max_cost" in r.headers["x-llmroute-reason"]
    rec = _trace(gw, r.headers["x-llmroute-request-id"])
    assert rec["extra"]["policy"]["constraints_met"] is False
    assert rec["extra"]["policy"]["unmet_constraints"] == ["max_cost"]
    d = route(gw, text(150), "llmroute/zero", max_cost=1e-9).json()
    assert d["constraints_met"] is False and d["unmet_constraints"] == ["max_cost"]
    assert d["model"] == "fake-weak"
    # a limit that the chosen model meets
    r = ask(gw, text(150), "llmroute/zero", extra_body={"llmroute": {"max_cost": 1.0}})
    assert r.headers["x-llmroute-constraint"] == "met" and r.headers["x-llmroute-model"] == "fake-strong"
    assert "unmet" not in r.headers["x-llmroute-reason"]
    d = route(gw, text(150), "llmroute/zero", max_cost=1.0).json()
    assert d["constraints_met"] is True and d["unmet_constraints"] == []
    # no limit: no constraint header
    assert "x-llmroute-constraint" not in ask(gw, text(150), "llmroute/zero").headers


def test_unmet_max_cost_between_the_candidates(gw: Any) -> None:
    """A limit between the two costs is met by the cheap one: met, and the dear one is not served."""
    d = route(gw, text(150), "llmroute/zero").json()
    costs = {c["model"]: c["expected_cost"] for c in d["ranked"]}
    limit = (costs["fake-strong"] + costs["fake-weak"]) / 2
    d = route(gw, text(150), "llmroute/zero", max_cost=limit).json()
    assert d["model"] == "fake-weak" and d["constraints_met"] is True
    d = route(gw, text(150), "llmroute/zero", max_cost=costs["fake-weak"] * 0.99).json()
    assert d["model"] == "fake-weak" and d["constraints_met"] is False


def test_unmet_min_quality_serves_the_best_and_says_so(gw: Any) -> None:
    r = ask(gw, text(150), "llmroute/zero", extra_body={"llmroute": {"min_quality": 0.99}})
    assert r.headers["x-llmroute-model"] == "fake-strong"  # the best
    assert r.headers["x-llmroute-constraint"].startswith("unmet min_quality: expected 0.")
    d = route(gw, text(150), "llmroute/zero", min_quality=0.99).json()
    assert d["unmet_constraints"] == ["min_quality"] and d["policy"]["rule"] == "min_quality"
    d = route(gw, text(150), "llmroute/zero", min_quality=0.3).json()
    assert d["constraints_met"] is True and d["model"] == "fake-weak"  # the cheapest reaching 0.3


def test_on_unmet_reject_is_a_422(gw: Any) -> None:
    c = _client(gw)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        c.chat.completions.create(
            model="llmroute/strict",
            messages=[{"role": "user", "content": text(150)}],
            extra_body={"llmroute": {"max_cost": 1e-9}},
        )
    body = e.value.body
    assert body["code"] == "constraint_unmet" and body["param"] == "llmroute.max_cost"
    assert "max_cost" in body["message"] and "on_unmet" in body["message"]
    assert e.value.response.headers["x-llmroute-constraint"].endswith("rejected")
    rec = _trace(gw, e.value.response.headers["x-llmroute-request-id"])
    assert rec["status"] == 422 and rec["extra"]["policy"]["unmet_constraints"] == ["max_cost"]
    # the same alias serves when the limit is met, and a request may ask for the closest instead
    assert (
        picked(gw, text(150), "llmroute/strict", extra_body={"llmroute": {"max_cost": 1.0}})[0]
        == "fake-strong"
    )
    model, _ = picked(
        gw, text(150), "llmroute/strict", extra_body={"llmroute": {"max_cost": 1e-9, "on_unmet": "closest"}}
    )
    assert model == "fake-weak"
    # and a request may ask to be rejected on an alias that serves the closest
    r = route(gw, text(150), "llmroute/zero", min_quality=0.99, on_unmet="reject")
    assert r.status_code == 422 and r.json()["error"]["param"] == "llmroute.min_quality"


def test_constraint_header_on_streams(gw: Any) -> None:
    r = _client(gw).chat.completions.with_raw_response.create(
        model="llmroute/zero",
        messages=[{"role": "user", "content": text(150)}],
        stream=True,
        extra_body={"llmroute": {"max_cost": 1e-9}},
    )
    assert r.headers["x-llmroute-constraint"].startswith("unmet max_cost")
    chunks = list(r.parse())
    assert chunks and r.headers["x-llmroute-model"] == "fake-weak"


# ---- item 4: rules that change the trade-off, and keys with suffixes ---------------------------
@pytest.fixture(scope="module")
def gw_rules(fake_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cfg = loopback_config(fake_server.base_url, tmp_path_factory.mktemp("gwpolicyrules"))
    cfg["aliases"]["llmroute/auto"]["tradeoff"] = 0
    cfg["aliases"]["llmroute/other"] = {"router": "default", "candidates": ["fake-strong", "fake-weak"]}
    cfg["signals"] = {"thrift": {"type": "keywords", "keywords": ["cheaply"]}}
    cfg["rules"] = [{"name": "thrifty-words-save", "priority": 10, "when": {"signal": "thrift"},
                     "action": {"type": "set", "tradeoff": 1000}}]  # fmt: skip
    cfg["keys"] = [{"id": "team", "key_env": "LLMROUTE_TEST_POLICY_KEY", "aliases": ["llmroute/auto"]}]
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMROUTE_TEST_POLICY_KEY", "sk-policy-test")
    try:
        with run_gateway(cfg, routers={"default": PolicyRouter(strong="strong", weak="weak")}) as h:
            yield h
    finally:
        mp.undo()


def _keyed(base: str, key: str = "sk-policy-test") -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=10)


def test_rule_that_sets_the_tradeoff_says_so_in_headers(gw_rules: Any) -> None:
    c = _keyed(gw_rules)
    long = text(150)
    r = c.chat.completions.with_raw_response.create(
        model="llmroute/auto", messages=[{"role": "user", "content": long}]
    )
    assert r.headers["x-llmroute-model"] == "fake-strong"
    assert "x-llmroute-rule" not in r.headers and "x-llmroute-tradeoff" not in r.headers
    thrifty = "Please answer cheaply: " + long
    for extra in ({}, {"llmroute": {"tradeoff": 0}}):  # the rule overrides the caller's own trade-off too
        r = c.chat.completions.with_raw_response.create(
            model="llmroute/auto", messages=[{"role": "user", "content": thrifty}], extra_body=extra
        )
        assert r.headers["x-llmroute-model"] == "fake-weak"
        assert r.headers["x-llmroute-rule"] == "thrifty-words-save"
        assert r.headers["x-llmroute-tradeoff"] == "1000"
        assert "set_by=tradeoff:thrifty-words-save" in r.headers["x-llmroute-reason"]
    d = httpx.post(
        gw_rules.root + "/v1/route",
        json={"model": "llmroute/auto", "prompt": thrifty},
        headers={"authorization": "Bearer sk-policy-test"},
    ).json()
    assert d["policy"]["set_by"] == {"tradeoff": "thrifty-words-save"}
    assert d["policy"]["tradeoff_from"] == "rule"


def test_suffix_passes_the_key_allow_list_of_its_alias(gw_rules: Any) -> None:
    c = _keyed(gw_rules)
    r = c.chat.completions.with_raw_response.create(
        model="llmroute/auto@tradeoff=1000", messages=[{"role": "user", "content": text(150)}]
    )
    assert r.headers["x-llmroute-model"] == "fake-weak"
    with pytest.raises(openai.PermissionDeniedError):
        c.chat.completions.create(
            model="llmroute/other@tradeoff=0", messages=[{"role": "user", "content": "x"}]
        )
    # an unknown caller gets its 401 before any suffix check
    with pytest.raises(openai.AuthenticationError):
        _keyed(gw_rules, "sk-wrong").chat.completions.create(
            model="llmroute/auto@bad", messages=[{"role": "user", "content": "x"}]
        )


# ---- a router calibrated on the CLI, served by the gateway -------------------------------------
PROMPTS = [
    "hello, how are you?", "What is the capital of France?", "Thanks, that was helpful!",
    "Translate 'good morning' into Spanish.", "Give me a synonym for happy.", "What time zone is Tokyo in?",
    "Rewrite this sentence more politely: send me the file now.", "Write a haiku about rain.",
    "How many legs does a spider have?", "Format this list as bullet points: apples, pears, plums.",
    "Prove that there are infinitely many prime numbers.",
    "Design a distributed rate limiter for a global API with per-tenant quotas and explain the trade-offs.",
    "Write a Python function that parses an arithmetic expression with precedence and parentheses.",
    "A tank fills in 6 hours with pipe A and 4 hours with pipe B; pipe C drains it in 8. How long with all three?",
    "Explain the CAP theorem and how Spanner relates to it.",
    "Implement an LRU cache in Rust with O(1) operations and explain the ownership issues.",
    "Derive the closed form of the sum of the first n squares and prove it by induction.",
    "Analyse the causes of the 2008 financial crisis in depth.",
    "What is 7 times 8?", "Name three primary colours.",
]  # fmt: skip


def test_calibrated_router_file_reaches_the_gateway(fake_server: Any, tmp_path: Path) -> None:
    from llmroute.cli import app
    from llmroute.router import Router, default_router_path

    prompts = tmp_path / "traffic.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "calibrated.safetensors"
    res = CliRunner().invoke(
        app,
        ["calibrate", "--router", str(default_router_path()), "--prompts", str(prompts),
         "--strong-share", "0.25", "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    r = Router.load(out)
    strong, weak = r.policy["strong"], r.policy["weak"]
    cfg = loopback_config(fake_server.base_url, tmp_path)
    cfg["models"][0]["router_model"] = strong
    cfg["models"][1]["router_model"] = weak
    cfg["routers"] = {"default": str(out)}
    with run_gateway(cfg) as base:
        models = [route(base, p).json() for p in PROMPTS]
        assert all(d["policy"]["rule"] == "threshold" for d in models)
        n_strong = sum(d["model"] == "fake-strong" for d in models)
        assert abs(n_strong - 5) <= 1  # 25% of 20 (one borderline prompt may round either way)
        half = sum(route(base, p, "llmroute/auto@0.5").json()["model"] == "fake-strong" for p in PROMPTS)
        assert abs(half - 10) <= 2
        assert n_strong < half
