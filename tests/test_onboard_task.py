"""Onboarding with a per-task offset (`add_model(method="task")`, llmroute.estimators.profiled_task)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llmroute.cli import app
from llmroute.data.table import RoutingTable
from llmroute.estimators.profiled import fit_profile
from llmroute.estimators.profiled_task import TaskModel, fit_task_model, task_offsets
from llmroute.router import Router
from onboard_fixtures import assert_specialist_add, base, draw_profile, router, tables  # noqa: F401 (pytest fixtures)

NEW = "math-7b"  # the synthetic specialist: best on arithmetic by >= 0.1, far worse elsewhere


# ---- a planted per-task offset ---------------------------------------------------------------------
def _planted(n: int, seed: int) -> dict:
    """n prompts in 3 tasks (embeddings clustered by task), 5 known models with estimates P, their
    grades = P + their luck u + noise, and a new model = equal weights of P + its task's offset
    (+0.12 / -0.12 / 0, mean 0 over the balanced tasks) + the same luck u + noise."""
    rng = np.random.default_rng(seed)
    d, m = 16, 5
    centres = rng.standard_normal((3, d)) * 2.0
    task = rng.permutation(np.arange(n) % 3)
    E = centres[task] + rng.standard_normal((n, d))
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    P = np.clip(0.5 + 0.15 * rng.standard_normal((n, m)), 0, 1)
    u = 0.2 * rng.standard_normal(n)  # the prompt's luck, shared by every model
    known = P + u[:, None] + 0.05 * rng.standard_normal((n, m))
    delta = np.array([0.12, -0.12, 0.0])
    y = P.mean(axis=1) + delta[task] + u + 0.05 * rng.standard_normal(n)
    labels = [f"t{t}" for t in task]
    return {"E": E, "P": P, "known": known, "y": y, "task": task, "labels": labels, "delta": delta}


@pytest.fixture(scope="module")
def planted() -> tuple[dict, TaskModel]:
    p = _planted(1200, seed=0)
    tm = fit_task_model(p["E"], p["labels"])
    assert tm is not None
    return p, tm


def test_the_task_classifier_finds_the_tasks(planted) -> None:
    _, tm = planted
    q = _planted(300, seed=0)  # the same task centres (same seed), other prompts
    pr = tm.proba(q["E"])
    assert tm.tasks == ["t0", "t1", "t2"]
    assert np.allclose(pr.sum(axis=1), 1.0)
    assert (pr.argmax(axis=1) == q["task"]).mean() > 0.9
    # a labelled prompt is one-hot on its task whatever the classifier says
    mem = tm.membership(q["E"][:3], ["t2", "", "nope"])
    assert mem[0].tolist() == [0.0, 0.0, 1.0]
    assert np.allclose(mem[1:], pr[1:3])


def test_a_planted_per_task_offset_is_recovered_within_its_posterior_sd(planted) -> None:
    p, tm = planted
    prof = np.random.default_rng(1).choice(len(p["y"]), 150, replace=False)
    member = tm.membership(p["E"][prof], [p["labels"][i] for i in prof])
    fit = fit_profile(
        p["P"][prof],
        p["E"][prof],
        p["y"][prof],
        z=0.0,
        known=p["known"][prof],
        method="task",
        task_model=tm,
        task_member=member,
    )
    assert fit.task_delta is not None and fit.task_var is not None
    sd = np.sqrt(fit.task_var)
    # the offsets are relative to the fitted level, which absorbs their (here zero) mean
    assert np.all(np.abs(fit.task_delta - p["delta"]) <= 2.0 * sd), (fit.task_delta, sd)
    assert fit.task_delta[0] > 0.05 and fit.task_delta[1] < -0.05
    # the column follows the offsets on prompts the profile never saw (unlabelled: p(t | x))
    rest = np.setdiff1d(np.arange(len(p["y"])), prof)
    col = fit.predict(p["P"][rest], p["E"][rest])
    truth = p["P"][rest].mean(axis=1) + p["delta"][p["task"][rest]]
    paired = fit_profile(
        p["P"][prof], p["E"][prof], p["y"][prof], z=0.0, known=p["known"][prof], method="paired"
    )
    err_task = np.sqrt(np.mean((col - truth) ** 2))
    err_paired = np.sqrt(np.mean((paired.predict(p["P"][rest], p["E"][rest]) - truth) ** 2))
    # (the paired column's residual kernel follows clustered tasks too, less closely)
    assert err_task < min(err_paired, 0.3 * np.std(p["delta"][p["task"]]))


def test_z_lowers_by_the_sd_that_includes_the_offsets_uncertainty(planted) -> None:
    p, tm = planted
    prof = np.random.default_rng(2).choice(len(p["y"]), 60, replace=False)
    args = (p["P"][prof], p["E"][prof], p["y"][prof])
    member = tm.membership(p["E"][prof], [p["labels"][i] for i in prof])
    kw = {"known": p["known"][prof], "method": "task", "task_model": tm, "task_member": member}
    f0, f1 = fit_profile(*args, z=0.0, **kw), fit_profile(*args, z=1.0, **kw)
    mean, sd = f1.predict_parts(p["P"][:50], p["E"][:50])
    assert np.allclose(f0.predict(p["P"][:50], p["E"][:50]), mean)
    assert np.allclose(f1.predict(p["P"][:50], p["E"][:50]), mean - sd)
    # the offsets' variance is part of the sd: without it the sd is smaller
    f1.task_var = np.zeros_like(f1.task_var)
    f1.task_delta = np.zeros_like(f1.task_delta)
    assert np.all(f1.predict_parts(p["P"][:50], p["E"][:50])[1] < sd)


def test_hierarchical_bayes_offsets() -> None:
    rng = np.random.default_rng(3)
    # four tasks with offsets far apart and one without rows: the between-task variance is
    # clearly positive; the rowless task keeps the prior (0, tau2); the means are shrunk toward 0
    true = np.array([0.3, -0.3, 0.1, -0.1, 0.0])
    task = np.repeat(np.arange(4), 40)
    r = true[task] + 0.1 * rng.standard_normal(len(task))
    M = np.eye(5)[task]
    delta, var, tau2 = task_offsets(r, M)
    assert tau2 > 0.01
    assert delta[4] == 0.0 and var[4] == pytest.approx(tau2)
    rbar = np.array([r[task == t].mean() for t in range(4)])
    assert np.all(np.abs(delta[:4]) < np.abs(rbar)) and np.all(np.sign(delta[:4]) == np.sign(true[:4]))
    assert np.all(var[:4] < 0.1**2 / 40 * 1.5)
    # pure noise around 0: a small between-task variance, each mean shrunk toward 0
    r0 = 0.1 * rng.standard_normal(160)
    d0, _, t0 = task_offsets(r0, M)
    rbar0 = np.array([r0[task == t].mean() for t in range(4)])
    assert t0 < 0.1 * tau2 and np.all(np.abs(d0[:4]) <= np.abs(rbar0)) and np.all(np.abs(d0) < 0.035)


def test_without_two_labelled_tasks_there_is_no_task_model() -> None:
    E = np.random.default_rng(0).standard_normal((20, 4))
    assert fit_task_model(E, [""] * 20) is None
    assert fit_task_model(E, ["a"] * 19 + ["b"]) is None  # "b" has one prompt only


# ---- through the router ------------------------------------------------------------------------------
def _profile_with_known(train: RoutingTable, k: int, seed: int = 0) -> RoutingTable:
    """k prompts of `train`, every model's rows (as `llmroute profile --models new,known` writes)."""
    ids = np.random.default_rng(seed).choice(train.prompt_ids, k, replace=False).tolist()
    return train.subset(ids)


