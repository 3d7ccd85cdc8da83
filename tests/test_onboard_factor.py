"""Onboarding by a factor model of the training table (`add_model(method="factor")`,
llmroute.estimators.profiled_factor)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llmroute.cli import app
from llmroute.estimators.profiled_factor import FactorModel, fit_factor_model, fit_factor_profile
from llmroute.router import Router
from onboard_fixtures import assert_specialist_add, base, draw_profile, router, tables  # noqa: F401 (pytest fixtures)

NEW = "math-7b"  # the synthetic specialist: best on arithmetic by >= 0.1, far worse elsewhere


# ---- a planted factor model ------------------------------------------------------------------------
def _planted(n: int, m: int, r: int, seed: int) -> dict[str, np.ndarray]:
    """Prompts with embeddings E (n, d), factors F = E Wt + u, and m + 1 models whose grades are
    b_j + a_j . F + noise; the last model is the "new" one."""
    rng = np.random.default_rng(seed)
    d = 24
    E = rng.standard_normal((n, d))
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    Wt = rng.standard_normal((d, r)) * 2.0
    F = E @ Wt + 0.3 * rng.standard_normal((n, r))
    A = rng.standard_normal((m + 1, r)) * 0.4
    b = 0.5 + 0.1 * rng.standard_normal(m + 1)
    Y = b + F @ A.T + 0.1 * rng.standard_normal((n, m + 1))
    return {"E": E, "F": F, "Wt": Wt, "A": A, "b": b, "Y": Y}


@pytest.fixture(scope="module")
def planted() -> tuple[dict[str, np.ndarray], FactorModel]:
    p = _planted(3000, 8, 2, seed=0)
    fm = fit_factor_model(p["Y"][:, :8], np.zeros((3000, 8)), p["E"])
    return p, fm


def test_the_rank_is_found_by_simulated_onboarding_of_the_known_models(planted) -> None:
    """Rank 2 planted: the simulated onboarding errs more at rank 1 than at 2, and 2 is kept."""
    _, fm = planted
    assert fm.rank == 2
    assert fm.rank_errors[1] > fm.rank_errors[2]


def test_a_new_models_vector_is_recovered_within_its_posterior_sd(planted) -> None:
    p, fm = planted
    rng = np.random.default_rng(1)
    prof = rng.choice(3000, 150, replace=False)
    fit = fit_factor_profile(
        fm, np.zeros((150, 8)), p["E"][prof], p["Y"][prof, 8], known=p["Y"][prof, :8], z=0.0, anchor=False
    )
    # the true vector in the fitted basis: least squares of the new model's expected column
    # (from the prompts' predicted factors) on [g(x), 1] over all prompts
    g = fm.factors(np.zeros((3000, 8)), p["E"])
    Z = np.hstack([g, np.ones((3000, 1))])
    true_col = p["b"][8] + (p["E"] @ p["Wt"]) @ p["A"][8]
    theta_true = np.linalg.lstsq(Z, true_col, rcond=None)[0]
    sd = np.sqrt(np.diag(fit.cov))
    assert np.all(np.abs(fit.theta - theta_true) <= 2.5 * sd), (fit.theta, theta_true, sd)
    # and the column is close where it matters: error well below the spread of the true column
    col = fit.predict(np.zeros((3000, 8)), p["E"])
    assert np.sqrt(np.mean((col - true_col) ** 2)) < 0.3 * np.std(true_col)


def test_the_known_models_grades_sharpen_the_fit_and_z_lowers_by_the_sd(planted) -> None:
    """With the known models' grades on the profile prompts (their shared luck u) the vector is
    estimated more tightly than from the embeddings alone; z = 1 lowers every prompt by its sd."""
    p, fm = planted
    prof = np.random.default_rng(2).choice(3000, 100, replace=False)
    args = (fm, np.zeros((100, 8)), p["E"][prof], p["Y"][prof, 8])
    paired = fit_factor_profile(*args, known=p["Y"][prof, :8], z=0.0)
    alone = fit_factor_profile(*args, z=0.0)
    assert np.trace(paired.cov) < np.trace(alone.cov)
    lower = fit_factor_profile(*args, known=p["Y"][prof, :8], z=1.0)
    Pz, E = np.zeros((500, 8)), p["E"][:500]
    g = fm.factors(Pz, E)
    Z = np.hstack([g, np.ones((500, 1))])
    sd = np.sqrt(np.einsum("ij,jk,ik->i", Z, paired.cov, Z))
    assert np.allclose(paired.predict(Pz, E) - lower.predict(Pz, E), sd)
    assert np.all(sd > 0)


def test_bad_inputs_say_what_to_do(planted) -> None:
    p, fm = planted
    with pytest.raises(ValueError, match="3 known models"):
        fit_factor_model(p["Y"][:, :2], np.zeros((3000, 2)), p["E"])
    with pytest.raises(ValueError, match="finite"):
        fit_factor_profile(fm, np.zeros((2, 8)), p["E"][:2], np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="known grades have shape"):
        fit_factor_profile(fm, np.zeros((2, 8)), p["E"][:2], np.array([0.5, 0.4]), known=np.zeros((2, 3)))


# ---- through the router ------------------------------------------------------------------------------
def test_add_leaves_known_estimates_unchanged_and_round_trips(router: Router, tables, tmp_path: Path) -> None:
    train, test = tables
    q0, c0 = router.estimate(test.prompts)
    summary = router.add_model(NEW, draw_profile(train, NEW, 80), method="factor", reference=train)
    assert summary["method"] == "factor" and summary["profile_rows"] == 80
    q1, c1 = router.estimate(test.prompts)
    assert np.array_equal(q1[:, :3], q0) and np.array_equal(c1[:, :3], c0)
    # the specialist's column follows its profile: higher on arithmetic
    topics = np.array(test.tasks)
    assert q1[topics == "arithmetic", 3].mean() > q1[topics != "arithmetic", 3].mean() + 0.1
    # saved and loaded: the same estimates; a second add reuses the factor model (no reference)
    loaded = Router.load(router.save(tmp_path / "r.safetensors"))
    assert np.array_equal(loaded.estimate(test.prompts)[0], q1)
    loaded.add_model("clone", draw_profile(train, "big-70b", 60), profile_model="big-70b", method="factor")
    assert np.array_equal(loaded.estimate(test.prompts)[0][:, :4], q1)
    loaded.remove_model(NEW)
    loaded.remove_model("clone")
    assert np.array_equal(loaded.estimate(test.prompts)[0], q0)


def test_add_changes_no_decision_where_the_new_model_is_never_best(router: Router, tables) -> None:
    train, test = tables
    prof = draw_profile(train, NEW, 80)
    assert_specialist_add(
        router, test, NEW, lambda: router.add_model(NEW, prof, method="factor", reference=train), 0.5
    )


def test_the_first_factor_add_needs_the_training_table(router: Router, tables) -> None:
    train, _ = tables
    with pytest.raises(ValueError, match="--reference"):
        router.add_model(NEW, draw_profile(train, NEW, 50), method="factor")
    assert NEW not in router.models


def test_cli_models_add_factor(base: Router, tables, tmp_path: Path) -> None:
    train, test = tables
    router_file = base.save(tmp_path / "r.safetensors")
    prof, train_file = tmp_path / "profile.parquet", tmp_path / "train.parquet"
    draw_profile(train, NEW, 60).df.to_parquet(prof)
    train.df.to_parquet(train_file)
    out = tmp_path / "r2.safetensors"
    cmd = ["models", "add", NEW, "--profile", str(prof), "--router", str(router_file), "--out", str(out)]
    res = CliRunner().invoke(app, [*cmd, "--method", "factor"])
    assert res.exit_code == 2 and "--reference" in res.output
    res = CliRunner().invoke(app, [*cmd, "--method", "factor", "--reference", str(train_file)])
    assert res.exit_code == 0, res.output
    added = json.loads(res.output)["added"]
    assert added["method"] == "factor" and added["paired_rows"] == 60
    r2 = Router.load(out)
    assert r2.models[-1] == NEW
    assert np.array_equal(r2.estimate(test.prompts)[0][:, :3], base.estimate(test.prompts)[0])


def test_posterior_factors_per_pattern_of_graded_known_models(planted) -> None:
    """Rows with some known grades missing get the posterior of the graded ones only (the
    batched gain per pattern equals the row-by-row one); rows with none keep g."""
    p, fm = planted
    g = fm.factors(np.zeros((6, 8)), p["E"][:6])
    known = p["Y"][:6, :8].copy()
    known[1, :3] = np.nan
    known[2, :] = np.nan
    F, C = fm.posterior_factors(g, known)
    assert np.array_equal(F[2], g[2]) and np.allclose(C[2], fm.Su)
    for i in (0, 1):
        o = np.isfinite(known[i])
        Fi, _ = fm.posterior_factors(g[i : i + 1], np.where(o, known[i], np.nan)[None, :])
        Ao = fm.A[o]
        M = Ao @ fm.Su @ Ao.T + np.diag(fm.s2[o])
        expected = g[i] + fm.Su @ Ao.T @ np.linalg.solve(M, known[i, o] - fm.b[o] - Ao @ g[i])
        assert np.allclose(F[i], expected) and np.allclose(Fi[0], expected)
    # fewer graded known models: a wider posterior
    assert np.trace(C[1]) > np.trace(C[0])


def test_an_anchored_column_is_the_known_average_plus_the_difference(planted) -> None:
    """anchor=True: a new model whose vector is the known models' mean vector gets exactly the
    known models' average estimate; a level 0.1 higher, that plus 0.1."""
    p, fm = planted
    prof = np.arange(100)
    fit = fit_factor_profile(fm, np.zeros((100, 8)), p["E"][prof], p["Y"][prof, 8], z=0.0, anchor=True)
    fit.resid = np.zeros(0)
    fit.theta = np.append(fm.A.mean(axis=0), fm.b.mean())
    P = np.random.default_rng(3).uniform(0, 1, (50, 8))
    assert np.allclose(fit.predict(P, p["E"][:50]), P.mean(axis=1))
    fit.theta[-1] += 0.1
    assert np.allclose(fit.predict(P, p["E"][:50]), P.mean(axis=1) + 0.1)


