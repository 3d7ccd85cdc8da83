"""The `llmroute` CLI through typer's CliRunner (no shared data needed)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmroute import cli
from llmroute.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmroute.data import make_synthetic_table

    table = make_synthetic_table(n_prompts=120, seed=0)
    path = tmp_path_factory.mktemp("data") / "syn.parquet"
    table.df.to_parquet(path)
    return path


def test_help_lists_commands() -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("eval", "train", "route", "serve"):
        assert cmd in res.output
    assert runner.invoke(app, ["--version"]).output.strip()


def test_eval_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["eval", "--data", str(tmp_path / "nope.parquet")])
    assert res.exit_code == 2
    assert "no such file" in res.output
    assert "Traceback" not in res.output


def test_eval_rejects_unknown_router_and_bad_folds(synthetic_parquet: Path) -> None:
    res = runner.invoke(app, ["eval", "--data", str(synthetic_parquet), "--routers", "knn,magic"])
    assert res.exit_code == 2 and "magic" in res.output
    res = runner.invoke(app, ["eval", "--data", str(synthetic_parquet), "--folds", "1"])
    assert res.exit_code == 2 and "folds" in res.output.lower()


def test_eval_malformed_table_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt_id,prompt,model\np1,hi,a\n")
    res = runner.invoke(app, ["eval", "--data", str(bad), "--routers", "knn"])
    assert res.exit_code == 2
    assert res.output.startswith("error:") and "quality" in res.output
    assert "Traceback" not in res.output


def test_eval_unknown_task_prefix(synthetic_parquet: Path) -> None:
    res = runner.invoke(app, ["eval", "--data", str(synthetic_parquet), "--routers", "knn", "--tasks", "zzz"])
    assert res.exit_code == 2 and "zzz" in res.output


def test_route_missing_router_file(tmp_path: Path) -> None:
    res = runner.invoke(app, ["route", "--router", str(tmp_path / "none.npz"), "hello"])
    assert res.exit_code == 2
    assert "does not exist" in res.output


def test_route_bad_values(tmp_path: Path) -> None:
    res = runner.invoke(app, ["route", "--tradeoff", "-1", "hello"])
    assert res.exit_code == 2 and "tradeoff" in res.output
    res = runner.invoke(app, ["route", "--min-quality", "2", "hello"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["route", "--router", str(tmp_path / "x"), "   "])
    assert res.exit_code == 2 and "empty" in res.output


def test_train_rejects_two_routers(synthetic_parquet: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        ["train", "--data", str(synthetic_parquet), "--router", "knn,mf", "--out", str(tmp_path / "r.npz")],
    )
    assert res.exit_code == 2


def test_plugin_commands_forward_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fake_plugin_mod.py").write_text(
        textwrap.dedent("""
        import typer
        app = typer.Typer()

        @app.command()
        def hello(name: str, loud: bool = typer.Option(False, "--loud")) -> None:
            msg = f"hello {name}"
            typer.echo(msg.upper() if loud else msg)

        @app.command()
        def bye() -> None:
            typer.echo("bye")

        def serve(port: int = typer.Option(8080, "--port")) -> None:
            typer.echo(f"serving on {port}")
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.PLUGINS, "rules", ("fake_plugin_mod:app", "x"))
    monkeypatch.setitem(cli.PLUGINS, "serve", ("fake_plugin_mod:serve", "x"))
    res = runner.invoke(app, ["rules", "hello", "--loud", "bob"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == "HELLO BOB"
    res = runner.invoke(app, ["serve", "--port", "9"])
    assert res.exit_code == 0 and res.output.strip() == "serving on 9"
    res = runner.invoke(app, ["serve", "--help"])
    assert res.exit_code == 0 and "--port" in res.output
    monkeypatch.setitem(cli.PLUGINS, "traces", ("no_such_module_xyz:app", "x"))
    res = runner.invoke(app, ["traces"])
    assert res.exit_code == 2 and "not available" in res.output
    sys.modules.pop("fake_plugin_mod", None)


def test_eval_train_route_end_to_end(synthetic_parquet: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    res = runner.invoke(
        app,
        [
            "eval",
            "--data",
            str(synthetic_parquet),
            "--routers",
            "knn,linear",
            "--folds",
            "3",
            "--out",
            str(out),
            "--latency-prompts",
            "5",
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert set(data["routers"]) == {"knn", "linear"} and data["folds"] == 3 and data["n_prompts"] == 120
    assert (out / "curves.png").stat().st_size > 1000 and (out / "report.html").exists()
    # the topics are learnable: both routers beat the single-model hull
    assert all(r["gap_closed"] > 0 for r in data["routers"].values())

    model_file = tmp_path / "router.llmr"
    res = runner.invoke(
        app, ["train", "--data", str(synthetic_parquet), "--router", "knn", "--out", str(model_file)]
    )
    assert res.exit_code == 0, res.output
    assert model_file.exists()
    info = json.loads(res.output)
    assert info["estimator"] == "knn" and len(info["models"]) == 4

    res = runner.invoke(
        app,
        [
            "route",
            "--router",
            str(model_file),
            "--tradeoff",
            "0",
            "Write a Python function that reverses a linked list.",
        ],
    )
    assert res.exit_code == 0, res.output
    dec = json.loads(res.output)
    assert dec["model"] in info["models"]
    assert set(dec["expected_quality"]) == set(info["models"])
    res = runner.invoke(app, ["route", "--router", str(model_file), "--max-cost", "0", "What is 7 times 12?"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["model"] == "tiny-1b"  # nothing fits the budget: the cheapest


def test_route_with_the_shipped_default_router() -> None:
    from llmroute.router import default_router_path

    assert Path(default_router_path()).exists()  # shipped in src/llmroute/assets
    res = runner.invoke(app, ["route", "What is the capital of France?"])
    assert res.exit_code == 0, res.output
    dec = json.loads(res.output)
    assert dec["model"] in dec["expected_quality"]
    assert dec["reason"]


def test_train_everyday_fits_a_regime_head(synthetic_parquet: Path, tmp_path: Path) -> None:
    from llmroute.router import Router

    mine = tmp_path / "mine.jsonl"
    lines = [{"prompt": f"hello number {i}, how are you?", "tier": "easy"} for i in range(20)]
    lines += [
        {"prompt": f"Prove theorem {i} about prime gaps rigorously.", "tier": "hard"} for i in range(20)
    ]
    mine.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "r.safetensors"
    args = ["train", "--data", str(synthetic_parquet), "--router", "linear", "--out", str(out)]
    res = runner.invoke(app, [*args, "--everyday", "--everyday-prompts", str(mine)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["regime_head"] is True
    r = Router.load(out)
    assert r.regime_head is not None and r.info["regime_head"]["everyday_prompts"] == 40
    probs = r.regimes(["hello number 99, how are you?", "Prove theorem 99 about prime gaps rigorously."])
    assert probs[0, 0] > 0.5 and probs[1, 1] > 0.5
    # without the flag: no head; with an estimator that cannot carry one: a clear error
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and json.loads(res.output)["regime_head"] is False
    knn = ["train", "--data", str(synthetic_parquet), "--router", "knn", "--out", str(out), "--everyday"]
    res = runner.invoke(app, [*knn, "--everyday-prompts", str(mine)])
    assert res.exit_code == 2 and "hand-made features" in res.output