def _unlabelled(table: RoutingTable) -> RoutingTable:
    df = table.df.copy()
    df["task"] = ""
    return RoutingTable(df, source=table.source, prices=table.prices)


def test_without_task_labels_it_is_the_paired_method_exactly(base: Router, tables, tmp_path: Path) -> None:
    train, test = tables
    prof = _unlabelled(_profile_with_known(train, 80))
    a = Router.load(base.save(tmp_path / "a.safetensors"))
    b = Router.load(base.save(tmp_path / "b.safetensors"))
    a.add_model(NEW, prof, method="paired")
    summary = b.add_model(NEW, prof, method="task", reference=_unlabelled(train))
    assert summary["method"] == "task"
    assert b.estimator.tasks_ is None
    assert np.array_equal(a.estimate(test.prompts)[0], b.estimate(test.prompts)[0])


def test_add_leaves_known_estimates_unchanged_and_follows_the_task(
    router: Router, tables, tmp_path: Path
) -> None:
    train, test = tables
    q0, c0 = router.estimate(test.prompts)
    router.add_model(NEW, _profile_with_known(train, 80), method="task", reference=train)
    assert router.estimator.tasks_ is not None
    assert sorted(router.estimator.tasks_.tasks) == ["arithmetic", "code", "geography", "poetry"]
    q1, c1 = router.estimate(test.prompts)
    assert np.array_equal(q1[:, :3], q0) and np.array_equal(c1[:, :3], c0)
    topics = np.array(test.tasks)
    assert q1[topics == "arithmetic", 3].mean() > q1[topics != "arithmetic", 3].mean() + 0.1
    # saved and loaded: the same estimates; a later add reuses the task model (no reference)
    loaded = Router.load(router.save(tmp_path / "r.safetensors"))
    assert loaded.estimator.tasks_ is not None
    assert np.array_equal(loaded.estimate(test.prompts)[0], q1)
    loaded.add_model("clone", _profile_with_known(train, 60, seed=1), profile_model="big-70b", method="task")
    assert np.array_equal(loaded.estimate(test.prompts)[0][:, :4], q1)
    loaded.remove_model(NEW)
    loaded.remove_model("clone")
    assert np.array_equal(loaded.estimate(test.prompts)[0], q0)


def test_add_changes_no_decision_where_the_new_model_is_never_best(router: Router, tables) -> None:
    train, test = tables
    prof = _profile_with_known(train, 80)
    assert_specialist_add(
        router, test, NEW, lambda: router.add_model(NEW, prof, method="task", reference=train), 0.5
    )


def test_cli_models_add_task(base: Router, tables, tmp_path: Path) -> None:
    train, test = tables
    router_file = base.save(tmp_path / "r.safetensors")
    prof, train_file = tmp_path / "profile.parquet", tmp_path / "train.parquet"
    draw_profile(train, NEW, 60).df.to_parquet(prof)  # the new model's rows only, labelled
    train.df.to_parquet(train_file)
    out = tmp_path / "r2.safetensors"
    cmd = ["models", "add", NEW, "--profile", str(prof), "--router", str(router_file), "--out", str(out)]
    res = CliRunner().invoke(app, [*cmd, "--method", "task", "--reference", str(train_file)])
    assert res.exit_code == 0, res.output
    added = json.loads(res.output)["added"]
    assert added["method"] == "task" and added["paired_rows"] == 60
    r2 = Router.load(out)
    assert r2.models[-1] == NEW and r2.estimator.tasks_ is not None
    q2 = r2.estimate(test.prompts)[0]
    assert np.array_equal(q2[:, :3], base.estimate(test.prompts)[0])
    topics = np.array(test.tasks)
    assert q2[topics == "arithmetic", 3].mean() > q2[topics != "arithmetic", 3].mean()
