"""`llmroute profile` end to end on the fake server (no network): three skilled fake models x 200
prompts at concurrency 16, interrupted and resumed without repeating a paid call; a tiny cost cap;
judge failures marked; pairwise judging; then a router trained on the table, served, and its
decisions follow the models' skills."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from conftest import run_gateway
from llmroute.cli import app
from llmroute.data import load_table
from llmroute.gateway.config import parse_config
from llmroute.gateway.fake import is_right, serve_in_thread, skill_prompts
from llmroute.profile.prompts import PromptItem, items_from_traces, load_items, select_diverse
from llmroute.profile.runner import BudgetError, ProfileSettings, journal_path, run_profile

MODELS = ["skill-math", "skill-code", "skill-chat"]
PRICES = {
    "skill-math": (10.0, 30.0),
    "skill-code": (10.0, 30.0),
    "skill-chat": (0.1, 0.1),
    "fake-judge": (0.5, 1.5),
}


def _config(base_url: str, judge_timeout_s: float = 30.0) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": name,
                "base_url": base_url,
                "input_per_mtok": pin,
                "output_per_mtok": pout,
                "timeout_s": judge_timeout_s if name == "fake-judge" else 30.0,
            }
            for name, (pin, pout) in PRICES.items()
        ],
        "store": {"url": "memory://"},
    }


def _items(n: int, seed: int = 0) -> list[PromptItem]:
    return [PromptItem(**r) for r in skill_prompts(n, seed)]


def _journal(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in journal_path(out).read_bytes().splitlines() if line.strip()]


def _answer_calls(fake: Any) -> int:
    return sum(v for (m, _), v in fake.state.calls.items() if m in MODELS)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """3 models x 200 prompts, cancelled after 150 journaled calls, then resumed to the end."""
    tmp = tmp_path_factory.mktemp("profile")
    out = tmp / "table.parquet"
    items = _items(200)
    with serve_in_thread(latency_ms=5) as fake:
        cfg = parse_config(_config(fake.base_url))
        settings = ProfileSettings(models=MODELS, judge="fake-judge", concurrency=16, judge_check=0.2)

        async def interrupted() -> None:
            task: asyncio.Task[Any] | None = None

            def on_call(n: int) -> None:
                if n >= 150 and task is not None:
                    task.cancel()

            task = asyncio.ensure_future(run_profile(cfg, items, settings, out, on_call=on_call))
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(interrupted())
        first = _journal(out)
        calls_after_first = _answer_calls(fake)
        result = asyncio.run(run_profile(cfg, items, settings, out))
        yield SimpleNamespace(
            out=out, items=items, fake=fake, first=first, calls_after_first=calls_after_first, result=result
        )


def test_interrupted_run_resumes_without_repeating_a_paid_call(profiled: SimpleNamespace) -> None:
    fake, items = profiled.fake, profiled.items
    prompt_of = {it.prompt_id: it.prompt for it in items}
    done_first = [r for r in profiled.first if r["kind"] == "answer"]
    assert 150 <= len(done_first) < 600  # really interrupted
    for r in done_first:  # every answer the first run journaled was asked exactly once, over both runs
        assert fake.state.calls[(r["model"], prompt_of[r["prompt_id"]])] == 1
    for it in items:
        for m in MODELS:
            assert fake.state.calls[(m, it.prompt)] >= 1
    # calls in flight when the first run was cancelled may be asked again (their answers were never
    # received); nothing else is: at most 16 per model
    assert 600 <= _answer_calls(fake) <= 600 + 16 * len(MODELS)
    # every call abandoned in flight is counted as possibly billed (some may not have reached the fake)
    charges = [r for r in _journal(profiled.out) if r["kind"] == "charge"]
    assert len(charges) >= _answer_calls(fake) - 600
    assert profiled.result.summary["rows"] == 600


def test_table_is_long_format_with_real_tokens_cost_and_grades(profiled: SimpleNamespace) -> None:
    table = load_table(profiled.out)
    df = table.df
    assert len(df) == 600 and set(df["model"]) == set(MODELS)
    assert df["quality"].notna().all()
    assert df["grade_error"].isna().all()
    assert (df["input_tokens"] > 0).all() and (df["output_tokens"] > 0).all() and (df["latency_s"] > 0).all()
    for m, (pin, pout) in PRICES.items():
        rows = df[df["model"] == m]
        expect = (rows["input_tokens"] * pin + rows["output_tokens"] * pout) / 1e6
        assert rows["cost_usd"].to_numpy() == pytest.approx(expect.to_numpy().astype(float))
    means = df.groupby(["task", "model"])["quality"].mean()
    assert means["math", "skill-math"] > 0.8 > 0.3 > means["math", "skill-code"]
    assert means["code", "skill-code"] > 0.8 > 0.3 > means["code", "skill-math"]
    assert means["chat", "skill-chat"] > 0.8
    assert set(df.loc[df["task"] == "chat", "grader"]) == {"judge"}
    assert set(df.loc[df["task"] == "code", "grader"]) == {"code"}
    s = profiled.result.summary
    agree = s["judge_agreement"]
    assert agree["vs_reference_n"] > 0 and agree["vs_reference"] == 1.0  # the fake judge is right
    assert s["judge_spent_usd"] > 0 and s["spent_usd"] == pytest.approx(
        sum(r["cost_usd"] for r in _journal(profiled.out))
    )


def test_router_trained_on_the_profile_follows_the_skills(profiled: SimpleNamespace, tmp_path: Path) -> None:
    from openai import OpenAI

    router = tmp_path / "profiled.safetensors"
    res = CliRunner().invoke(
        app, ["train", "--data", str(profiled.out), "--router", "knn", "--out", str(router)]
    )
    assert res.exit_code == 0, res.output
    cfg = _config(profiled.fake.base_url)
    cfg["routers"] = {"prof": str(router)}
    # the gateway prices 300 output tokens per call: skill-math costs ~$0.009, a penalty of ~0.18 at 20
    cfg["aliases"] = {"llmroute/auto": {"router": "prof", "tradeoff": 20, "candidates": MODELS}}
    expected = {"math": "skill-math", "code": "skill-code", "chat": "skill-chat"}
    picked: dict[str, list[str]] = {k: [] for k in expected}
    with run_gateway(cfg) as gw:
        client = OpenAI(base_url=gw, api_key="unused", max_retries=0)
        for row in skill_prompts(45, seed=7):  # prompts the router never saw
            raw = client.chat.completions.with_raw_response.create(
                model="llmroute/auto", messages=[{"role": "user", "content": row["prompt"]}]
            )
            picked[row["task"]].append(raw.headers["x-llmroute-model"])
    for task, model in expected.items():
        share = picked[task].count(model) / len(picked[task])
        assert share >= 0.8, (task, picked[task])


def test_tiny_cap_refuses_up_front_then_partial_never_exceeds_it(tmp_path: Path) -> None:
    items = _items(30)
    out = tmp_path / "capped.jsonl"
    with serve_in_thread() as fake:
        cfg = parse_config(_config(fake.base_url))
        s = ProfileSettings(models=MODELS, max_usd=0.002, concurrency=4, judge="fake-judge")
        with pytest.raises(BudgetError, match=r"exceeds the --max-usd cap \$0\.002") as e:
            asyncio.run(run_profile(cfg, items, s, out))
        assert "90 model calls" in str(e.value)
        assert sum(fake.state.calls.values()) == 0  # refused before any call

        s.partial = True
        r = asyncio.run(run_profile(cfg, items, s, out))
        spent = sum(x["cost_usd"] for x in _journal(out))
        assert 0 < spent <= 0.002 and r.summary["spent_usd"] <= 0.002
        assert r.summary["calls_not_made_cap"] > 0 and r.summary["rows"] < 90
        n_first = len(_journal(out))

        s.max_usd, s.partial = None, False  # resume without a cap: finishes, repeats nothing
        r2 = asyncio.run(run_profile(cfg, items, s, out))
        assert r2.summary["rows"] == 90
        done_first = {(x["model"], x["prompt_id"]) for x in _journal(out)[:n_first] if x["kind"] == "answer"}
        prompt_of = {it.prompt_id: it.prompt for it in items}
        for m, pid in done_first:
            assert fake.state.calls[(m, prompt_of[pid])] == 1


@pytest.mark.parametrize(
    ("fault", "error"),
    [("unparseable", "judge: unparseable score"), ("timeout", "judge call failed")],
)
def test_judge_failures_are_marked_never_guessed_never_dropped(
    tmp_path: Path, fault: str, error: str
) -> None:
    items = _items(30)  # 10 chit-chat prompts, judged for each of the 3 models
    out = tmp_path / "judged.parquet"
    with serve_in_thread() as fake:
        fake.state.faults["fake-judge"] = {"fault": fault, "count": 3, "delay": 5.0}
        # the judge's timeout is what this test is about: short, and the fault holds the reply longer
        cfg = parse_config(_config(fake.base_url, judge_timeout_s=0.5 if fault == "timeout" else 30.0))
        s = ProfileSettings(models=MODELS, judge="fake-judge", judge_check=0.0, retries=0)
        r = asyncio.run(run_profile(cfg, items, s, out))
    df = load_table(out).df
    assert len(df) == 90  # nothing dropped
    marked = df[df["grade_error"].notna()]
    assert len(marked) == 3
    assert all(str(e).startswith(error) for e in marked["grade_error"])
    assert marked["quality"].isna().all()  # not guessed
    assert (marked["grader"] == "judge").all()
    judged = df[(df["grader"] == "judge") & df["grade_error"].isna()]
    assert len(judged) == 27 and judged["quality"].notna().all()
    assert r.summary["judge_failures"] == 3


def test_pairwise_judge_both_orders_and_consistency(tmp_path: Path) -> None:
    items = [it for it in _items(30) if it.task == "chat"]
    out = tmp_path / "pairwise.parquet"
    with serve_in_thread() as fake:
        cfg = parse_config(_config(fake.base_url))
        s = ProfileSettings(models=MODELS, judge="fake-judge", pairwise_reference="skill-chat")
        r = asyncio.run(run_profile(cfg, items, s, out))
        judge_calls = sum(v for (m, _), v in fake.state.calls.items() if m == "fake-judge")
    assert judge_calls == 2 * 2 * len(items)  # two other models, both orders
    df = load_table(out).df
    assert (df.loc[df["model"] == "skill-chat", "quality"] == 0.5).all()
    answers = {(x["prompt_id"], x["model"]): x["response"] for x in _journal(out) if x["kind"] == "answer"}
    consistent = 0
    for it in items:
        ref_right = is_right(it.prompt, answers[(it.prompt_id, "skill-chat")])
        for m in ("skill-math", "skill-code"):
            right = is_right(it.prompt, answers[(it.prompt_id, m)])
            q = df[(df["prompt_id"] == it.prompt_id) & (df["model"] == m)]["quality"].item()
            # the fake judge prefers the first answer on ties: only a real difference is consistent
            if right != ref_right:
                consistent += 1
                assert q == (1.0 if right else 0.0)
            else:
                assert q == 0.5
    agree = r.summary["judge_agreement"]
    assert agree["pairwise_pairs"] == 2 * len(items)
    assert agree["pairwise_order_consistency"] == pytest.approx(consistent / (2 * len(items)))
    assert agree["pairwise_order_consistency"] < 1.0


def test_cli_profile_writes_table_summary_and_refuses_over_cap(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in skill_prompts(12)) + "\n")
    with serve_in_thread() as fake:
        config = tmp_path / "llmroute.yaml"
        config.write_text(yaml.safe_dump(_config(fake.base_url)))
        out = tmp_path / "table.csv"
        base = ["profile", "--config", str(config), "--prompts", str(prompts), "--judge", "fake-judge"]
        runner = CliRunner()
        res = runner.invoke(
            app, [*base, "--models", ",".join(MODELS), "--max-usd", "1e-9", "--out", str(out)]
        )
        assert res.exit_code == 2
        assert "exceeds the --max-usd cap" in res.output and "36 model calls" in res.output
        assert sum(fake.state.calls.values()) == 0
        from llmroute.router import default_router_path

        # a subset of 9 of the 12 prompts, embedded with the shipped router's encoder
        sub = ["--n", "9", "--router", str(default_router_path()), "--no-progress"]
        report = tmp_path / "report.html"
        res = runner.invoke(app, [*base, *sub, "--out", str(out), "--report", str(report)])
        assert res.exit_code == 0, res.output
    html = report.read_text()  # --report: the "is it worth adding?" report of the profiled models
    assert all(m in html for m in MODELS) and (tmp_path / "report.png").stat().st_size > 0
    df = load_table(out).df
    assert len(df) == 27 and set(df["model"]) == set(MODELS)  # every model but the judge, 9 prompts
    summary = json.loads((tmp_path / "table.csv.summary.json").read_text())
    assert summary["rows"] == 27 and summary["judge"] == "fake-judge"


def test_cli_profile_needs_one_prompt_source(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(_config("http://127.0.0.1:9/v1")))
    res = CliRunner().invoke(app, ["profile", "--config", str(config), "--out", str(tmp_path / "t.csv")])
    assert res.exit_code == 2 and "--prompts FILE or --from-traces" in res.output


def test_prompts_without_reference_need_a_judge(tmp_path: Path) -> None:
    with serve_in_thread() as fake:
        cfg = parse_config(_config(fake.base_url))
        with pytest.raises(ValueError, match="give --judge MODEL"):
            asyncio.run(run_profile(cfg, _items(9), ProfileSettings(models=MODELS), tmp_path / "t.csv"))
        assert sum(fake.state.calls.values()) == 0


def test_load_items_fields_and_errors(tmp_path: Path) -> None:
    p = tmp_path / "p.csv"
    p.write_text('prompt,answer,task,id\n"What is 6*7?",42,math,q1\nHello there,,,\n')
    items = load_items(p)
    assert items[0] == PromptItem("q1", "What is 6*7?", "math", "42")
    assert items[1].reference is None and items[1].prompt_id.startswith("p-")
    dup = tmp_path / "d.jsonl"
    dup.write_text('{"prompt": "a", "prompt_id": "x"}\n{"prompt": "b", "prompt_id": "x"}\n')
    with pytest.raises(ValueError, match="repeats row 1"):
        load_items(dup)


def test_from_traces_deduplicates_and_redacts(tmp_path: Path) -> None:
    from llmroute.gateway.store import open_store

    cfg = parse_config(
        {
            "models": [{"name": "m", "base_url": "http://127.0.0.1:9/v1"}],
            "store": {"url": f"sqlite:///{tmp_path}/traces.sqlite"},
            "trace": {"store_prompts": True},
        }
    )
    store = open_store(cfg.store.url, store_prompts=True)
    for text in (
        "Email me at jane.doe@example.com about the invoice",
        "email me at jane.doe@example.com about the invoice",  # same text, other case
        "What is the capital of France?",
        "What is  the capital of France?",
    ):
        store.write({"prompt": text, "model": "m"})
    store.close_sync()
    items = items_from_traces(cfg)
    assert len(items) == 2
    texts = " ".join(it.prompt for it in items)
    assert "jane.doe@example.com" not in texts and "[EMAIL]" in texts
    off = cfg.model_copy(update={"trace": cfg.trace.model_copy(update={"store_prompts": False})})
    with pytest.raises(ValueError, match="store_prompts"):
        items_from_traces(off)


def test_select_diverse_covers_every_cluster() -> None:
    items = _items(60)
    picked = select_diverse(items, 3)
    assert len(picked) == 3
    assert {it.task for it in picked} == {"math", "code", "chat"}
    assert select_diverse(items[:2], 5) == items[:2]


def test_cli_killed_mid_run_resumes_without_repeating_a_call(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    prompts = tmp_path / "prompts.jsonl"
    rows = skill_prompts(60)
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "table.parquet"
    with serve_in_thread(latency_ms=100) as fake:
        config = tmp_path / "llmroute.yaml"
        config.write_text(yaml.safe_dump(_config(fake.base_url)))
        args = ["profile", "--config", str(config), "--prompts", str(prompts), "--judge", "fake-judge"]
        args += ["--models", ",".join(MODELS), "--concurrency", "4", "--no-progress", "--out", str(out)]
        proc = subprocess.Popen(
            [sys.executable, "-c", "from llmroute.cli import app; app()", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120  # a safety net only: the kill waits for journaled calls
            while time.monotonic() < deadline and proc.poll() is None:
                if journal_path(out).exists() and journal_path(out).read_bytes().count(b"\n") >= 20:
                    break
                time.sleep(0.02)
            assert proc.poll() is None, "the run ended before it could be killed"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(30)
        before = [orjson.loads(x) for x in journal_path(out).read_bytes().split(b"\n")[:-1]]
        assert 20 <= len(before) < 180
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        prompt_of = {r["prompt_id"]: r["prompt"] for r in rows}
        for r in before:
            if r["kind"] == "answer":
                assert fake.state.calls[(r["model"], prompt_of[r["prompt_id"]])] == 1
    assert len(load_table(out).df) == 180


def test_changed_prompt_is_asked_again_and_a_cut_journal_line_is_redone(tmp_path: Path) -> None:
    items = [it for it in _items(9) if it.task != "chat"][:3]
    out = tmp_path / "t.jsonl"
    with serve_in_thread() as fake:
        cfg = parse_config(_config(fake.base_url))
        s = ProfileSettings(models=["skill-math"], concurrency=1)  # one at a time: journaled in order
        asyncio.run(run_profile(cfg, items, s, out))
        lines = journal_path(out).read_bytes().splitlines(keepends=True)
        assert [orjson.loads(x)["prompt_id"] for x in lines] == [it.prompt_id for it in items]
        journal_path(out).write_bytes(b"".join(lines[:-1]) + lines[-1][:25])  # a crash mid-line
        changed = dataclasses.replace(items[0], prompt=items[0].prompt + " Thanks!")
        asyncio.run(run_profile(cfg, [changed, *items[1:]], s, out))
        assert fake.state.calls[("skill-math", changed.prompt)] == 1  # new text: asked
        assert fake.state.calls[("skill-math", items[0].prompt)] == 1
        assert fake.state.calls[("skill-math", items[1].prompt)] == 1  # journaled: not asked again
        assert fake.state.calls[("skill-math", items[2].prompt)] == 2  # its record was cut off
    assert len(_journal(out)) == 4


def test_rpm_spaces_the_calls_of_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmroute.profile import runner

    waits: list[float] = []

    async def no_sleep(s: float) -> None:
        waits.append(s)

    monkeypatch.setattr(runner.asyncio, "sleep", no_sleep)
    cfg = parse_config(_config("http://127.0.0.1:9/v1")).model("skill-math")
    settings = ProfileSettings(models=["skill-math"], rpm=1.0)  # one call a minute

    async def three() -> None:
        caller = runner._Caller(cfg, None, runner.CostCap(None), settings, None)  # type: ignore[arg-type]
        for _ in range(3):
            await caller._pace()

    asyncio.run(three())
    assert len(waits) == 2  # the first call starts at once
    assert 59 < waits[0] <= 60 and 119 < waits[1] <= 120


def test_fake_skills_are_configurable_and_seeded() -> None:
    import httpx

    math_prompt = next(r for r in skill_prompts(6) if r.get("grader") == "number")
    with serve_in_thread() as fake, httpx.Client(base_url=fake.url) as c:
        r = c.post("/_control/skills", json={"skills": {"skill-chat": {"math": 1.0}}, "seed": 3})
        assert r.status_code == 200
        assert c.post("/_control/skills", json={"skills": 1}).status_code == 400
        body = {"model": "skill-chat", "messages": [{"role": "user", "content": math_prompt["prompt"]}]}
        answers = {
            c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
            for _ in range(2)
        }
        assert len(answers) == 1 and is_right(math_prompt["prompt"], answers.pop())
        body["model"] = "skill-math"  # no longer a skilled model: the plain echo
        assert (
            c.post("/v1/chat/completions", json=body)
            .json()["choices"][0]["message"]["content"]
            .startswith("[skill-math]")
        )
        assert (
            c.post("/_control/fault", json={"model": "fake-judge", "fault": "unparseable"}).status_code == 200
        )
        body = {"model": "fake-judge", "messages": [{"role": "user", "content": "Rate: [[9]]"}]}
        text = c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        assert "[[" not in text


def test_anthropic_provider_model_is_profiled_through_its_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMROUTE_TEST_ANTHROPIC_KEY", "sk-ant-test")
    items = [it for it in _items(12) if it.task == "code"]
    out = tmp_path / "anthropic.parquet"
    with serve_in_thread() as fake:
        cfg = _config(fake.base_url)
        cfg["models"].append(
            {
                "name": "claude-code",
                "provider": "anthropic",
                "base_url": fake.url,
                "api_key_env": "LLMROUTE_TEST_ANTHROPIC_KEY",
                "upstream_model": "skill-code",  # the fake's skilled coder, over /v1/messages
                "input_per_mtok": 3,
                "output_per_mtok": 15,
            }
        )
        r = asyncio.run(run_profile(parse_config(cfg), items, ProfileSettings(models=["claude-code"]), out))
        assert fake.state.last["skill-code"]["max_tokens"] == 512  # sent through the Messages API
    df = load_table(out).df
    assert len(df) == len(items) == r.summary["rows"]
    assert (df["quality"] == 1.0).mean() >= 0.5  # skill-code is right on ~95% of code prompts
    assert (df["input_tokens"] > 0).all() and (df["output_tokens"] > 0).all()
    assert df["cost_usd"].to_numpy() == pytest.approx(
        ((df["input_tokens"] * 3 + df["output_tokens"] * 15) / 1e6).to_numpy().astype(float)
    )
