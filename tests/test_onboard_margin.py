"""The "margin" onboarding method: a margin on the decision against the best known model, with
z calibrated by re-onboarding the router's own known models (llmroute.estimators.profiled)."""

from __future__ import annotations

import numpy as np

from llmroute.estimators.profiled import (
    Z_GRID,
    ProfiledEstimator,
    ProfileFit,
    calibrate_z,
    fit_profile,
    smallest_safe_z,
)
from llmroute.router import Router
from onboard_fixtures import KNOWN, assert_specialist_add, base, keep_models, tables  # noqa: F401 (pytest fixtures)

NEW = "math-7b"  # the synthetic specialist: best on arithmetic by >= 0.1, far worse elsewhere


def _fit(diff_var: list[float], z: float) -> ProfileFit:
    """A copy of known model 0 (w = e_0, no residual, no weight uncertainty) with the given
    difference variances against each known model."""
    return ProfileFit(
        w=np.array([1.0, 0.0]),
        b=0.0,
        shift=0.0,
        emb=np.zeros((0, 2), dtype=np.float32),
        resid=np.zeros(0),
        beta=0.0,
        kappa=0.0,
        closest=0,
        n_rows=50,
        loo_rmse=0.1,
        center=np.array([0.5, 0.5]),
        wcov=np.zeros((2, 2)),
        level_var=0.01,
        z=z,
        diff_var=np.array(diff_var),
    )


def test_the_margin_is_the_sd_of_the_difference_from_the_best_known_model() -> None:
    """At each prompt the column is lowered by z sds of the difference from the known model with
    the highest estimate there (not the lowest, not the level's sd): a copy of model 0 is 0.01
    below it where model 0 leads (its difference is known to 0.01) and 0.2 below where model 1
    leads; with z = 0 nothing is lowered."""
    base_q = np.array([[0.8, 0.3], [0.7, 0.6], [0.3, 0.8], [0.4, 0.9]])
    emb = np.zeros((4, 2))
    fit = _fit([1e-4, 0.04], z=1.0)
    mean, sd = fit.predict_parts(base_q, emb)
    assert np.allclose(mean, base_q[:, 0])
    assert np.allclose(sd, [0.01, 0.01, 0.2, 0.2])
    assert np.allclose(fit.predict(base_q, emb), base_q[:, 0] - [0.01, 0.01, 0.2, 0.2])
    assert np.allclose(_fit([1e-4, 0.04], z=0.0).predict(base_q, emb), base_q[:, 0])
    # the new model wins no prompt from a model it only ties: with z > 0 it stays below
    q = np.column_stack([base_q, fit.predict(base_q, emb)])
    assert (q.argmax(axis=1) < 2).all()


def test_a_difference_measured_on_shared_luck_is_narrower_than_the_level() -> None:
    """A new model that succeeds and fails on the same prompts as known model 0 (its grades =
    model 0's + 0.05 + small noise), profiled on 30 prompts beside 8 known models (too few rows
    for the control variate to take all of model 0's luck out of the level): its difference
    from model 0 is known better than its level; against the other known models (independent
    luck) the margin keeps the level's variance, and it is never wider than the level's."""
    rng = np.random.default_rng(4)
    k, m = 30, 8
    P = np.clip(0.5 + 0.15 * rng.standard_normal((k, m)), 0, 1)
    known = (rng.random((k, m)) < P).astype(float)
    y = np.clip(known[:, 0] + 0.05 + 0.05 * rng.standard_normal(k), 0, 1)
    E = rng.standard_normal((k, 8))
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    fit = fit_profile(P, E, y, known=known, method="margin")
    assert fit.diff_var is not None and fit.diff_var.shape == (m,)
    assert fit.diff_var[0] < 0.5 * fit.level_var
    assert np.allclose(fit.diff_var[1:], fit.level_var)
    # "paired" is the same fit with the level's sd everywhere
    paired = fit_profile(P, E, y, known=known, method="paired")
    assert paired.diff_var is None and np.allclose(paired.w, fit.w)
    at0 = P[:, 0] >= P.max(axis=1)
    assert (fit.predict_parts(P, E)[1][at0] < paired.predict_parts(P, E)[1][at0]).all()


