"""The PrometheusRule in k8s/base: promtool checks the rules and runs their unit tests.

promtool comes from Debian's `prometheus` package (tools/install.sh --test installs it);
the tests skip without it, except under CI, which must run them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import need_tool

ROOT = Path(__file__).resolve().parent.parent
RULE = ROOT / "k8s" / "base" / "prometheusrule.yaml"
RULE_TESTS = ROOT / "k8s" / "monitoring" / "relais-rules.test.yaml"


def promtool() -> str:
    return need_tool("promtool", "prometheus")


@pytest.fixture()
def rule_file(tmp_path) -> Path:
    """The PrometheusRule's spec as a plain Prometheus rule file, beside a copy of its unit tests."""
    doc = yaml.safe_load(RULE.read_text())
    path = tmp_path / "relais-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    return path


def test_rules_are_valid(rule_file):
    done = subprocess.run([promtool(), "check", "rules", str(rule_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_rule_unit_tests_pass(rule_file):
    done = subprocess.run([promtool(), "test", "rules", str(rule_file.parent / RULE_TESTS.name)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_expectation_fails(rule_file, tmp_path):
    """The rule tests can fail: the same tests against a rule with its threshold moved do."""
    rules = yaml.safe_load(rule_file.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "RelaisOutputLagAboveSLO":
                rule["expr"] = rule["expr"].replace("> 2", "> 5")
    rule_file.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool(), "test", "rules", str(tmp_path / RULE_TESTS.name)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "RelaisOutputLagAboveSLO" in done.stdout + done.stderr


def test_every_alert_is_explained_in_the_operations_doc():
    doc = yaml.safe_load(RULE.read_text())
    alerts = [r["alert"] for g in doc["spec"]["groups"] for r in g["rules"] if "alert" in r]
    text = (ROOT / "docs" / "operations.md").read_text()
    assert len(alerts) >= 5
    for alert in alerts:
        assert alert in text, f"{alert} is not described in docs/operations.md"
