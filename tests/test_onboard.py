"""Models added and removed from profiles, without retraining (llmroute.onboard, `llmroute models`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llmroute.cli import app
from llmroute.data import ModelPrice
from llmroute.data.table import RoutingTable
from llmroute.router import Router, default_router_path
from onboard_fixtures import assert_specialist_add, base, draw_profile, keep_models, router, tables  # noqa: F401 (pytest fixtures)

NEW = "math-7b"  # the synthetic specialist: best on arithmetic by >= 0.1, far worse elsewhere


def test_add_leaves_known_estimates_bit_identical(router: Router, tables) -> None:
    train, test = tables
    q0, c0 = router.estimate(test.prompts)
    summary = router.add_model(NEW, draw_profile(train, NEW, 60))
    q1, c1 = router.estimate(test.prompts)
    assert router.models[-1] == NEW and q1.shape == (test.n_prompts, 4)
    assert np.array_equal(q1[:, :3], q0) and np.array_equal(c1[:, :3], c0)
    assert summary["profile_rows"] == 60 and summary["cost_mode"] == "price"
    # the profile says the specialist is strong on arithmetic only: its estimate follows it
    topics = np.array(test.tasks)
    assert q1[topics == "arithmetic", 3].mean() > q1[topics != "arithmetic", 3].mean() + 0.2


def test_add_changes_no_decision_where_the_new_model_is_never_best(router: Router, tables) -> None:
    train, test = tables
    # ... and where it is best by a margin, it is picked
    assert_specialist_add(router, test, NEW, lambda: router.add_model(NEW, draw_profile(train, NEW, 80)), 0.6)


def test_a_small_profile_is_estimated_below_its_measured_level(router: Router, tables) -> None:
    """5 rows of big-70b's outcomes: the estimate is shifted down by the profile's standard
    error (an uncertain model is picked only where it is clearly better), and the closest known
    model is reported; with 60 rows the shift is smaller."""
    train, _ = tables
    prof = draw_profile(train, "big-70b", 5, seed=3)
    small = router.add_model("clone-5", prof, profile_model="big-70b")
    assert small["closest_known_model"] == "big-70b" and small["shift"] > 0
    q, _ = router.estimate(prof.prompts)
    measured = float(prof.quality_matrix()[:, 0].mean())
    assert q[:, -1].mean() < measured - small["shift"] / 2
    large = router.add_model("clone-60", draw_profile(train, "big-70b", 60, seed=4), profile_model="big-70b")
    assert 0 < large["shift"] < small["shift"]


def _shared_luck(k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A profile whose new model succeeds and fails on the same prompts as the known ones:
    (estimates P, known grades, the new model's grades, embeddings); its true level is
    P.mean() + 0.05."""
    rng = np.random.default_rng(seed)
    P = np.clip(0.5 + 0.2 * rng.standard_normal((k, 4)), 0, 1)
    luck = 0.3 * rng.standard_normal(k)  # what makes a prompt go well or badly for every model
    known = P + luck[:, None] + 0.05 * rng.standard_normal((k, 4))
    y = P.mean(axis=1) + 0.05 + luck + 0.05 * rng.standard_normal(k)
    E = rng.standard_normal((k, 8))
    return P, known, y, E / np.linalg.norm(E, axis=1, keepdims=True)


def test_a_paired_profile_measures_the_level_closer_and_narrower() -> None:
    """The known models' grades on the same prompts take the shared luck out of the profile:
    over 20 draws of 40 prompts the level is closer to the truth and the margin smaller than
    from the new model's grades alone (drop the pairing and both are the same)."""
    from llmroute.estimators.profiled import fit_profile

    err_paired, err_alone, narrower = [], [], 0
    for seed in range(20):
        P, known, y, E = _shared_luck(40, seed)
        truth = float(P.mean()) + 0.05
        paired = fit_profile(P, E, y, known=known, method="paired")
        alone = fit_profile(P, E, y, method="paired")
        err_paired.append(abs(float((P @ paired.w + paired.b).mean()) - truth))
        err_alone.append(abs(float((P @ alone.w + alone.b).mean()) - truth))
        narrower += paired.margin < alone.margin
    assert np.mean(err_paired) < 0.5 * np.mean(err_alone)
    assert narrower == 20
    # a known model without grades (NaN) is left out of the pairing, not a failure
    P, known, y, E = _shared_luck(40, 0)
    known[:, 2] = np.nan
    assert np.isfinite(fit_profile(P, E, y, known=known, method="paired").predict(P, E)).all()


