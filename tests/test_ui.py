"""The dashboard (/ui) over HTTP: savings equal a recomputation from the trace store, the savings
rule on hand-made rows, the explorer's filters and a decision's page, incremental aggregates,
and access (master key, login cookie, demo mode only on loopback). The data tests run on a SQLite
and on a Postgres trace store (`postgres_url` in conftest.py; skipped without one)."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import new_postgres_database
from llmroute.gateway.auth import hash_key
from llmroute.gateway.ui.data import Aggregates, DashboardData, request_baseline, strongest_candidate
from ui_fixtures import delete_trace, recompute, seeded_gateway, store_url, trace_rows


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, list[str], Path | str]]:
    """The seeded gateway on a SQLite store, then on a Postgres one (a new database)."""
    pg = (
        new_postgres_database(request.getfixturevalue("postgres_url"))
        if request.param == "postgres"
        else None
    )
    with seeded_gateway(tmp_path_factory.mktemp("ui"), postgres=pg) as g:
        yield g


def _db(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Path | str:
    """A new, empty trace store: a SQLite path or a Postgres database's URL."""
    if kind == "postgres":
        return new_postgres_database(request.getfixturevalue("postgres_url"))
    return tmp_path / "t.sqlite"


def _usd(text: str) -> float:
    return float(text.replace("$", "").replace(",", ""))


