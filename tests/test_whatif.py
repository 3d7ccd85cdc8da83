"""Off-policy evaluation (`llmroute.online.whatif`, `llmroute whatif`): hand-computed estimates,
missing support, interval coverage on simulated logs, CLI round trip (issue 13 item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llmroute.cli import app
from llmroute.data.synthetic import make_synthetic_table
from llmroute.online.whatif import offpolicy_estimate, read_log, whatif, write_log

# a 4-row log over models a, b; the target picks a, a, a, b; lambda 1
CHOSEN = np.array([0, 1, 0, 1])
PROP = np.array([0.5, 0.25, 0.8, 0.5])
Q = np.array([1.0, 0.0, 0.5, 1.0])
C = np.array([0.1, 0.2, 0.1, 0.4])
TARGET = np.array([0, 0, 0, 1])
Q_HAT = np.array([[0.8, 0.5], [0.6, 0.4], [0.5, 0.5], [0.2, 0.9]])
C_HAT = np.array([[0.1, 0.3]] * 4)


def _four_rows(**kw):
    return offpolicy_estimate(CHOSEN, PROP, Q, C, TARGET, Q_HAT, C_HAT, tradeoff=1.0, models=["a", "b"], **kw)


def test_hand_computed_ips_snips_dr_on_four_rows() -> None:
    res = _four_rows()
    # weights [target == chosen] / propensity: 2, 0, 1.25, 2; rewards q - c: .9, -.2, .4, .6
    ips_terms = np.array([1.8, 0.0, 0.5, 1.2])
    ips = res.estimates["ips"]["reward"]
    assert ips.value == pytest.approx(0.875)
    assert ips.se == pytest.approx(ips_terms.std(ddof=1) / 2)
    assert ips.lo == pytest.approx(0.875 - 1.959964 * ips.se, abs=1e-6)
    assert ips.hi == pytest.approx(0.875 + 1.959964 * ips.se, abs=1e-6)
    assert res.estimates["ips"]["quality"].value == pytest.approx((2 + 0.625 + 2) / 4)
    assert res.estimates["ips"]["cost"].value == pytest.approx((0.2 + 0.125 + 0.8) / 4)
    # snips: sum w r / sum w = 3.5 / 5.25; delta-method terms w (r - V) / mean(w)
    snips = res.estimates["snips"]["reward"]
    assert snips.value == pytest.approx(3.5 / 5.25)
    w, r = np.array([2, 0, 1.25, 2]), np.array([0.9, -0.2, 0.4, 0.6])
    assert snips.se == pytest.approx((w * (r - 3.5 / 5.25) / w.mean()).std(ddof=1) / 2)
    # dr: reward model at the target's pick (.7, .5, .4, .6) + w * (r - model at the logged pick)
    # = .7 + 2 * (.9 - .7), .5, .4 + 1.25 * 0, .6 + 2 * 0
    assert res.estimates["dr"]["reward"].value == pytest.approx((1.1 + 0.5 + 0.4 + 0.6) / 4)
    assert res.estimates["dr"]["quality"].value == pytest.approx((1.2 + 0.6 + 0.5 + 1.1) / 4)
    assert res.estimates["dr"]["cost"].value == pytest.approx((0.1 + 0.1 + 0.1 + 0.3 + 2 * (0.4 - 0.3)) / 4)
    assert res.ess == pytest.approx(5.25**2 / (4 + 1.5625 + 4))
    assert res.matched == 3
    assert res.target_shares == {"a": 0.75, "b": 0.25} and res.logged_shares == {"a": 0.5, "b": 0.5}
    # the reward is linear: reward = quality - lambda * cost for ips and dr
    for e in ("ips", "dr"):
        d = res.estimates[e]
        assert d["reward"].value == pytest.approx(d["quality"].value - d["cost"].value)


def test_no_reward_model_means_no_dr() -> None:
    res = offpolicy_estimate(CHOSEN, PROP, Q, C, TARGET, None, None, tradeoff=1.0)
    assert set(res.estimates) == {"ips", "snips"}


def test_missing_support_is_warned() -> None:
    target = np.array([0, 2, 2, 1])  # model c: the log never chose it
    res = offpolicy_estimate(
        CHOSEN, PROP, Q, C, target, np.hstack([Q_HAT, Q_HAT[:, :1]]), np.hstack([C_HAT, C_HAT[:, :1]]),
        tradeoff=1.0, models=["a", "b", "c"],
    )  # fmt: skip
    msgs = [w for w in res.warnings if "missing support" in w]
    assert len(msgs) == 1 and "c on 2 of 4 rows" in msgs[0] and "propensity 0" in msgs[0]
    assert not [w for w in _four_rows().warnings if "missing support" in w]
    # row-level: the full logging distribution says the target's pick on row 1 had probability 0
    lp = np.array([[0.5, 0.5], [0.0, 1.0], [0.8, 0.2], [0.5, 0.5]])
    got = [w for w in _four_rows(logging_probs=lp).warnings if "missing support" in w]
    assert len(got) == 1 and "on 1 of 4 rows" in got[0]
    lp[1] = [0.75, 0.25]
    assert not [w for w in _four_rows(logging_probs=lp).warnings if "missing support" in w]


def test_bad_propensity_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="propensity outside"):
        offpolicy_estimate(CHOSEN, np.array([0.5, 0.0, 0.8, 0.5]), Q, C, TARGET, None, None, tradeoff=1.0)
    with pytest.raises(ValueError, match="propensity outside"):
        offpolicy_estimate(CHOSEN, np.array([0.5, 1.5, 0.8, 0.5]), Q, C, TARGET, None, None, tradeoff=1.0)


def _synthetic_log(rng: np.random.Generator, n: int = 400, m: int = 3, eps: float = 0.3):
    """Contexts with true mean quality mu and per-model cost; the router's estimate is mu plus a
    bias; the logging policy is epsilon-greedy at lambda 1 on the estimate; the target is greedy at
    lambda 4. Outcomes are Bernoulli(mu). Returns the log, the target's picks and its true value."""
    mu = rng.uniform(0.2, 0.9, (n, m)) + np.array([0.0, 0.05, 0.1])
    mu = np.clip(mu, 0, 1)
    cost = np.array([0.01, 0.05, 0.1]) * rng.uniform(0.8, 1.2, (n, m))
    q_hat = np.clip(mu + rng.normal(0, 0.15, (n, m)) + 0.05, 0, 1)
    c_hat = cost * 1.1
    greedy = np.argmax(q_hat - 1.0 * c_hat, axis=1)
    explore = rng.random(n) < eps
    chosen = np.where(explore, rng.integers(0, m, n), greedy)
    prop = np.where(chosen == greedy, 1 - eps, 0.0) + eps / m
    rows = np.arange(n)
    quality = (rng.random(n) < mu[rows, chosen]).astype(float)
    target = np.argmax(q_hat - 4.0 * c_hat, axis=1)
    true = {
        "quality": mu[rows, target].mean(),
        "cost": cost[rows, target].mean(),
        "reward": (mu[rows, target] - 4.0 * cost[rows, target]).mean(),
    }
    return chosen, prop, quality, cost[rows, chosen], target, q_hat, c_hat, true


