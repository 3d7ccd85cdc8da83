"""Report details (curve points, per task, fold spread), the plot's layout and scoring a trained router."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from llmroute.cli import app
from llmroute.data.table import RoutingTable, TableError
from llmroute.eval.cv import kfold_indices
from llmroute.eval.metrics import aiq, gap_closed, router_curve, single_model_points
from llmroute.eval.report import curves_figure, render_html, write_report
from llmroute.eval.runner import evaluate, evaluate_router
from llmroute.policy import choose, tradeoff_grid
from test_eval_runner import CentroidRouter, HashEncoder

runner = CliRunner()
PRICE = {"cheap": 1e-4, "mid": 5e-4, "dear": 2e-3}
WORDS = {
    "math": ["integral", "derivative", "equation", "solve", "algebra", "prime"],
    "code": ["python", "function", "compile", "bug", "loop", "class"],
    "chat": ["hello", "weather", "movie", "friend", "dinner", "music"],
}


def task_table(n: int = 180, seed: int = 0, models: Sequence[str] = ("cheap", "mid", "dear")) -> RoutingTable:
    """Three task families; within each a random half of the prompts is hard (only 'dear' right).

    chat: cheap right on easy prompts; code: mid right on easy ones; math: only dear. The topic is
    learnable from the words, the hard half is not, so every family has its own gap to close.
    """
    rng = np.random.default_rng(seed)
    rows = []
    topics = list(WORDS)
    for i in range(n):
        topic = topics[i % 3]
        hard = rng.random() < 0.5
        prompt = " ".join(rng.choice(WORDS[topic], size=6)) + f" #{i}"
        right = {"chat": {"cheap", "mid", "dear"}, "code": {"mid", "dear"}, "math": {"dear"}}[topic]
        if hard:
            right = {"dear"}
        for m in models:
            rows.append(
                {
                    "prompt_id": f"p{i}",
                    "prompt": prompt,
                    "task": topic,
                    "model": m,
                    "quality": float(m in right),
                    "cost_usd": PRICE[m] * (1 + 0.2 * rng.random()),
                }
            )
    return RoutingTable(pd.DataFrame(rows), source="tasks")


@pytest.fixture(scope="module")
def cv_result() -> dict:
    return evaluate(
        task_table(),
        routers=[("centroid", CentroidRouter)],
        folds=3,
        seed=1,
        encoder=HashEncoder(),
        progress=False,
        dataset="tasks",
        latency_prompts=5,
    )


# ---- curve points ----------------------------------------------------------------------------
def test_curve_points_carry_the_tradeoff_and_pick_share(cv_result: dict) -> None:
    r = cv_result["routers"]["centroid"]
    pts = r["curve_points"]
    assert [[p["cost"], p["quality"]] for p in pts] == r["curve"]
    lams = [p["tradeoff"] for p in pts]
    assert lams[0] == 0.0 and lams[-1] is None  # None = infinite: always the cheapest
    finite = lams[:-1]
    assert finite == sorted(finite) and len(set(finite)) == len(finite)
    grid = tradeoff_grid(float(np.nanmedian(np.abs(task_table().cost_matrix()))))
    assert finite == pytest.approx(list(grid[:-1]))
    assert cv_result["models"] == ["cheap", "dear", "mid"]  # the order of every pick_share
    for p in pts:
        assert len(p["pick_share"]) == 3
        assert sum(p["pick_share"]) == pytest.approx(1.0, abs=1e-3)
    assert pts[-1]["pick_share"] == [1.0, 0.0, 0.0]  # lambda = inf: the cheapest
    # lambda = 0: the best expected quality; dear is never worse, so it takes the most prompts
    assert pts[0]["pick_share"][1] > 0.5
    # the shares are those of the cost: cost = sum(share * mean cost of the picked prompts) is
    # bounded by the cheapest and dearest model
    assert pts[0]["cost"] > pts[-1]["cost"]


def test_pick_share_matches_the_policy_on_known_estimates() -> None:
    from llmroute.eval.runner import _context, _score_router

    t = task_table(n=90)
    Q, C = t.quality_matrix(), t.cost_matrix()
    ctx = _context(Q, C)
    q_hat = np.tile([0.2, 0.9, 0.6], (len(Q), 1))  # columns: cheap, dear, mid (sorted names)
    c_hat = np.tile([1e-4, 2e-3, 5e-4], (len(Q), 1))
    res = _score_router(Q, C, q_hat, c_hat, ctx, t.models, {})
    for p in res["curve_points"]:
        lam = np.inf if p["tradeoff"] is None else p["tradeoff"]
        want = int(choose(q_hat[:1], c_hat[:1], tradeoff=lam)[0])
        assert p["pick_share"][want] == 1.0 and sum(p["pick_share"]) == 1.0


# ---- per task and per fold -------------------------------------------------------------------
def _direct_metrics(Q: np.ndarray, C: np.ndarray, q_hat: np.ndarray, c_hat: np.ndarray, lambdas: np.ndarray):
    """AIQ and gap closed computed straight from the metric functions (independent of the runner)."""
    singles = single_model_points(Q, C)
    c_min, c_max = singles[:, 0].min(), singles[:, 0].max()
    a = aiq(router_curve(Q, C, q_hat, c_hat, lambdas), c_min, c_max)
    a_oracle = aiq(router_curve(Q, C, Q, C, lambdas), c_min, c_max)
    return a, gap_closed(a, aiq(singles, c_min, c_max), a_oracle)


def test_by_task_and_per_fold_equal_the_metrics_on_each_subset() -> None:
    from llmroute.eval.runner import _context, _group_context, _score_router, _task_groups

    t = task_table(n=150, seed=3)
    Q, C = t.quality_matrix(), t.cost_matrix()
    rng = np.random.default_rng(0)
    q_hat = np.clip(Q + rng.normal(0, 0.4, Q.shape), 0, 1)
    c_hat = C * (1 + 0.3 * rng.random(C.shape))
    ctx = _context(Q, C)
    groups = {
        "tasks": [(n, ix, _group_context(Q, C, ix, ctx)) for n, ix in _task_groups(t.tasks)],
        "folds": [
            (str(k), ix, _group_context(Q, C, ix, ctx)) for k, ix in enumerate(kfold_indices(150, 3, 0))
        ],
    }
    res = _score_router(Q, C, q_hat, c_hat, ctx, t.models, groups)
    assert set(res["by_task"]) == {"math", "code", "chat"}
    tasks = np.array(t.tasks)
    for name, m in res["by_task"].items():
        ix = np.flatnonzero(tasks == name)
        a, g = _direct_metrics(Q[ix], C[ix], q_hat[ix], c_hat[ix], ctx["lambdas"])
        assert m["n_prompts"] == len(ix)
        assert m["aiq"] == pytest.approx(a, abs=1e-12)
        assert m["gap_closed"] == pytest.approx(g, abs=1e-12)
    folds = kfold_indices(150, 3, 0)
    assert [f["fold"] for f in res["per_fold"]] == [0, 1, 2]
    for f, ix in zip(res["per_fold"], folds, strict=True):
        a, g = _direct_metrics(Q[ix], C[ix], q_hat[ix], c_hat[ix], ctx["lambdas"])
        assert (
            f["n_prompts"] == len(ix) and f["aiq"] == pytest.approx(a) and f["gap_closed"] == pytest.approx(g)
        )
    gaps = [f["gap_closed"] for f in res["per_fold"]]
    sp = res["fold_spread"]["gap_closed"]
    assert sp["mean"] == pytest.approx(np.mean(gaps)) and sp["std"] == pytest.approx(np.std(gaps))
    assert sp["min"] == min(gaps) and sp["max"] == max(gaps) and sp["std"] > 0


def test_evaluate_reports_tasks_folds_and_points(cv_result: dict) -> None:
    r = cv_result["routers"]["centroid"]
    assert cv_result["mode"] == "cv"
    assert [t["task"] for t in cv_result["tasks"]] == ["chat", "code", "math"]  # 60 each: by name
    assert all(t["n_prompts"] == 60 for t in cv_result["tasks"])
    math_row = next(t for t in cv_result["tasks"] if t["task"] == "math")
    assert math_row["best_single"]["model"] == "dear" and math_row["oracle_quality"] == 1.0
    assert set(r["by_task"]) == {"chat", "code", "math"}
    assert sum(f["n_prompts"] for f in r["per_fold"]) == 180 and len(r["per_fold"]) == 3
    assert {"aiq", "gap_closed"} <= set(r["fold_spread"])
    json.dumps(cv_result, allow_nan=False)


def test_one_task_family_gives_no_breakdown() -> None:
    df = task_table(n=60).df.assign(task="syn/all")
    res = evaluate(
        RoutingTable(df, source="x"),
        routers=[("c", CentroidRouter)],
        folds=2,
        encoder=HashEncoder(),
        progress=False,
        latency_prompts=0,
    )
    assert res["tasks"] == [] and res["routers"]["c"]["by_task"] == {}
    assert "<h3>Per task</h3>" not in render_html(res, b"x")


# ---- the HTML --------------------------------------------------------------------------------
def test_html_defines_metrics_shows_details_and_links_nothing_outside(
    cv_result: dict, tmp_path: Path
) -> None:
    paths = write_report(cv_result, tmp_path)
    html = paths["html"].read_text()
    for ref in re.findall(r'(?:href|src)="([^"]*)"', html):
        assert ref.startswith(("#", "data:image/png;base64,")), ref
    assert "DESIGN.md" not in html and "<script" not in html and "<link" not in html
    assert 'id="definitions"' in html
    defs = html[html.index('id="definitions"') :]
    for term in ("AIQ", "Gap closed", "cost_ratio_at_best_quality", "APGR", "CPT", "PGR(f)", "trade-off λ"):
        assert term in defs, term
    # the trade-off and pick share behind each curve point
    assert "Curve points: trade-off and pick share per model" in html
    start = html.index("<th>trade-off λ</th>")
    table = html[start : html.index("</table>", start)]
    rows = re.findall(
        r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>((?:<td>[^<]*</td>)+)</tr>", table
    )
    assert rows[0][0].startswith("0") and rows[-1][0].endswith("∞")
    pts = cv_result["routers"]["centroid"]["curve_points"]
    assert 1 < len(rows) <= len(pts)
    # the last row: lambda = inf, everything to the cheapest model (columns: cheap, dear, mid)
    assert re.findall(r"<td>([^<]*)</td>", rows[-1][3]) == ["100%", "·", "·"]
    assert float(rows[-1][2]) == pytest.approx(pts[-1]["quality"], abs=1e-4)
    assert "<h3>Per task</h3>" in html and "<td>math</td>" in html
    assert "Spread over the 3 CV folds" in html and " ± " in html


def test_html_of_a_two_model_table_has_apgr_per_task_and_fold() -> None:
    res = evaluate(
        task_table(n=120, models=("cheap", "dear")),
        routers=[("c", CentroidRouter)],
        folds=3,
        encoder=HashEncoder(),
        progress=False,
        latency_prompts=0,
    )
    r = res["routers"]["c"]
    assert r["apgr"] is not None and "apgr" in r["fold_spread"]
    assert all(m["apgr"] is not None for m in r["by_task"].values())
    html = render_html(res, b"x")
    assert "c: APGR" in html and "<th>APGR</th>" in html


# ---- the plot --------------------------------------------------------------------------------
def _png_size(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", data[16:24])


def test_plot_is_large_and_labels_stay_inside_without_overlap(cv_result: dict, tmp_path: Path) -> None:
    many = dict(cv_result)  # eleven crowded single models, as in RouterBench
    rng = np.random.default_rng(0)
    many["baselines"] = dict(
        cv_result["baselines"],
        singles=[
            {"model": f"vendor/model-with-a-long-name-{i}", "quality": float(q), "cost": float(c)}
            for i, (q, c) in enumerate(
                zip(rng.uniform(0.5, 0.9, 11), 10 ** rng.uniform(-4, -2.5, 11), strict=True)
            )
        ],
    )
    fig = curves_figure(many)
    w, h = fig.get_size_inches() * fig.dpi
    assert w >= 1000 and h >= 700
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    inside = ax.get_window_extent(renderer)
    legend = ax.get_legend()
    assert legend is not None and min(t.get_fontsize() for t in legend.get_texts()) >= 10
    assert ax.xaxis.label.get_fontsize() >= 12 and ax.title.get_fontsize() >= 12
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 11 and min(t.get_fontsize() for t in ax.texts) >= 9
    leg = legend.get_window_extent(renderer)
    for b in boxes:
        assert b.x0 >= inside.x0 - 0.5 and b.x1 <= inside.x1 + 0.5
        assert b.y0 >= inside.y0 - 0.5 and b.y1 <= inside.y1 + 0.5
        assert not b.overlaps(leg)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (ax.texts[i].get_text(), ax.texts[j].get_text())
    assert leg.x0 >= inside.x0 and leg.x1 <= inside.x1 and leg.y0 >= inside.y0 and leg.y1 <= inside.y1
    png = write_report(many, tmp_path)["png"].read_bytes()
    assert _png_size(png)[0] >= 1000


# ---- scoring a trained router ----------------------------------------------------------------
class TruthRouter:
    """Knows the true quality and cost of every prompt; its columns are in its own order."""

    def __init__(self, table: RoutingTable, models: Sequence[str]) -> None:
        self.models = list(models)
        Q, C = table.quality_matrix(), table.cost_matrix()
        col = {m: j for j, m in enumerate(table.models)}
        self.rows = {p: i for i, p in enumerate(table.prompts)}
        n = len(Q)
        self.q = np.column_stack([Q[:, col[m]] if m in col else np.ones(n) for m in self.models])
        self.c = np.column_stack([C[:, col[m]] if m in col else np.full(n, 1e-9) for m in self.models])

    def estimate(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ix = [self.rows[p] for p in prompts]
        return self.q[ix], self.c[ix]

    def route(self, prompt: str) -> str:
        q, c = self.estimate([prompt])
        return self.models[int(choose(q, c)[0])]


def test_evaluate_router_maps_models_by_name() -> None:
    t = task_table(n=90)
    # the router's columns are in another order and it knows a model the table lacks: it
    # still has to reproduce the oracle exactly (a positional mapping would not)
    r = TruthRouter(t, ["mid", "zeta-extra", "dear", "cheap"])
    res = evaluate_router(r, t, name="truth", latency_prompts=3)
    assert res["mode"] == "router" and res["folds"] is None
    assert res["models"] == ["cheap", "dear", "mid"] and res["router_models"] == r.models
    m = res["routers"]["truth"]
    assert m["gap_closed"] == pytest.approx(1.0)
    assert all(len(p["pick_share"]) == 3 for p in m["curve_points"])  # never the extra model
    assert m["decision_ms_p50"] is not None and set(m["by_task"]) == {"chat", "code", "math"}
    assert "per_fold" not in m
    json.dumps(res, allow_nan=False)


def test_evaluate_router_refuses_models_it_does_not_know() -> None:
    t = task_table(n=30)
    r = TruthRouter(t, ["cheap", "dear", "mid-2024"])
    with pytest.raises(TableError) as info:
        evaluate_router(r, t, router_label="my.router")
    msg = str(info.value)
    assert "'mid'" in msg and "my.router" in msg and "close: 'mid-2024'" in msg and "llmroute train" in msg


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A knn router trained on one half of the synthetic table, the other half as a file."""
    from llmroute.data import make_synthetic_table

    table = make_synthetic_table(n_prompts=160, seed=0)
    d = tmp_path_factory.mktemp("trained")
    ids = table.prompt_ids
    train, test = d / "train.parquet", d / "test.parquet"
    table.subset(ids[:100]).df.to_parquet(train)
    table.subset(ids[100:]).df.to_parquet(test)
    model = d / "knn.safetensors"
    res = runner.invoke(app, ["train", "--data", str(train), "--router", "knn", "--out", str(model)])
    assert res.exit_code == 0, res.output
    return model, test, d


