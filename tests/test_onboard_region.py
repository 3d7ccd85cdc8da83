"""Onboarding with a per-region offset whose prior is measured on the known models
(`add_model(method="region")`, llmroute.estimators.profiled_region; docs/onboarding-notes.md
"A per-region offset with the known models' prior")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llmroute.cli import app
from llmroute.data.table import RoutingTable
from llmroute.estimators.profiled import fit_profile
from llmroute.estimators.profiled_region import region_stats, region_tau2
from llmroute.estimators.profiled_task import TaskModel, task_offsets
from llmroute.router import Router
from onboard_fixtures import assert_specialist_add, base, draw_profile, router, tables  # noqa: F401 (pytest fixtures)

NEW = "math-7b"  # the synthetic specialist: best on arithmetic by >= 0.1, far worse elsewhere
TASKS = TaskModel(tasks=["t0", "t1", "t2"], coef=np.zeros((3, 16)), intercept=np.zeros(3))


def _world(n: int, seed: int, spread: float) -> dict:
    """n prompts in 3 tasks, 5 known models whose estimates carry task offsets of sd `spread`
    (0: they never deviate by task beyond their global level), their grades = estimates + the
    prompt's luck + noise, and a new model = the known models' average + a task offset (+0.15 /
    -0.15 / 0) + the same luck + noise."""
    rng = np.random.default_rng(seed)
    d, m, T = 16, 5, 3
    centres = np.random.default_rng(99).standard_normal((T, d)) * 2.0
    task = rng.permutation(np.arange(n) % T)
    E = centres[task] + rng.standard_normal((n, d))
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    a = np.random.default_rng(7).standard_normal((m, T)) * spread
    a -= a.mean(axis=1, keepdims=True)
    common = 0.5 + 0.1 * rng.standard_normal((n, 1))
    P = np.clip(common + 0.1 * rng.standard_normal((n, m)) + a[:, task].T, 0, 1)
    u = 0.2 * rng.standard_normal(n)
    known = P + u[:, None] + 0.05 * rng.standard_normal((n, m))
    y = P.mean(axis=1) + np.array([0.15, -0.15, 0.0])[task] + u + 0.05 * rng.standard_normal(n)
    return {"E": E, "P": P, "known": known, "y": y, "M": np.eye(T)[task]}


def _fit(spread: float, method: str, with_truth: bool = True):
    truth, prof = _world(3000, 1, spread), _world(150, 2, spread)
    stats = region_stats(truth["known"], truth["P"], truth["M"]) if with_truth else None
    return fit_profile(
        prof["P"],
        prof["E"],
        prof["y"],
        z=0.0,
        known=prof["known"],
        method=method,
        task_model=TASKS,
        task_member=prof["M"],
        region_prior=stats,
    )


def test_a_region_offset_moves_only_as_far_as_known_models_regional_offsets_do() -> None:
    # the same kind of profile (the new model +0.15 / -0.15 on two tasks beyond the combination)
    # in a world where no known model deviates by task: the offsets are shrunk to 0 ...
    flat, flat_task = _fit(0.0, "region"), _fit(0.0, "task")
    assert flat_task.task_delta is not None and flat_task.task_delta[0] > 0.1  # the data have one
    assert flat.task_delta is not None and flat.task_var is not None and flat.region
    assert np.all(np.abs(flat.task_delta) < 0.01) and np.all(flat.task_var < 1e-4)
    # ... and where known models do deviate by task, the offsets are kept (as unshrunk as the
    # task method's, which the residuals measure here to ~0.01)
    wide, wide_task = _fit(0.15, "region"), _fit(0.15, "task")
    assert wide.task_delta is not None and wide_task.task_delta is not None
    assert wide.task_delta[0] > 0.03 and wide.task_delta[1] < -0.03
    assert np.allclose(wide.task_delta, wide_task.task_delta, atol=0.01)


def test_without_truth_rows_the_profile_rows_give_the_prior() -> None:
    # the known models' grades on the profile prompts themselves: a noisier prior, same ordering
    wide = _fit(0.15, "region", with_truth=False)
    assert wide.task_delta is not None and wide.task_delta[0] > 0.03 and wide.task_delta[1] < -0.03


def test_region_tau2_is_the_known_models_regional_spread_net_of_sampling_noise() -> None:
    rng = np.random.default_rng(0)
    m, T, per = 6, 4, 25
    task = np.repeat(np.arange(T), per)
    P = 0.5 + 0.1 * rng.standard_normal((len(task), m))
    W = (1.0 - np.eye(m)) / (m - 1)  # each known model re-onboarded as the others' average
    B = np.zeros(m)
    M = np.eye(T)[task]
    # no regional offsets, noisy grades (sd 0.4, 25 rows a region: sampling variance ~0.0064 per
    # regional mean): the prior variance is ~0, not the noise
    G0 = P + 0.4 * rng.standard_normal(P.shape)
    stats0 = region_stats(G0, P, M)
    assert stats0 is not None
    assert np.all(region_tau2(stats0, W, B) < 0.002)
    # planted regional offsets of sd 0.2 (exactly, over models x regions): tau2 near 0.04
    a = rng.standard_normal((m, T))
    a = (a - a.mean(axis=1, keepdims=True)) / np.sqrt(np.mean((a - a.mean(axis=1, keepdims=True)) ** 2)) * 0.2
    stats1 = region_stats(G0 + a[:, task].T, P, M)
    assert stats1 is not None
    assert np.mean(region_tau2(stats1, W, B)) == pytest.approx(0.04, rel=0.35)
    # a known model without any grade (removed from the router): the others' rows still count
    G1 = G0 + a[:, task].T
    G1[:, 0] = np.nan
    B1 = B.copy()
    B1[0] = np.nan  # (never re-onboarded without grades)
    stats2 = region_stats(G1, P, M)
    assert stats2 is not None and np.all(stats2.n == per)
    assert np.mean(region_tau2(stats2, W, B1)) == pytest.approx(0.04, rel=0.4)
    # no known model re-onboarded: no prior spread
    assert np.all(region_tau2(stats1, W, np.full(m, np.nan)) == 0.0)


def test_task_offsets_with_a_known_prior_variance() -> None:
    rng = np.random.default_rng(1)
    task = np.repeat(np.arange(3), 30)
    r = np.array([0.2, -0.2, 0.0])[task] + 0.05 * rng.standard_normal(len(task))
    M = np.eye(4)[task]  # a fourth task without rows
    rbar = np.array([r[task == t].mean() for t in range(3)])
    d0, v0, _ = task_offsets(r, M, tau2=np.zeros(4))
    assert np.all(d0 == 0.0) and np.all(v0 == 0.0)
    d1, v1, _ = task_offsets(r, M, tau2=np.full(4, 1e6))
    assert np.allclose(d1[:3], rbar, atol=1e-6) and d1[3] == 0.0 and v1[3] == 1e6
    d2, _, _ = task_offsets(r, M, tau2=np.full(4, 0.01))
    assert np.all(np.abs(d2[:3]) < np.abs(rbar)) and np.all(np.sign(d2[:3]) == np.sign(rbar))


# ---- through the router ------------------------------------------------------------------------------
def _profile_with_known(train: RoutingTable, k: int, seed: int = 0) -> RoutingTable:
    """k prompts of `train`, every model's rows (as `llmroute profile --models new,known` writes)."""
    ids = np.random.default_rng(seed).choice(train.prompt_ids, k, replace=False).tolist()
    return train.subset(ids)