def test_the_lower_bound_is_wider_away_from_the_profile() -> None:
    """The estimate is the posterior mean minus one posterior sd at each prompt: at the
    profile's centre the sd is the level's; far from it the weights' uncertainty adds."""
    from llmroute.estimators.profiled import fit_profile

    P, known, y, E = _shared_luck(60, 1)
    fit = fit_profile(P, E, y, known=known, method="paired")
    mean = fit_profile(P, E, y, known=known, z=0.0, method="paired")
    at = np.vstack([P.mean(axis=0), P.mean(axis=0) + np.array([0.4, -0.4, 0.4, -0.4])])
    gap = mean.predict(at, E[:2]) - fit.predict(at, E[:2])
    assert gap[0] == pytest.approx(fit.margin)
    assert gap[1] > gap[0] > 0


def test_add_pairs_with_the_known_models_rows_of_the_profile_or_a_reference(router: Router, tables) -> None:
    """A profile that also holds the known models' rows (or a reference table with them, e.g.
    the training table) is paired prompt by prompt; a profile of the new model alone is not.
    Known estimates stay identical either way."""
    train, test = tables
    ids = np.random.default_rng(5).choice(train.prompt_ids, 50, replace=False).tolist()
    everyone = keep_models(train.subset(ids), {NEW, "tiny-1b", "code-13b", "big-70b"})
    q0, _ = router.estimate(test.prompts)
    paired = {"profile_model": NEW, "method": "paired"}
    assert router.add_model("a", everyone, **paired)["paired_rows"] == 50
    assert router.add_model("b", keep_models(everyone, {NEW}), **paired)["paired_rows"] == 0
    assert router.add_model("c", keep_models(everyone, {NEW}), reference=train, **paired)["paired_rows"] == 50
    assert router.add_model("d", everyone, profile_model=NEW, method="ridge")["paired_rows"] == 0
    with pytest.raises(ValueError, match="unknown add method 'nope'; use one of auto, ridge"):
        router.add_model("e", everyone, profile_model=NEW, method="nope")
    assert "e" not in router.models
    q1, _ = router.estimate(test.prompts)
    assert np.array_equal(q1[:, :3], q0)


def test_auto_pairs_a_profile_that_holds_the_known_models_grades_else_fits_ridge(
    router: Router, tables
) -> None:
    """The default method "auto": a profile with the known models' rows (or a reference with
    them) is fitted exactly as "paired"; a profile of the new model alone exactly as "ridge"."""
    train, test = tables
    ids = np.random.default_rng(5).choice(train.prompt_ids, 50, replace=False).tolist()
    everyone = keep_models(train.subset(ids), {NEW, "tiny-1b", "code-13b", "big-70b"})
    alone = keep_models(everyone, {NEW})
    cases = {
        "auto-everyone": (everyone, {}, "paired"),
        "auto-alone": (alone, {}, "ridge"),
        "auto-reference": (alone, {"reference": train}, "paired"),
    }
    for name, (profile, ref, expect) in cases.items():
        summary = router.add_model(name, profile, profile_model=NEW, **ref)
        assert (summary["method"], summary["requested_method"]) == (expect, "auto")
        router.add_model(f"forced-{name}", profile, profile_model=NEW, method=expect, **ref)
    q, _ = router.estimate(test.prompts)
    col = {m: q[:, j] for j, m in enumerate(router.models)}
    for name in cases:
        assert np.array_equal(col[name], col[f"forced-{name}"])
    assert not np.array_equal(col["auto-everyone"], col["auto-alone"])


def test_auto_pairs_only_when_most_profile_prompts_have_known_grades() -> None:
    """ "auto" pairs from MIN_PAIRED_ROWS prompts with a known grade and at least half of them."""
    from llmroute.onboard import MIN_PAIRED_ROWS, auto_method

    def known(rows: int, graded: int) -> np.ndarray:
        g = np.full((rows, 3), np.nan)
        g[:graded, 1] = 1.0  # one known model graded on the first `graded` prompts
        return g

    assert auto_method(None) == "ridge"
    assert auto_method(known(40, 20)) == "paired"
    assert auto_method(known(40, 19)) == "ridge"
    assert auto_method(known(MIN_PAIRED_ROWS, MIN_PAIRED_ROWS)) == "paired"
    assert auto_method(known(MIN_PAIRED_ROWS, MIN_PAIRED_ROWS - 1)) == "ridge"


