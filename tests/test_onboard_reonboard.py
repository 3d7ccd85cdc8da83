"""Method "paired": the interval widens where the profile barely covers the prompt, measured by
re-onboarding the known models from the same profile prompts (`_reonboard`; docs/onboarding-notes.md
"Session 8"). The case it answers: a new model whose profile holds a few lucky rows of a task on
which the known models' relation differs from the rest (Yi-34B's 3 of 3 MBPP rows)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from llmroute.estimators.profiled import ProfileFit, fit_profile
from llmroute.router import Router
from onboard_fixtures import base, router, tables  # noqa: F401 (pytest fixtures)

NEW = "math-7b"  # the synthetic specialist of onboard_fixtures' tables


def _region_profile(seed: int):
    """A 40-prompt paired profile: 37 prompts of task a, 3 of task b. The known models' estimates
    are ordered differently on b (model 0 best on a, worst on b); the new model is the average
    known model + 0.15 on a and got all 3 b rows right although it is 0.2 below the average there.
    Returns (P, E, y, known) and the estimates and embeddings of 100 unseen prompts of a and of b."""
    rng = np.random.default_rng(seed)

    def est(n: int, task: str) -> np.ndarray:
        base_q = rng.uniform(0.5, 0.9, n) if task == "a" else rng.uniform(0.3, 0.6, n)
        off = np.array([0.1, 0.0, -0.05, -0.05]) if task == "a" else np.array([-0.25, 0.25, 0.05, -0.05])
        return np.clip(base_q[:, None] + off + 0.03 * rng.standard_normal((n, 4)), 0.0, 1.0)

    def emb(n: int, task: str) -> np.ndarray:
        centre = np.zeros(16)
        centre[0 if task == "a" else 1] = 1.0
        e = centre + 0.15 * rng.standard_normal((n, 16))
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    P = np.vstack([est(37, "a"), est(3, "b")])
    E = np.vstack([emb(37, "a"), emb(3, "b")])
    known = (rng.random(P.shape) < P).astype(float)
    y = np.concatenate(
        [(rng.random(37) < np.clip(P[:37].mean(axis=1) + 0.15, 0, 1)).astype(float), np.ones(3)]
    )
    return (P, E, y, known), (est(100, "a"), emb(100, "a")), (est(100, "b"), emb(100, "b"))


def _without_term(fit: ProfileFit) -> ProfileFit:
    return dataclasses.replace(fit, reon_w=None, reon_b=None)


def test_the_interval_widens_where_the_profile_barely_covers_the_prompt() -> None:
    """Over 8 draws: on task b (3 profile rows) the sd grows by more than 30%; on task a (37 rows)
    by less than a fifth (the re-onboarded known models' miss is counted only beyond its average
    over the profile); it never narrows; and the new model, lucky on b's rows, is put above the
    best known model on b's prompts less than half as often as without the term."""
    above, above_without = 0.0, 0.0
    for seed in range(8):
        (P, E, y, known), (Pa, Ea), (Pb, Eb) = _region_profile(seed)
        fit = fit_profile(P, E, y, known=known, method="paired")
        assert fit.reon_w is not None and fit.reon_b is not None and np.isfinite(fit.reon_b).all()
        bare = _without_term(fit)
        sd_a, sd_a0 = fit.predict_parts(Pa, Ea)[1], bare.predict_parts(Pa, Ea)[1]
        sd_b, sd_b0 = fit.predict_parts(Pb, Eb)[1], bare.predict_parts(Pb, Eb)[1]
        assert sd_b.mean() > 1.3 * sd_b0.mean()
        assert sd_a.mean() < 1.2 * sd_a0.mean()
        assert (sd_a >= sd_a0).all() and (sd_b >= sd_b0).all()
        # the means are the same fit's: only the interval changes
        assert np.array_equal(fit.predict_parts(Pb, Eb)[0], bare.predict_parts(Pb, Eb)[0])
        above += float(np.mean(fit.predict(Pb, Eb) > Pb.max(axis=1)))
        above_without += float(np.mean(bare.predict(Pb, Eb) > Pb.max(axis=1)))
    assert above_without > 1.0  # the case exists: without the term the lucky rows win b's prompts
    assert above < 0.5 * above_without


def test_no_known_grades_no_term() -> None:
    """Without the known models' grades (no pairing) and with method "ridge" nothing is re-onboarded;
    a known model with fewer than 10 graded profile rows is left out of the term (NaN intercept)."""
    (P, E, y, known), _, (Pb, Eb) = _region_profile(0)
    assert fit_profile(P, E, y, method="paired").reon_w is None
    assert fit_profile(P, E, y, known=known, method="ridge").reon_w is None
    known[5:, 2] = np.nan
    fit = fit_profile(P, E, y, known=known, method="paired")
    assert fit.reon_b is not None and np.isnan(fit.reon_b[2]) and np.isfinite(np.delete(fit.reon_b, 2)).all()
    assert np.isfinite(fit.predict(Pb, Eb)).all()


def test_saved_and_loaded_with_the_router(router: Router, tables, tmp_path: Path) -> None:
    """A paired add keeps the re-onboarded known models in the router file; a loaded router
    estimates bit for bit as the one that added the model."""
    train, test = tables
    ids = np.random.default_rng(0).choice(train.prompt_ids, 60, replace=False).tolist()
    summary = router.add_model(NEW, train.subset(ids), method="paired")
    assert summary["paired_rows"] == 60
    fit = router.estimator.profiles_[-1]
    assert fit.reon_w is not None and fit.reon_w.shape == (3, 3)
    q0, _ = router.estimate(test.prompts)
    again = Router.load(router.save(tmp_path / "added.safetensors"))
    loaded = again.estimator.profiles_[-1]
    assert loaded.reon_ref == pytest.approx(fit.reon_ref)
    assert np.array_equal(again.estimate(test.prompts)[0], q0)