def _unlabelled(table: RoutingTable) -> RoutingTable:
    df = table.df.copy()
    df["task"] = ""
    return RoutingTable(df, source=table.source, prices=table.prices)


def test_add_leaves_known_estimates_unchanged_and_saves_its_regions(
    router: Router, tables, tmp_path: Path
) -> None:
    train, test = tables
    q0, c0 = router.estimate(test.prompts)
    summary = router.add_model(NEW, _profile_with_known(train, 80), method="region", reference=train)
    assert summary["method"] == "region"
    est = router.estimator
    assert est.regions_ is not None and est.tasks_ is None
    assert sorted(est.regions_.tasks) == ["arithmetic", "code", "geography", "poetry"]
    assert est.region_stats_ is not None and est.region_stats_.mean.shape == (4, 6)
    fit = est.profiles_[-1]
    assert fit.region and fit.task_delta is not None
    q1, c1 = router.estimate(test.prompts)
    assert np.array_equal(q1[:, :3], q0) and np.array_equal(c1[:, :3], c0)
    topics = np.array(test.tasks)
    assert q1[topics == "arithmetic", 3].mean() > q1[topics != "arithmetic", 3].mean() + 0.1
    # saved and loaded: the same estimates; a later add reuses the regions and their statistics
    loaded = Router.load(router.save(tmp_path / "r.safetensors"))
    assert loaded.estimator.regions_ is not None and loaded.estimator.region_stats_ is not None
    assert loaded.estimator.profiles_[-1].region
    assert np.array_equal(loaded.estimate(test.prompts)[0], q1)
    loaded.add_model(
        "clone", _profile_with_known(train, 60, seed=1), profile_model="big-70b", method="region"
    )
    assert np.array_equal(loaded.estimate(test.prompts)[0][:, :4], q1)
    loaded.remove_model(NEW)
    loaded.remove_model("clone")
    assert np.array_equal(loaded.estimate(test.prompts)[0], q0)


def test_without_labels_the_regions_are_embedding_clusters(router: Router, tables) -> None:
    train, test = tables
    q0 = router.estimate(test.prompts)[0]
    router.add_model(
        NEW, _unlabelled(_profile_with_known(train, 80)), method="region", reference=_unlabelled(train)
    )
    regions = router.estimator.regions_
    assert regions is not None and all(t.startswith("c") for t in regions.tasks) and len(regions.tasks) >= 2
    q1 = router.estimate(test.prompts)[0]
    assert np.array_equal(q1[:, :3], q0) and np.isfinite(q1).all()


def test_add_changes_no_decision_where_the_new_model_is_never_best(router: Router, tables) -> None:
    train, test = tables
    prof = _profile_with_known(train, 80)
    assert_specialist_add(
        router, test, NEW, lambda: router.add_model(NEW, prof, method="region", reference=train), 0.5
    )


def test_cli_models_add_region(base: Router, tables, tmp_path: Path) -> None:
    train, test = tables
    router_file = base.save(tmp_path / "r.safetensors")
    prof, train_file = tmp_path / "profile.parquet", tmp_path / "train.parquet"
    draw_profile(train, NEW, 60).df.to_parquet(prof)  # the new model's rows only, labelled
    train.df.to_parquet(train_file)
    out = tmp_path / "r2.safetensors"
    cmd = ["models", "add", NEW, "--profile", str(prof), "--router", str(router_file), "--out", str(out)]
    res = CliRunner().invoke(app, [*cmd, "--method", "region", "--reference", str(train_file)])
    assert res.exit_code == 0, res.output
    added = json.loads(res.output)["added"]
    assert added["method"] == "region" and added["paired_rows"] == 60
    r2 = Router.load(out)
    assert r2.models[-1] == NEW and r2.estimator.region_stats_ is not None
    assert r2.estimator.profiles_[-1].region
    assert np.array_equal(r2.estimate(test.prompts)[0][:, :3], base.estimate(test.prompts)[0])