def test_a_fit_saved_before_the_lower_bound_predicts_as_it_did(
    router: Router, tables, tmp_path: Path
) -> None:
    """Routers saved with the constant shift (no center / wcov / z) load and predict
    base @ w + b - shift."""
    from llmroute.estimators.profiled import ProfiledEstimator

    train, test = tables
    router.add_model(NEW, draw_profile(train, NEW, 60), method="paired")
    arrays, meta = router.estimator.get_state()
    arrays = {k: v for k, v in arrays.items() if not k.endswith(("/center", "/wcov"))}
    for prof in meta["profiles"]:
        prof.pop("level_var"), prof.pop("z")
        prof["shift"] = 0.02
    old = ProfiledEstimator.from_state(arrays, meta)
    X = router.featurize(test.prompts)
    fit = old.profiles_[0]
    expected = old.base_estimates(X) @ fit.w + fit.b - 0.02
    if len(fit.resid):
        from llmroute.estimators.profiled import _kernel_residual

        expected += _kernel_residual(X.emb, fit.emb, fit.resid, fit.beta, fit.kappa)
    assert np.allclose(old.predict(X)[:, -1], expected)


def test_remove_restores_the_previous_decisions(router: Router, tables) -> None:
    train, test = tables
    q0, c0 = router.estimate(test.prompts)
    before = [(d.model, d.ranked) for d in router.route_batch(test.prompts, tradeoff=1e3)]
    router.add_model(NEW, draw_profile(train, NEW, 40))
    router.remove_model(NEW)
    q1, c1 = router.estimate(test.prompts)
    assert router.models == ["big-70b", "code-13b", "tiny-1b"]
    assert np.array_equal(q0, q1) and np.array_equal(c0, c1)
    assert [(d.model, d.ranked) for d in router.route_batch(test.prompts, tradeoff=1e3)] == before


def test_remove_a_trained_model_keeps_the_others_and_added_ones(router: Router, tables) -> None:
    train, test = tables
    router.add_model(NEW, draw_profile(train, NEW, 60))
    q0, c0 = router.estimate(test.prompts)
    router.remove_model("code-13b")
    q1, c1 = router.estimate(test.prompts)
    assert router.models == ["big-70b", "tiny-1b", NEW]
    assert np.array_equal(q1, q0[:, [0, 2, 3]]) and np.array_equal(c1[:, :2], c0[:, [0, 2]])
    assert all(d.model != "code-13b" for d in router.route_batch(test.prompts, tradeoff=0.0))


def test_save_load_round_trip_with_an_added_model(router: Router, tables, tmp_path: Path) -> None:
    train, test = tables
    router.add_model(NEW, draw_profile(train, NEW, 60), price=ModelPrice(0.3, 0.6))
    q0, c0 = router.estimate(test.prompts)
    again = Router.load(router.save(tmp_path / "added.safetensors"))
    q1, c1 = again.estimate(test.prompts)
    assert again.models == router.models
    assert np.array_equal(q0, q1) and np.array_equal(c0, c1)
    assert again.info["profiled_models"][NEW]["profile_rows"] == 60


def test_price_and_profile_cost(router: Router, tables) -> None:
    """The added model's cost follows its price; without one, its observed profile costs."""
    train, test = tables
    prof = draw_profile(train, NEW, 60)
    router.add_model("a", prof, price=ModelPrice(1.0, 1.0), profile_model=NEW)
    router.add_model("b", prof, price=ModelPrice(2.0, 2.0), profile_model=NEW)
    unpriced = RoutingTable(prof.df, source="profile", prices=None)
    router.add_model("c", unpriced, profile_model=NEW)
    _, c = router.estimate(test.prompts)
    assert np.allclose(c[:, 4], 2 * c[:, 3])
    assert router.cost.modes["c"] == "observed"
    true_mean = float(prof.df["cost_usd"].mean())
    assert 0.5 * true_mean < c[:, 5].mean() < 2 * true_mean