def test_cli_eval_router_scores_new_data(trained: tuple[Path, Path, Path]) -> None:
    model, test, d = trained
    out = d / "report"
    res = runner.invoke(
        app,
        ["eval", "--router", str(model), "--data", str(test), "--out", str(out), "--latency-prompts", "5"],
    )
    assert res.exit_code == 0, res.output
    assert "no CV" in res.output
    data = json.loads((out / "results.json").read_text())
    assert data["mode"] == "router" and data["n_prompts"] == 60 and data["router_file"] == str(model)
    r = data["routers"]["knn"]
    assert r["gap_closed"] > 0  # the topics are learnable from the training half
    html = (out / "report.html").read_text()
    assert "scored on this table as it is" in html and (out / "curves.png").stat().st_size > 10_000


def test_cli_eval_router_errors(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, test, _ = trained
    res = runner.invoke(app, ["eval", "--router", str(model), "--data", str(test), "--routers", "knn"])
    assert res.exit_code == 2 and "--routers cannot go with --router" in res.output
    res = runner.invoke(app, ["eval", "--router", str(model), "--data", str(test), "--folds", "3"])
    assert res.exit_code == 2 and "--folds" in res.output
    res = runner.invoke(app, ["eval", "--router", str(tmp_path / "none.safetensors"), "--data", str(test)])
    assert res.exit_code == 2 and "no such file" in res.output
    other = pd.read_parquet(test)
    other["model"] = other["model"].str.upper()
    renamed = tmp_path / "renamed.parquet"
    other.to_parquet(renamed)
    res = runner.invoke(app, ["eval", "--router", str(model), "--data", str(renamed), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "not the router's" in res.output and "Traceback" not in res.output


def test_train_refuses_a_one_model_table_like_eval(tmp_path: Path) -> None:
    path = tmp_path / "one.csv"
    path.write_text("prompt_id,prompt,model,quality\np1,hello,gpt-4o,1\np2,bye,gpt-4o,0\n")
    ev = runner.invoke(app, ["eval", "--data", str(path), "--routers", "knn", "--folds", "2"])
    tr = runner.invoke(app, ["train", "--data", str(path), "--out", str(tmp_path / "r.safetensors")])
    assert ev.exit_code == tr.exit_code == 2
    assert ev.output == tr.output
    assert "need at least two models" in tr.output and "'gpt-4o'" in tr.output
    assert not (tmp_path / "r.safetensors").exists()