def test_a_combined_column_is_the_factor_prediction_when_the_estimates_are(planted) -> None:
    """combine=True: when the known models' estimates are exactly their factor predictions
    b_j + a_j . g(x), the weighted estimates give the new model's own factor prediction
    [g(x), 1] theta, for any theta (the weights' vectors make theta); and the lower bound is
    its posterior sd along the weights."""
    p, fm = planted
    prof = np.arange(100)
    E = p["E"][:50]
    g = fm.factors(np.zeros((50, 8)), E)
    Z = np.hstack([g, np.ones((50, 1))])
    P = Z @ np.hstack([fm.A, fm.b[:, None]]).T  # (50, 8): the known models' factor predictions
    fit = fit_factor_profile(
        fm, np.zeros((100, 8)), p["E"][prof], p["Y"][prof, 8], z=0.0, anchor=False, combine=True
    )
    fit.resid = np.zeros(0)
    for theta in (fit.theta, fit.theta + np.array([0.3, -0.2, 0.05])):
        fit.theta = theta
        assert np.allclose(fit.predict(P, E), Z @ theta)
    D = fit.design(g, P)[1]
    fit.z = 1.0
    sd = np.sqrt(np.einsum("ij,jk,ik->i", D, fit.cov, D))
    assert np.allclose(fit.predict(P, E), Z @ fit.theta - sd) and np.allclose(D, Z)