def _card(html: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>([^<]+)<', html)
    assert m, f"#{element_id} not on the page"
    return m.group(1)


def test_overview_savings_equal_a_recomputation_from_the_store_to_the_cent(gw: Any) -> None:
    g, _ids, db = gw
    r = httpx.get(g.root + "/ui", timeout=60)
    assert r.status_code == 200
    assert r.headers["server-timing"].startswith("app;dur=")
    want = recompute(db)
    assert want["saved"] > 0.5  # the seeded traces route most requests to the cheap model
    for element, key in (("spend-total", "spend"), ("baseline-total", "baseline"), ("saved-total", "saved")):
        shown = _usd(_card(r.text, element))
        assert abs(shown - want[key]) < 0.005, (element, shown, want[key])
    assert "Assumption." in r.text and "strongest candidate" in r.text
    # per request: the mean saving
    n = int(_card(r.text, "requests").replace(",", ""))
    assert n == 3004
    assert abs(_usd(_card(r.text, "saved-per-request")) - want["saved"] / n) < 0.00005


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_savings_rule_on_hand_made_rows(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The strongest candidate is the one of highest expected quality (ties: the dearer); its
    cost is the billed cost scaled by the ratio of expected costs; failed and direct requests save
    nothing; a fallback to a dearer model is a negative saving."""
    from llmroute.gateway.store import open_store

    strong = {"model": "s", "expected_quality": 0.9, "expected_cost": 0.01}
    weak = {"model": "w", "expected_quality": 0.6, "expected_cost": 0.001}
    twin = {"model": "t", "expected_quality": 0.9, "expected_cost": 0.005}  # ties s on quality, cheaper
    dear = {"model": "d", "expected_quality": 0.5, "expected_cost": 0.02}
    rows = [
        ("w", 200, "a", [weak, twin, strong], 1.0),  # baseline 1.0 * 0.01 / 0.001 = 10: saves 9
        ("s", 200, "a", [strong, weak], 4.0),  # served by the strongest: saves 0
        ("w", 502, "a", [weak, strong], 0.0),  # failed: 0
        ("d", 200, "a", [strong, dear], 2.0),  # dearer than the strongest: 2 * 0.01 / 0.02 = 1: saves -1
        ("w", 200, None, [], 3.0),  # a model named directly: 0
    ]
    assert strongest_candidate([weak, twin, strong]) is strong
    assert request_baseline([weak, strong], "w", 200, 1.0) == pytest.approx(10.0)
    assert request_baseline([weak, strong], "w", 500, 1.0) == 1.0
    db = _db(kind, tmp_path, request)
    store = open_store(store_url(db), journal=False)
    for i, (model, status, alias, cands, cost) in enumerate(rows):
        store.write(
            {"request_id": f"r{i}", "ts": 1000.0 + i, "model": model, "status": status, "alias": alias}
            | {"candidates": cands, "cost_usd": cost}
        )
    store.flush_sync()
    data = DashboardData(store, store_url(db), None)
    t = data.refresh().select()[None]
    assert t.requests == 5 and t.errors == 1
    assert t.cost_usd == pytest.approx(10.0)
    assert t.saved_usd == pytest.approx(8.0)
    assert t.routed == 3
    # incremental: a new row is added on the next refresh, a deleted one rebuilds
    store.write(
        {"request_id": "r9", "ts": 2000.0, "model": "w", "status": 200, "alias": "a"}
        | {"candidates": [weak, strong], "cost_usd": 0.5}
    )
    store.flush_sync()
    t = data.refresh().select()[None]
    assert t.requests == 6 and t.saved_usd == pytest.approx(12.5)
    assert store.prune(1001.5) == 2  # r0 and r1
    store.flush_sync()
    t = data.refresh().select()[None]
    assert t.requests == 4 and t.saved_usd == pytest.approx(3.5)
    # a row deleted in the middle (not the oldest) is found by the periodic recount
    delete_trace(db, "r3")
    data.recount_s = 0.0
    t = data.refresh().select()[None]
    assert t.requests == 3 and t.saved_usd == pytest.approx(4.5)
    data.close()
    store.close_sync()


def test_aggregates_group_by_hour_alias_model_key() -> None:
    a = Aggregates()
    a.add_row(3600 * 10 + 5, "k1", "x", "m1", 200, None, False, 100.0, 1.0)
    a.add_row(3600 * 11 + 5, "k2", "x", "m2", 503, None, True, 300.0, 0.0)
    by_model = a.select(by=lambda k: k[2])
    assert by_model["m1"].requests == 1 and by_model["m2"].errors == 1 and by_model["m2"].fallbacks == 1
    assert a.select(since_hour=11)[None].requests == 1
    assert a.select()[None].error_rate == 0.5


def test_explorer_filters_search_and_a_decision(gw: Any) -> None:
    g, ids, _db = gw
    get = lambda q: httpx.get(g.root + "/ui/decisions?" + urllib.parse.urlencode(q), timeout=60)  # noqa: E731
    r = get({"model": "fake-weak"})
    assert r.status_code == 200
    models = re.findall(r"<td>[^<]*</td><td>[^<]*</td><td>([a-z-]+)(?: <span|</td>)", r.text)
    assert models and set(models) == {"fake-weak"}
    r = get({"rule": "code-prompts"})
    links = re.findall(r'href="/ui/decision\?id=([0-9a-f]+)" class="rid"', r.text)
    assert links
    for rid in links[:3]:
        page = httpx.get(g.root + f"/ui/decision?id={rid}", timeout=30).text
        assert "code-prompts" in page
    r = get({"status": "error"})
    assert "<td>502</td>" in r.text and "<td>200</td>" not in r.text
    r = get({"status": "502"})
    assert "<td>502</td>" in r.text and "<td>200</td>" not in r.text
    # out-of-range numbers are not a 500 (SQLite integers are 64-bit; '²' is a digit to str.isdigit)
    for q in ({"offset": str(2**70)}, {"status": str(2**70)}, {"status": "²"}, {"status": "٥٠٢"}):
        assert get(q).status_code == 200, q
    # search by a request id prefix: exactly that request
    rid = ids[100]
    r = get({"q": rid[:10]})
    assert re.findall(r'href="/ui/decision\?id=([0-9a-f]+)" class="rid"', r.text) == [rid]
    # a real request's decision: its candidates with expected quality and cost, the served model
    real = ids[-3]  # the long prompt on llmroute/auto (the stub router's strong model)
    page = httpx.get(g.root + f"/ui/decision?id={real}", timeout=30).text
    assert f'id="rid">{real}<' in page
    assert 'id="served">fake-strong<' in page
    assert page.count("<tr class=") >= 2 and "strongest" in page
    assert httpx.get(g.root + "/ui/decision?id=nope", timeout=30).status_code == 404


def test_quality_router_playground_and_static_pages(gw: Any) -> None:
    g, _ids, _db = gw
    q = httpx.get(g.root + "/ui/quality", timeout=60).text
    assert "calibration" in q and 'id="quality"' in q
    assert "fake-strong" in q
    r = httpx.get(g.root + "/ui/router", timeout=60).text
    assert "<svg" in r and "fake-weak" in r
    p = httpx.get(g.root + "/ui/playground", timeout=60).text
    assert 'id="tradeoff"' in p and "llmroute/cheap" in p
    js = httpx.get(g.root + "/ui/static/app.js", timeout=30)
    assert js.status_code == 200 and "text/javascript" in js.headers["content-type"]
    assert "http://" not in js.text and "https://" not in js.text  # nothing fetched from elsewhere
    css = httpx.get(g.root + "/ui/static/app.css", timeout=30)
    assert css.status_code == 200 and "url(" not in css.text


def test_budgets_and_breakers_on_the_overview(gw: Any) -> None:
    g, _ids, _db = gw
    html = httpx.get(g.root + "/ui?window=24h", timeout=60).text
    budgets = html[html.index('id="budgets"') :]
    for k in ("team-a", "team-b", "team-c"):
        assert k in budgets
    assert "$50.00" in budgets  # the day budget
    # a key created through the admin API (keyless: demo on loopback) is listed with its budget
    r = httpx.post(g.root + "/admin/v1/keys", json={"id": "team-new", "budget_usd_day": 7}, timeout=30)
    assert r.status_code == 201
    html = httpx.get(g.root + "/ui", timeout=60).text
    budgets = html[html.index('id="budgets"') :]
    assert "team-new" in budgets and "$7.0000" in budgets
    breakers = html[html.index('id="breakers"') : html.index('id="budgets"')]
    assert "fake-strong" in breakers and "closed" in breakers


def test_master_key_login_cookie_and_no_demo_off_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMROUTE_TEST_UI_ADMIN", "admin-secret-123")
    with seeded_gateway(tmp_path, n=50, key_env="LLMROUTE_TEST_UI_ADMIN") as (g, _ids, _db):
        c = httpx.Client(base_url=g.root, timeout=30, follow_redirects=False)
        r = c.get("/ui")
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        assert c.get("/ui", headers={"authorization": "Bearer sk-team-a"}).status_code == 303  # an API key
        assert c.get("/ui", headers={"authorization": "Bearer admin-secret-123"}).status_code == 200
        bad = c.post("/ui/login", data={"key": "wrong", "next": "/ui/quality"})
        assert bad.status_code == 303 and "error=1" in bad.headers["location"]
        assert "set-cookie" not in bad.headers
        ok = c.post("/ui/login", data={"key": "admin-secret-123", "next": "/ui/quality"})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/quality"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "admin-secret-123" not in cookie
        assert c.get("/ui/quality").status_code == 200  # the client keeps the cookie
        assert "Max-Age=" in cookie
        value = c.cookies["llmroute_ui"]
        # the value is not derivable from the master key's hash (admin.key_sha256 in a config file)
        digest = hash_key("admin-secret-123")
        old_style = hmac.new(digest.encode(), b"llmroute-ui-session", hashlib.sha256).hexdigest()
        dash = g.app.dashboard
        expired = dash._session_value(digest, int(time.time()) - 1)
        later = str(int(value.partition(".")[0]) + 10**6) + "." + value.partition(".")[2]
        for forged in (old_style, expired, later, "", ".", "9" * 40 + "." + "0" * 64):
            r = httpx.get(g.root + "/ui", cookies={"llmroute_ui": forged}, timeout=30)
            assert r.status_code == 303, forged
        assert httpx.get(g.root + "/ui", cookies={"llmroute_ui": value}, timeout=30).status_code == 200
        off = c.post("/ui/login", data={"key": "admin-secret-123", "next": "https://evil.example/"})
        assert off.headers["location"] == "/ui"  # no open redirect
        c.post("/ui/logout")
        c.cookies.clear()
        assert c.get("/ui").status_code == 303
        # static assets carry no data: served without a key
        assert c.get("/ui/static/app.css").status_code == 200
        c.close()
    # demo mode admits only loopback connections
    dash = g.app.dashboard
    g.app.admin_auth = None
    g.app.config.admin.key_env = None
    g.app.config.admin.demo = True
    local = {"server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5000), "headers": []}
    remote = {"server": ("10.1.2.3", 80), "client": ("10.9.9.9", 5000), "headers": []}
    monkeypatch.delenv("LLMROUTE_BIND_HOST", raising=False)
    assert dash.authorized(local) is True
    assert dash.authorized(remote) is False


def test_make_run_config_serves_the_dashboard_keyless_on_loopback(tmp_path: Path) -> None:
    """examples/llmroute.yaml (`make run`) turns the dashboard on in demo mode: every page answers
    without a key on 127.0.0.1; the router page plots the shipped router's training summary."""
    import os

    from conftest import run_gateway
    from llmroute.gateway.config import load_config

    examples = Path(__file__).resolve().parents[1] / "examples"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["LLMROUTE_STORE_URL"] = f"sqlite:///{tmp_path}/t.sqlite"
    cfg = load_config(examples / "llmroute.yaml", env=env)
    assert cfg.admin.demo is True and cfg.admin.key_env is None and cfg.admin.key_sha256 is None
    with run_gateway(cfg) as g:
        for path in ("/ui", "/ui/decisions", "/ui/quality", "/ui/playground", "/ui/router"):
            r = httpx.get(g.root + path, timeout=60, follow_redirects=False)
            assert r.status_code == 200, path
        router = httpx.get(g.root + "/ui/router", timeout=60).text
        assert "<svg" in router and "claude-sonnet" in router and "gpt-4-1106-preview" in router
        assert "No requests in this window yet." in httpx.get(g.root + "/ui", timeout=60).text


def test_a_memory_store_is_read_through_its_writer_thread() -> None:
    from llmroute.gateway.store import open_store

    store = open_store("memory://")
    for i in range(3):
        store.write({"request_id": f"m{i}", "ts": 7200.0 * i, "model": "w", "status": 200, "cost_usd": 0.5})
    data = DashboardData(store, "memory://", None)
    assert data.warm() is None  # nothing to warm in the background: it is read on the writer thread
    t = data.refresh().select()[None]
    assert t.requests == 3 and t.cost_usd == pytest.approx(1.5) and t.saved_usd == 0.0
    assert [d["request_id"] for d in data.decisions(limit=2)] == ["m2", "m1"]
    store.close_sync()


def test_a_decision_shows_its_cascade_steps_and_feedback(gw: Any) -> None:
    import json

    g, ids, db = gw
    rid = next(
        r
        for r, extra in trace_rows(db, "request_id, extra", "WHERE extra IS NOT NULL")
        if json.loads(extra).get("cascade", {}).get("stop") is not None
    )
    page = httpx.get(g.root + f"/ui/decision?id={rid}", timeout=30).text
    steps = page[page.index('id="cascade"') : page.index("</table>", page.index('id="cascade"'))]
    assert steps.count("<tr><td>") == 2 and "below_threshold" in steps and "passed" in steps
    # the real request that got feedback (0.25) shows it
    page = httpx.get(g.root + f"/ui/decision?id={ids[-2]}", timeout=30).text
    assert 'id="outcome"' in page and "0.25" in page


def test_session_secret_shared_by_the_workers_through_the_shared_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --workers N`: a cookie one worker signed opens the pages at the others."""
    from llmroute.gateway.ui.dashboard import Dashboard

    monkeypatch.setenv("LLMROUTE_SHARED_DIR", str(tmp_path))
    a, b = Dashboard(None), Dashboard(None)  # type: ignore[arg-type]  (no gateway needed)
    value = a._session_value("d" * 64)
    assert b._session_ok(value, "d" * 64) and not b._session_ok(value, "e" * 64)
    assert (tmp_path / "ui-session.key").stat().st_mode & 0o077 == 0
    monkeypatch.delenv("LLMROUTE_SHARED_DIR")
    c = Dashboard(None)  # type: ignore[arg-type]
    assert not c._session_ok(value, "d" * 64)  # another gateway (no shared folder): its own secret
