"""Gateway config validation (errors name the field and what is allowed, ${ENV} substitution) and
`llmroute serve` as a real subprocess: examples/llmroute.yaml with no API keys, and
examples/loopback.yaml with the shipped default router in front of the fake server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from conftest import free_port
from llmroute.gateway.config import ConfigError, load_config, parse_config, substitute_env

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LLMROUTE = str(Path(sys.executable).parent / "llmroute")  # the console script, as `make run` calls it


def _minimal(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "models": [{"name": "a", "base_url": "http://127.0.0.1:1/v1", "router_model": "x"}],
        "aliases": {"llmroute/auto": {"router": "default"}},
    }
    cfg.update(over)
    return cfg


def test_env_substitution() -> None:
    env = {"A": "1", "URL": "http://h:9/v1"}
    assert substitute_env({"x": "${A}", "y": ["${B:-two}", "p${A}q"], "z": 3}, env) == {
        "x": "1",
        "y": ["two", "p1q"],
        "z": 3,
    }
    assert substitute_env("${EMPTY:-}", env) == ""
    with pytest.raises(ConfigError, match=r"models\[0\].base_url: environment variable NOPE is not set"):
        parse_config({"models": [{"name": "a", "base_url": "${NOPE}"}]}, env=env)
    cfg = parse_config({"models": [{"name": "a", "base_url": "${URL}", "timeout_s": "${T:-2.5}"}]}, env=env)
    assert cfg.models[0].base_url == "http://h:9/v1" and cfg.models[0].timeout_s == 2.5


@given(st.text(alphabet=st.characters(blacklist_characters="${}", blacklist_categories=("Cs",)), max_size=30))
def test_strings_without_placeholders_are_unchanged(s: str) -> None:
    assert substitute_env(s, {}) == s


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (
            lambda c: c["models"][0].update(provider="watsonx"),
            "models.0.provider: Input should be 'openai', 'anthropic', 'replay', 'azure', 'gemini'",
        ),
        (lambda c: c["models"][0].update(colour="red"), "models.0.colour: unknown field"),
        (lambda c: c["models"][0].update(timeout_s=-1), "models.0.timeout_s: Input should be greater than 0"),
        (lambda c: c["models"][0].update(base_url="ftp://x"), "base_url must start with http:// or https://"),
        (lambda c: c["models"].append({"name": "a"}), "duplicate model name(s) ['a']"),
        (
            lambda c: c["models"].append({"name": "r", "provider": "replay"}),
            "provider 'replay' needs replay_table",
        ),
        (
            lambda c: c["aliases"]["llmroute/auto"].update(candidates=["zzz"]),
            "aliases.llmroute/auto.candidates: unknown model(s) ['zzz']",
        ),
        (lambda c: c["aliases"]["llmroute/auto"].update(router="other"), "unknown router 'other'"),
        (lambda c: c.update(routers={"default": "builtin:fancy"}), "allowed: 'builtin:default'"),
        (
            lambda c: c["aliases"].update(a={"router": "default"}),
            "an alias cannot have the same name as a model",
        ),
        (lambda c: c.update(keys=[{"id": "k"}]), "give key_sha256"),
        (lambda c: c.update(server={"retries": "many"}), "server.retries: Input should be a valid integer"),
        (lambda c: c.pop("models"), "models: Field required"),
    ],
)
def test_errors_name_the_field(mutate: Any, needle: str) -> None:
    cfg = _minimal()
    mutate(cfg)
    with pytest.raises(ConfigError) as e:
        parse_config(cfg, source="test.yaml")
    assert needle in str(e.value), str(e.value)
    assert str(e.value).startswith("test.yaml: invalid gateway configuration") or "test.yaml" in str(e.value)


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_examples_validate_without_any_api_key() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    cfg = load_config(EXAMPLES / "llmroute.yaml", env=env)
    assert {"llmroute/auto", "llmroute/cheap", "llmroute/best"} <= set(cfg.aliases)
    assert {m.provider for m in cfg.models} == {"openai", "anthropic"}
    assert any(m.api_key_env is None for m in cfg.models)  # a local model needs no key
    loop = load_config(EXAMPLES / "loopback.yaml", env={"LLMROUTE_BACKEND_URL": "http://127.0.0.1:9/v1"})
    assert [m.name for m in loop.models] == ["fake-strong", "fake-weak"]
    assert loop.models[0].base_url == "http://127.0.0.1:9/v1" and "llmroute/auto" in loop.aliases


def _assert_default_router_shipped() -> None:
    from llmroute.router import default_router_path

    assert default_router_path().exists()  # shipped in src/llmroute/assets


def _serve(args: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [LLMROUTE, "serve", *args, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if p.poll() is not None:
            raise AssertionError(f"serve exited: {p.stdout.read().decode() if p.stdout else ''}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return p
        except httpx.HTTPError:
            time.sleep(0.1)
    p.kill()
    raise AssertionError("serve did not come up")


def _stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()


def test_serve_bad_config_exits_with_field_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": [{"name": "a", "provider": "watsonx"}]}))
    r = subprocess.run([LLMROUTE, "serve", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "models.0.provider" in r.stderr and "'openai', 'anthropic', 'replay', 'azure'" in r.stderr


def test_make_run_config_serves_without_api_keys(tmp_path: Path) -> None:
    _assert_default_router_shipped()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(
        LLMROUTE_STORE_URL=f"sqlite:///{tmp_path}/t.sqlite",
        LOCAL_LLM_URL=f"http://127.0.0.1:{free_port()}/v1",
    )
    port = free_port()
    p = _serve(["--config", str(EXAMPLES / "llmroute.yaml")], env, port)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/healthz").json()["status"] == "ok"
        ids = {m["id"] for m in httpx.get(base + "/v1/models").json()["data"]}
        assert {"llmroute/auto", "gpt-4o", "claude-haiku", "local-llama"} <= ids
        d = httpx.post(
            base + "/v1/route", json={"model": "llmroute/auto", "prompt": "Prove sqrt(2) is irrational."}
        )
        assert d.status_code == 200 and d.json()["model"] in ids and len(d.json()["ranked"]) == 5
        assert "llmroute_" in httpx.get(base + "/metrics").text
        c = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert e.value.status_code == 501 and "OPENAI_API_KEY" in str(e.value)
        assert e.value.response.headers["x-should-retry"] == "false"
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="llmroute/auto", messages=[{"role": "user", "content": "hi"}])
        # the local model's connection failure (which a retry may cure) speaks for the request,
        # not the hosted models' missing keys
        assert e.value.status_code == 502 and "all candidate models failed" in str(e.value)
        assert "OPENAI_API_KEY" in str(e.value) and "x-should-retry" not in e.value.response.headers
    finally:
        _stop(p)


def test_make_run_config_sends_easy_prompts_cheap_and_hard_ones_dear(tmp_path: Path) -> None:
    """What a new user sees first: ordinary prompts through `make run`'s config (issue 10)."""
    _assert_default_router_shipped()
    cfg = load_config(EXAMPLES / "llmroute.yaml", env={})
    auto = cfg.aliases["llmroute/auto"].candidates
    by_price = sorted(auto, key=lambda n: cfg.model(n).input_per_mtok + cfg.model(n).output_per_mtok)
    cheap, dear = set(by_price[: len(auto) // 2]), set(by_price[-(len(auto) // 2) :])
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(LLMROUTE_STORE_URL=f"sqlite:///{tmp_path}/t.sqlite")
    port = free_port()
    p = _serve(["--config", str(EXAMPLES / "llmroute.yaml")], env, port)
    easy = [
        "hello, how are you?",
        "Hello, what can you do?",
        "What is the capital of Japan?",
        "Translate 'thank you' into Italian.",
        "Turn this into a bulleted list: milk, eggs, flour",
    ]
    hard = [
        "Prove that there are infinitely many primes.",
        "Design a multi-region database that survives a network partition.",
        "Implement a lock-free multi-producer single-consumer queue in C++ and explain the memory ordering.",
    ]
    try:
        base = f"http://127.0.0.1:{port}"
        for text in easy + hard:
            r = httpx.post(base + "/v1/route", json={"model": "llmroute/auto", "prompt": text})
            assert r.status_code == 200, (text, r.text)  # nothing everyday is refused
            want = cheap if text in easy else dear
            assert r.json()["model"] in want, (text, r.json()["model"], r.json()["reason"])
    finally:
        _stop(p)


def test_loopback_with_default_router_end_to_end(fake_server: Any, tmp_path: Path) -> None:
    _assert_default_router_shipped()
    env = dict(
        os.environ,
        LLMROUTE_BACKEND_URL=fake_server.base_url,
        LLMROUTE_STORE_URL=f"sqlite:///{tmp_path}/t.sqlite",
    )
    port = free_port()
    p = _serve(["--config", str(EXAMPLES / "loopback.yaml")], env, port)
    try:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        seen = set()
        for text in [
            "hi",
            "Write a Python function that merges two sorted lists in linear time.",
            "What is 2+2?",
            "Prove that the square root of 2 is irrational, step by step.",
        ]:
            raw = c.chat.completions.with_raw_response.create(
                model="llmroute/auto", messages=[{"role": "user", "content": text}]
            )
            assert raw.parse().choices[0].message.content.startswith(f"[{raw.headers['x-llmroute-model']}]")
            seen.add(raw.headers["x-llmroute-model"])
        assert seen <= {"fake-strong", "fake-weak"}
    finally:
        _stop(p)
