"""The dashboard in a real browser: headless Chromium from the OS packages (/usr/bin/chromium, which
`make test` installs), driven by Playwright. Each page is loaded with seeded traces, filters are
clicked, a decision opened, the playground's slider moved; a screenshot of each step is saved
under out/ui-screenshots/ (gitignored), and any JavaScript console error or uncaught exception
fails the test.

Skipped when Chromium or Playwright is missing, unless LLMROUTE_REQUIRE_BROWSER=1 (`make test`
sets it, so CI cannot skip them silently)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ui_fixtures import recompute, seeded_gateway

CHROMIUM = os.environ.get("LLMROUTE_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[1] / "out" / "ui-screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing() -> str | None:
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; `make test` does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


_why = _missing()
if _why is not None and os.environ.get("LLMROUTE_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"browser tests required (LLMROUTE_REQUIRE_BROWSER=1) but {_why}")
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[str], Path]]:
    with seeded_gateway(tmp_path_factory.mktemp("ui-browser")) as g:
        yield g


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        # launch() gives Chromium a fresh temporary --user-data-dir of its own
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A fresh browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, root: str) -> None:
        self.ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.ctx.new_page()
        self.page.set_default_timeout(30_000)
        self.root = root
        self.errors: list[str] = []
        self.page.on(
            "console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"exception: {e}"))

    def goto(self, path: str) -> Any:
        resp = self.page.goto(self.root + path, wait_until="load")
        return resp

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.ctx.close()
        assert self.errors == [], self.errors


@pytest.fixture
def page(browser: Any, gw: Any) -> Iterator[Page]:
    p = Page(browser, gw[0].root)
    yield p
    p.close()


@pytest.mark.parametrize("path", ["/ui", "/ui/decisions", "/ui/quality", "/ui/playground", "/ui/router"])
def test_each_page_loads_without_javascript_errors(page: Page, path: str) -> None:
    resp = page.goto(path)
    assert resp.status == 200
    assert page.page.locator("h1").inner_text()
    if path == "/ui/playground":  # with API keys configured it routes once a key is given
        assert page.page.locator("#playground").get_attribute("data-state") == "needs-key"
        page.page.fill("#apikey", "sk-team-b")
        page.page.click("#route")
        page.page.wait_for_selector("#playground[data-state=done]")
    page.shot(("page" + path.replace("/", "-")).rstrip("-"))


def test_overview_shows_the_recomputed_savings(page: Page, gw: Any) -> None:
    _g, _ids, db = gw
    page.goto("/ui")
    want = recompute(db)
    shown = page.page.locator("#saved-total").inner_text()
    assert abs(float(shown.replace("$", "").replace(",", "")) - want["saved"]) < 0.005
    assert page.page.locator("#assumption").is_visible()
    assert page.page.locator("svg.chart").count() == 4
    page.page.click("a[data-window='24h']")
    page.page.wait_for_url("**/ui?window=24h")
    page.shot("overview-24h")


def test_explorer_filters_and_opening_a_decision(page: Page, gw: Any) -> None:
    _g, ids, _db = gw
    p = page.page
    page.goto("/ui/decisions")
    p.select_option("#f-model", "fake-weak")  # the form submits on change
    p.wait_for_url("**model=fake-weak**")
    served = p.locator("#decisions tbody tr td:nth-child(5)").all_inner_texts()
    assert served and all(s.startswith("fake-weak") for s in served)
    p.select_option("#f-rule", "code-prompts")
    p.wait_for_url("**rule=code-prompts**")
    page.shot("decisions-filtered")
    rows = p.locator("#decisions tbody tr[data-href]")
    assert rows.count() > 0
    rows.first.locator("td").nth(2).click()  # a click anywhere on the row opens the decision
    p.wait_for_url("**/ui/decision?id=**")
    assert "code-prompts" in p.locator("#rules-explanation").inner_text()
    assert p.locator("#candidates tbody tr").count() == 2
    assert p.locator("#served").inner_text() == "fake-weak"
    page.shot("decision")
    # search by request id
    page.goto("/ui/decisions")
    p.fill("#q", ids[-3][:12])
    p.click("#filters button[type=submit]")
    p.wait_for_url("**q=**")
    assert p.locator("#decisions a.rid").all_inner_texts() == [ids[-3][:12]]
    p.click("#decisions a.rid")
    p.wait_for_url("**/ui/decision?id=**")
    assert p.locator("#rid").inner_text() == ids[-3]
    page.shot("decision-real")


def test_playground_slider_moves_the_pick(page: Page) -> None:
    p = page.page
    page.goto("/ui/playground")
    p.fill("#apikey", "sk-team-a")
    p.fill("#prompt", "Explain, step by step and with a proof, why the halting problem is undecidable. " * 3)
    slider = p.locator("#tradeoff")
    slider.focus()
    p.keyboard.press("Home")  # lambda 0: quality only
    p.wait_for_selector("#ranked[data-tradeoff='0']")
    p.wait_for_selector("#playground[data-state=done]")
    assert p.locator("#ranked").get_attribute("data-model") == "fake-strong"
    assert p.locator("#tradeoff-value").inner_text() == "0"
    page.shot("playground-quality")
    p.keyboard.press("End")  # lambda 1000: cost first
    p.wait_for_selector("#ranked[data-tradeoff='1000']")
    p.wait_for_selector("#playground[data-state=done]")
    assert p.locator("#ranked").get_attribute("data-model") == "fake-weak"
    assert p.locator("#ranked tbody tr").count() == 2
    assert p.locator("#ranked tbody tr.chosen td").nth(1).inner_text() == "fake-weak"
    page.shot("playground-cost")


def test_a_console_error_is_caught(browser: Any, gw: Any) -> None:
    """The error check itself: a page whose script throws is reported."""
    p = Page(browser, gw[0].root)
    p.goto("/ui/router")
    with p.page.expect_event("pageerror"):
        p.page.evaluate("() => setTimeout(() => { throw new Error('boom'); }, 0)")
    with p.page.expect_event("console"):
        p.page.evaluate("() => console.error('bad')")
    p.ctx.close()
    assert any("boom" in e for e in p.errors) and any("bad" in e for e in p.errors)


def test_dashboard_benchmark_runs_on_a_small_store(tmp_path: Path) -> None:
    """benchmarks/dashboard.py end to end on 300 traces (server time and first paint per page); in a
    process of its own (Playwright's sync API cannot start beside this module's browser)."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "dashboard.json"
    args = ["--traces", "300", "--repeats", "1", "--no-md", "--out", str(out), "--chromium", CHROMIUM]
    r = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "dashboard.py"), *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["traces"] == 300
    pages = {x["page"] for x in result["pages"]}
    assert {"/ui", "/ui/decisions", "/ui/decision", "/ui/quality", "/ui/playground", "/ui/router"} <= pages
    assert all(x["server_ms_median"] >= 0 and x["fcp_ms_median"] > 0 for x in result["pages"])