def test_bad_input_gives_clear_errors(router: Router, tables) -> None:
    train, _ = tables
    with pytest.raises(ValueError, match="already in this router"):
        router.add_model("big-70b", draw_profile(train, "big-70b", 20))
    with pytest.raises(ValueError, match="not in this router"):
        router.remove_model("nope")
    ungraded = draw_profile(train, NEW, 20)
    ungraded = RoutingTable(ungraded.df.assign(quality=np.nan), source="p", prices=None)
    with pytest.raises(ValueError, match="no graded rows"):
        router.add_model(NEW, ungraded)
    two = keep_models(train.subset(train.prompt_ids[:10]), {NEW, "tiny-1b"})
    with pytest.raises(ValueError, match="no rows for model 'other'"):
        router.add_model("other", two)
    assert router.models == ["big-70b", "code-13b", "tiny-1b"]  # nothing half-added
    router.remove_model("big-70b")
    router.remove_model("code-13b")
    with pytest.raises(ValueError, match="only model"):
        router.remove_model("tiny-1b")


def test_shipped_router_with_regime_head(tables) -> None:
    """The shipped router (regime head included): an add leaves known estimates identical and
    gives the new model an everyday ability; remove undoes it."""
    train, _ = tables
    r = Router.load(default_router_path())
    prompts = ["hello there", "Prove that sqrt(2) is irrational.", "What is 17 * 23?"]
    q0, c0 = r.estimate(prompts)
    r.add_model(NEW, draw_profile(train, NEW, 40))
    q1, c1 = r.estimate(prompts)
    assert np.array_equal(q1[:, :-1], q0) and np.array_equal(c1[:, :-1], c0)
    assert r.regime_head is not None and len(r.regime_head.ability_) == len(r.models)
    r.remove_model(NEW)
    q2, _ = r.estimate(prompts)
    assert np.array_equal(q2, q0)


runner = CliRunner()