def test_intervals_cover_the_true_value_of_another_tradeoff() -> None:
    rng = np.random.default_rng(13)
    hits = {e: {k: 0 for k in ("quality", "cost", "reward")} for e in ("ips", "snips", "dr")}
    for _ in range(100):
        chosen, prop, q, c, target, q_hat, c_hat, true = _synthetic_log(rng)
        assert (target != np.argmax(q_hat - c_hat, axis=1)).mean() > 0.2  # a different policy
        res = offpolicy_estimate(chosen, prop, q, c, target, q_hat, c_hat, tradeoff=4.0)
        assert not res.warnings
        for e, d in res.estimates.items():
            for k, iv in d.items():
                hits[e][k] += iv.covers(true[k])
    for e, d in hits.items():
        for k, h in d.items():
            assert h >= 90, (e, k, hits)
    # the doubly robust interval is narrower than ips when the reward model is decent
    last = res.estimates
    assert last["dr"]["reward"].se < last["ips"]["reward"].se


def test_read_log_accepts_trace_column_names_and_drops_rows_without_outcome(tmp_path: Path) -> None:
    import pandas as pd

    df = pd.DataFrame(
        {
            "prompt": ["p1", "p2", "p3"],
            "model": ["a", "b", "a"],
            "propensity": [0.5, 0.5, None],
            "outcome": [1.0, None, 0.0],
            "cost_usd": [0.1, 0.2, 0.3],
        }
    )
    p = write_log(df, tmp_path / "log.jsonl")
    got = read_log(p)
    assert list(got["quality"]) == [1.0] and list(got["cost"]) == [0.1]
    with pytest.raises(ValueError, match="missing column"):
        write_log(df.drop(columns=["propensity"]), tmp_path / "bad.parquet")
        read_log(tmp_path / "bad.parquet")


def test_cli_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "syn.parquet"
    make_synthetic_table(300, seed=0, binary=True).df.to_parquet(data)
    rpath = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--router", "knn", "--out", str(rpath)])
    assert res.exit_code == 0, res.output
    log, out = tmp_path / "log.parquet", tmp_path / "whatif.json"
    args = ["whatif", "--log", str(log), "--router", str(rpath), "--tradeoff", "0", "--out", str(out)]
    res = CliRunner().invoke(
        app, [*args, "--from-table", str(data), "--log-tradeoff", "1e9", "--epsilon", "0.5", "--seed", "1"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["headline"] == "dr" and doc["n"] == 300
    assert set(doc["estimates"]) == {"ips", "snips", "dr"}
    for e in ("ips", "snips", "dr"):
        iv = doc["estimates"][e]["quality"]
        assert iv["lo"] <= iv["value"] <= iv["hi"]
    assert (
        doc["estimates"]["dr"]["reward"]["lo"]
        <= doc["true"]["reward"]
        <= doc["estimates"]["dr"]["reward"]["hi"]
    )
    logged = read_log(log)
    assert len(logged) == 300 and logged["propensity"].between(0, 1).all()
    # the library on the written log gives the same numbers as the CLI
    from llmroute.router import Router

    lib = whatif(logged, Router.load(rpath), 0.0)
    assert lib.estimates["ips"]["reward"].value == pytest.approx(doc["estimates"]["ips"]["reward"]["value"])
    # the existing log, another estimator, no --from-table
    res = CliRunner().invoke(app, [*args[:-2], "--estimator", "snips"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("snips on 300 logged requests")
    bad = CliRunner().invoke(app, [*args[:-2], "--estimator", "magic"])
    assert bad.exit_code != 0 and "choose one of" in bad.output
