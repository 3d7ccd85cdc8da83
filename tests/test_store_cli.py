"""`llmroute traces list|show` and `llmroute keys new|hash`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmroute.gateway.auth import hash_key
from llmroute.gateway.store import open_store
from llmroute.gateway.traces_cli import keys_app, traces_app

runner = CliRunner()


def _fill(url: str, n: int = 12, base_dir: Path | None = None) -> None:
    with open_store(url, base_dir=base_dir) as st:
        for i in range(n):
            st.write(
                {
                    "request_id": f"r{i:03d}",
                    "ts": 1_767_225_600.0 + i * 60,
                    "key_id": "team-a",
                    "alias": "llmroute/auto" if i % 2 else "llmroute/cheap",
                    "model": "fake-strong" if i % 3 == 0 else "fake-weak",
                    "status": 200,
                    "candidates": [{"model": "fake-weak", "quality": 0.6, "cost": 1e-5}],
                    "total_ms": 10.0 + i,
                    "tokens_in": 5,
                    "tokens_out": 9,
                    "cost_usd": 1e-5,
                }
            )


@pytest.fixture
def url(tmp_path: Path) -> str:
    u = f"sqlite:///{tmp_path / 'traces.sqlite'}"
    _fill(u)
    return u


def test_list_json_and_filters(url: str) -> None:
    res = runner.invoke(traces_app, ["list", "--store", url, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["request_id"] for r in rows] == [f"r{i:03d}" for i in range(11, -1, -1)]
    res = runner.invoke(
        traces_app, ["list", "--store", url, "--json", "--model", "fake-strong", "--alias", "llmroute/cheap"]
    )
    assert [r["request_id"] for r in json.loads(res.stdout)] == ["r006", "r000"]
    res = runner.invoke(
        traces_app, ["list", "--store", url, "--json", "--since", "2026-01-01T00:05:00Z", "--limit", "3"]
    )
    assert [r["request_id"] for r in json.loads(res.stdout)] == ["r011", "r010", "r009"]
    res = runner.invoke(traces_app, ["list", "--store", url, "--json", "--since", "1h"])
    assert json.loads(res.stdout) == []  # all records are older than an hour


def test_list_table_and_show(url: str) -> None:
    res = runner.invoke(traces_app, ["list", "--store", url, "--limit", "4"])
    assert res.exit_code == 0, res.output
    assert "r011" in res.stdout and "r008" in res.stdout and "r007" not in res.stdout
    assert "4 trace(s)" in res.stdout
    res = runner.invoke(traces_app, ["show", "r003", "--store", url])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["request_id"] == "r003" and rec["candidates"][0]["model"] == "fake-weak"
    res = runner.invoke(traces_app, ["show", "nope", "--store", url])
    assert res.exit_code == 1 and "no trace" in res.output


def test_store_from_config_and_errors(tmp_path: Path) -> None:
    cfg_dir = tmp_path / "conf"
    cfg_dir.mkdir()
    (cfg_dir / "gw.yaml").write_text(
        "models:\n  - {name: fake-weak, base_url: 'http://127.0.0.1:9/v1'}\nstore:\n  url: sqlite:///data/t.sqlite\n"
    )
    _fill("sqlite:///data/t.sqlite", n=3, base_dir=cfg_dir)  # relative to the config's folder
    res = runner.invoke(traces_app, ["list", "--config", str(cfg_dir / "gw.yaml"), "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)) == 3
    res = runner.invoke(traces_app, ["list", "--store", str(tmp_path / "missing.db")])
    assert res.exit_code == 2 and "no trace store" in res.output
    res = runner.invoke(traces_app, ["list", "--store", "mysql://x/y"])
    assert res.exit_code == 2 and "unsupported" in res.output
    res = runner.invoke(
        traces_app, ["list", "--store", f"sqlite:///{cfg_dir / 'data' / 't.sqlite'}", "--since", "soon"]
    )
    assert res.exit_code != 0 and "cannot read time" in res.output


def test_summary(url: str) -> None:
    res = runner.invoke(traces_app, ["summary", "--store", url, "--json"])
    assert res.exit_code == 0, res.output
    stats = {(s["alias"], s["model"]): s for s in json.loads(res.stdout)}
    assert sum(s["requests"] for s in stats.values()) == 12
    s = stats[("llmroute/auto", "fake-strong")]  # i in (3, 9)
    assert s["requests"] == 2 and s["tokens_out"] == 18 and s["total_ms_p50"] == pytest.approx(16.0)
    assert s["errors"] == 0 and s["cost_usd"] == pytest.approx(2e-5)
    res = runner.invoke(traces_app, ["summary", "--store", url])
    assert res.exit_code == 0 and "fake-weak" in res.stdout


def test_prune(url: str) -> None:
    # records are at 2026-01-01T00:00 + i minutes
    res = runner.invoke(traces_app, ["prune", "--store", url, "--older-than", "2026-01-01T00:05:00Z"])
    assert res.exit_code == 0 and "deleted 5 trace(s)" in res.stdout
    res = runner.invoke(traces_app, ["list", "--store", url, "--json", "--limit", "100"])
    assert len(json.loads(res.stdout)) == 7
    res = runner.invoke(traces_app, ["prune", "--store", url, "--older-than", "never"])
    assert res.exit_code != 0


def test_keys_spend(tmp_path: Path) -> None:
    import time

    from llmroute.gateway.auth import period_ids

    url = f"sqlite:///{tmp_path / 's.db'}"
    day, month = period_ids(time.time())
    with open_store(url) as st:
        st.add_spend("team-a", day, 0.25)
        st.add_spend("team-a", month, 1.5)
        st.add_spend("team-b", month, 0.5)
    res = runner.invoke(keys_app, ["spend", "--store", url, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {
        "team-a": {"day_usd": 0.25, "month_usd": 1.5},
        "team-b": {"day_usd": 0.0, "month_usd": 0.5},
    }
    res = runner.invoke(keys_app, ["spend", "--store", url])
    assert "team-a" in res.stdout and "1.500000" in res.stdout


def test_keys_commands() -> None:
    res = runner.invoke(keys_app, ["hash", "sk-abc"])
    assert res.exit_code == 0 and res.stdout.strip() == hash_key("sk-abc")
    res = runner.invoke(keys_app, ["hash"], input="sk-abc\n")
    assert res.stdout.strip() == hash_key("sk-abc")
    res = runner.invoke(keys_app, ["new", "--id", "team-x"])
    assert res.exit_code == 0
    key = res.stdout.split("stored anywhere): ")[1].split()[0]
    assert f"key_sha256: {hash_key(key)}" in res.stdout and "id: team-x" in res.stdout


def test_wired_into_the_llmroute_cli(url: str) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from llmroute.cli import app; app()",
            "traces",
            "show",
            "r001",
            "--store",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["request_id"] == "r001"