def test_cli_models_add_list_remove_round_trip(base: Router, tables, tmp_path: Path) -> None:
    train, test = tables
    router_file = base.save(tmp_path / "r.safetensors")
    prof = tmp_path / "profile.parquet"
    draw_profile(train, NEW, 50).df.to_parquet(prof)
    out = tmp_path / "r2.safetensors"
    res = runner.invoke(
        app,
        ["models", "add", NEW, "--profile", str(prof), "--router", str(router_file), "--out", str(out)],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["added"]["profile_rows"] == 50
    assert json.loads(res.output)["added"]["paired_rows"] == 0
    # --reference: the known models' grades on the profile prompts (here the training table)
    train_file = tmp_path / "train.parquet"
    train.df.to_parquet(train_file)
    paired_out = tmp_path / "r2p.safetensors"
    res = runner.invoke(
        app,
        [
            *("models", "add", NEW, "--profile", str(prof), "--router", str(router_file)),
            *("--out", str(paired_out), "--method", "paired", "--reference", str(train_file)),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["added"]["paired_rows"] == 50
    r2 = Router.load(out)
    assert r2.models[-1] == NEW
    assert np.array_equal(r2.estimate(test.prompts)[0][:, :3], base.estimate(test.prompts)[0])
    res = runner.invoke(app, ["models", "list", "--router", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rows = {row["model"]: row for row in json.loads(res.output)}
    assert rows[NEW]["source"] == "profile" and rows["big-70b"]["source"] == "trained"
    out3 = tmp_path / "r3.safetensors"
    res = runner.invoke(app, ["models", "remove", NEW, "--router", str(out), "--out", str(out3)])
    assert res.exit_code == 0, res.output
    assert Router.load(out3).models == base.models
    # errors: one line, exit code 2
    res = runner.invoke(
        app,
        ["models", "add", "big-70b", "--profile", str(prof), "--router", str(out3), "--out", str(out3)],
    )
    assert res.exit_code == 2 and "already in this router" in res.output
    res = runner.invoke(app, ["models", "remove", "nope", "--router", str(out3), "--out", str(out3)])
    assert res.exit_code == 2 and "not in this router" in res.output
    res = runner.invoke(
        app, ["models", "add", "x", "--profile", str(tmp_path / "none.parquet"), "--out", str(out3)]
    )
    assert res.exit_code == 2 and "no such file" in res.output


def test_report_is_written_and_names_the_models(base: Router, tables, tmp_path: Path) -> None:
    """`llmroute models report`: an HTML page (chart embedded) naming every profiled model,
    with the specialist's pick share and an expected saving; the router file is unchanged."""
    train, _ = tables
    router_file = base.save(tmp_path / "r.safetensors")
    prof = tmp_path / "profile.parquet"
    ids = train.prompt_ids[:80]
    keep_models(train.subset(ids), {NEW, "tiny-1b"}).df.to_parquet(prof)
    out = tmp_path / "rep" / "report.html"
    res = runner.invoke(
        app, ["models", "report", "--profile", str(prof), "--router", str(router_file), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert NEW in page and "tiny-1b" in page and "data:image/png;base64," in page
    assert "added from the profile" in page and "expected saving" in page
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert Router.load(router_file).models == base.models


def test_report_numbers(base: Router, tables, tmp_path: Path) -> None:
    from llmroute.onboard_report import profile_report

    train, _ = tables
    r = Router.load(base.save(tmp_path / "r.safetensors"))
    rep = profile_report(r, keep_models(train.subset(train.prompt_ids[:80]), {NEW, "tiny-1b"}))
    assert rep["added_models"] == [NEW] and r.models == base.models
    by = {m["model"]: m for m in rep["models"]}
    assert by[NEW]["by_task"]["arithmetic"]["quality"] > 0.8 > by[NEW]["by_task"]["poetry"]["quality"]
    # the arithmetic specialist is picked at trade-off 0 on about its topic's share of prompts
    assert 0.1 < rep["pick_share_with"][NEW][0] < 0.45
    # adding a model can only lower the least cost that reaches a quality (it is one more option)
    assert rep["expected_saving"] is not None and rep["expected_saving"] >= 0


def test_gateway_adds_a_model_with_a_profile_at_startup(base: Router, tables, tmp_path: Path) -> None:
    """A config model with `profile:` is added to the loaded router; /v1/route then sends the
    arithmetic prompts to the specialist at trade-off 0, and the rest where they went before."""
    import httpx

    from conftest import run_gateway

    train, test = tables
    router_file = base.save(tmp_path / "r.safetensors")
    prof = tmp_path / "math.parquet"
    draw_profile(train, NEW, 80).df.to_parquet(prof)
    url = "http://127.0.0.1:9/v1"  # never called: /v1/route makes no upstream call
    models = [{"name": m, "base_url": url} for m in ("big-70b", "code-13b", "tiny-1b")]
    config = {
        "models": [*models, {"name": NEW, "base_url": url, "profile": str(prof)}],
        "routers": {"default": str(router_file)},
        "aliases": {"llmroute/auto": {"router": "default", "tradeoff": 0}},
    }
    topics = np.array(test.tasks)
    prompts = [p for p, t in zip(test.prompts, topics, strict=True) if t in ("arithmetic", "poetry")][:24]
    want = [d.model for d in base.route_batch(prompts, tradeoff=0.0)]
    with run_gateway(config) as gw:
        got = [
            httpx.post(gw.root + "/v1/route", json={"model": "llmroute/auto", "prompt": p}, timeout=30).json()
            for p in prompts
        ]
    chosen = [g["model"] for g in got]
    kinds = [t for t in topics if t in ("arithmetic", "poetry")][:24]
    assert [c for c, k in zip(chosen, kinds, strict=True) if k == "poetry"] == [
        w for w, k in zip(want, kinds, strict=True) if k == "poetry"
    ]
    arith = [c == NEW for c, k in zip(chosen, kinds, strict=True) if k == "arithmetic"]
    assert sum(arith) > len(arith) / 2


def test_gateway_profile_errors_name_the_model(base: Router, tmp_path: Path) -> None:
    from llmroute.gateway.config import parse_config
    from llmroute.gateway.routing import load_router

    router_file = base.save(tmp_path / "r.safetensors")
    cfg = parse_config(
        {
            "models": [{"name": "x", "base_url": "http://127.0.0.1:9/v1", "profile": "missing.parquet"}],
            "routers": {"default": str(router_file)},
        }
    )
    with pytest.raises(FileNotFoundError, match=r"models\.x\.profile"):
        load_router(str(router_file), cfg)