def test_calibration_picks_the_smallest_z_that_hurts_no_simulated_addition() -> None:
    """Known models with flat costs and close qualities: re-onboarding them from 25-prompt
    profiles at z = 0 hurts a simulated router; the calibrated z is the first of the grid under
    which none is hurt by more than the bar, and the one before it hurts one."""
    rng = np.random.default_rng(3)
    n, m = 600, 4
    task = rng.integers(0, 3, n)
    mu = np.array([[0.55, 0.5, 0.45, 0.6], [0.5, 0.6, 0.5, 0.45], [0.45, 0.5, 0.6, 0.55]])[task]
    P = np.clip(mu + 0.03 * rng.standard_normal((n, m)), 0, 1)
    Q = (rng.random((n, m)) < mu).astype(float)
    C = np.ones((n, m))
    E = np.eye(3)[task] + 0.1 * rng.standard_normal((n, 3))
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    z, gains = calibrate_z(P, Q, P, C, C, E, 25, bar=0.005, seed=0)
    assert len(gains) == m * 3  # every known model, three draws
    i = Z_GRID.index(z)
    assert i > 0, "z = 0 should hurt on this table"
    fixable = [g for g in gains.values() if g[-1] >= -0.005]
    assert all(g[i] >= -0.005 for g in fixable)
    assert any(g[i - 1] < -0.005 for g in fixable)


def test_a_hurt_that_no_margin_removes_does_not_set_z() -> None:
    """The first z at which every simulated addition is within the bar, ignoring additions that
    still hurt at the largest z; every fixable addition must be safe at the same z; none fixable hurts: z = 0."""
    zs = (0.0, 1.0, 2.0)
    fixable = [-0.02, -0.001, 0.0]
    assert smallest_safe_z([fixable, [-0.03, -0.02, -0.01]], zs, 0.005) == 1.0
    assert smallest_safe_z([[-0.006, 0.0, 0.0], [-0.004, -0.006, -0.001]], zs, 0.005) == 2.0
    assert smallest_safe_z([[0.01, 0.0, 0.0], [-0.03, -0.02, -0.01]], zs, 0.005) == 0.0


def test_calibrated_router_adds_with_its_z_and_keeps_other_decisions(base: Router, tables, tmp_path) -> None:
    """calibrate_margin stores z per profile size; add_model(method="margin") uses the nearest
    size's z; the specialist still wins arithmetic, and no decision changes elsewhere."""
    from llmroute.onboard import calibrate_margin, margin_z

    train, test = tables
    router = Router.load(base.save(tmp_path / "r.safetensors"))
    zs = calibrate_margin(router, keep_models(train, KNOWN), ks=(25, 50))
    assert set(zs) == {"25", "50"} and all(z in Z_GRID for z in zs.values())
    assert margin_z(router, 30) == zs["25"] and margin_z(router, 80) == zs["50"]
    ids = np.random.default_rng(0).choice(train.prompt_ids, 80, replace=False).tolist()
    prof = train.subset(ids)
    summary = assert_specialist_add(
        router, test, NEW, lambda: router.add_model(NEW, prof, method="margin"), 0.6
    )
    assert summary["z"] == zs["50"] and summary["paired_rows"] == 80
    # saved and loaded: the difference variances and z travel with the router
    loaded = Router.load(router.save(tmp_path / "r2.safetensors"))
    assert isinstance(loaded.estimator, ProfiledEstimator)
    assert np.array_equal(loaded.estimate(test.prompts)[0], router.estimate(test.prompts)[0])
    assert loaded.estimator.profiles_[0].diff_var is not None


def test_cli_margin_calibrates_on_the_reference_once(base: Router, tables, tmp_path) -> None:
    """`llmroute models add --method margin --reference TRAIN`: an uncalibrated router is
    calibrated on the training table, adds with the calibrated z, and keeps it when saved."""
    import json

    from typer.testing import CliRunner

    from llmroute.cli import app
    from llmroute.onboard import margin_z

    train, _ = tables
    router_file = base.save(tmp_path / "r.safetensors")
    ids = np.random.default_rng(1).choice(train.prompt_ids, 50, replace=False).tolist()
    prof, ref, out = tmp_path / "p.parquet", tmp_path / "train.parquet", tmp_path / "r2.safetensors"
    keep_models(train.subset(ids), {NEW}).df.to_parquet(prof)
    train.df.to_parquet(ref)
    args = ["models", "add", NEW, "--profile", str(prof), "--router", str(router_file), "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--method", "margin", "--reference", str(ref)])
    assert res.exit_code == 0, res.output
    added = json.loads(res.output)["added"]
    saved = Router.load(out)
    assert set(saved.info["margin_z"]) == {"25", "50", "100", "200"}
    assert added["method"] == "margin" and added["paired_rows"] == 50
    assert added["z"] == margin_z(saved, 50)
