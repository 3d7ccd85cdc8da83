"""`rules explain` and verdict reasons list only the conditions that held (issue 10, item 4), and a
verdict says which rule set each policy override."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from llmroute.signals.engine import RuleEngine

SIGNALS = {
    "code": {"type": "keywords", "keywords": ["python", "rust"]},
    "math": {"type": "keywords", "keywords": ["integral", "prove"]},
    "rude": {"type": "keywords", "keywords": ["stupid"]},
}
RULES = [
    {"name": "either", "priority": 30, "when": {"any": [{"signal": "math"}, {"signal": "code"}]},
     "action": {"type": "set", "tradeoff": 5}},
    {"name": "polite-code", "priority": 20,
     "when": {"all": [{"signal": "code"}, {"not": {"signal": "rude"}}]},
     "action": {"type": "set", "tradeoff": 50, "max_cost": 0.01}},
    {"name": "not-both", "priority": 10,
     "when": {"not": {"all": [{"signal": "code"}, {"signal": "math"}]}},
     "action": {"type": "set", "min_quality": 0.5}},
    {"name": "long", "priority": 5, "when": {"signal": "tokens", "gt": 3}, "action": {"type": "set", "tradeoff": 9}},
]  # fmt: skip


def engine() -> RuleEngine:
    return RuleEngine({"signals": SIGNALS, "rules": RULES}, encoder="hash")


def test_reasons_list_only_conditions_that_held() -> None:
    v = engine().evaluate("write a python function for me")
    assert v.applied == ["either", "polite-code", "not-both", "long"]
    # any: the math branch was computed and did not hold: not listed
    assert v.reasons["either"] == "code [code=['python']]"
    assert "math" not in v.reasons["either"]
    # all + not: the code branch held, rude did not (so its negation held)
    assert v.reasons["polite-code"] == "code [code=['python']]; not (rude) [rude=[]]"
    # not(all): held because math failed; the code predicate (which held) is not a reason
    assert v.reasons["not-both"] == "not (math) [math=[]]"
    assert v.reasons["long"] == "tokens>3.0 [tokens=7]"


def test_verdict_says_which_rule_set_each_override() -> None:
    v = engine().evaluate("write a python function for me")
    assert v.overrides == {"tradeoff": 5, "max_cost": 0.01, "min_quality": 0.5}
    assert v.set_by == {"tradeoff": "either", "max_cost": "polite-code", "min_quality": "not-both"}
    assert v.trace()["set_by"] == v.set_by


def test_cli_explain_shows_only_what_held(tmp_path: Path) -> None:
    from llmroute.signals.cli import app

    cfg = tmp_path / "rules.yaml"
    cfg.write_text(yaml.safe_dump({"signals": SIGNALS, "rules": RULES}))
    r = CliRunner().invoke(app, ["explain", "--config", str(cfg), "--encoder", "hash", "prove this integral"])
    assert r.exit_code == 0, r.output
    fired = r.output.split("rules fired:")[1].split("winner:")[0]
    assert "either: math [math=['integral', 'prove']]" in fired
    assert "code" not in fired.split("either:")[1].split("\n")[0]  # code did not hold
    assert "polite-code" not in fired  # did not fire
    assert "not-both: not (code) [code=[]]" in fired
