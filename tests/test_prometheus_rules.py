"""The alert rules, checked by the real Prometheus tools: promtool (Debian's `prometheus` package,
installed by scripts/setup.sh) validates deploy/prometheus/alerts.yml and prometheus.yml and runs
the unit tests in alerts.test.yml on synthetic series; every alert there must have a case where it
fires and one where it stays quiet. No JVM, no broker."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict

import pytest
import yaml

from .conftest import REPO

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: run scripts/setup.sh (`make test` does), which installs Debian's "
                    "prometheus package")
    return path


def run_promtool(promtool: str, *args: str) -> str:
    """promtool's output; the test fails with all of it when promtool exits non-zero."""
    done = subprocess.run([promtool, *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=120)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"promtool {' '.join(args)} exited {done.returncode}:\n{output}", pytrace=False)
    return output


def test_alert_rules_are_valid(promtool):
    assert "SUCCESS" in run_promtool(promtool, "check", "rules", str(ALERT_RULES.relative_to(REPO)))


def test_alert_rules_pass_their_unit_tests(promtool):
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", str(RULE_TESTS.relative_to(REPO)))


def test_prometheus_config_is_valid(promtool):
    # --syntax-only: the config names its rule file by its path in the container
    # (/etc/prometheus/alerts.yml); the rules are checked above and the mount by test_deploy.py.
    assert "SUCCESS" in run_promtool(promtool, "check", "config", "--syntax-only",
                                     str((PROMETHEUS_DIR / "prometheus.yml").relative_to(REPO)))


def alert_names(rules_doc: dict) -> list[str]:
    return [rule["alert"] for group in rules_doc["groups"] for rule in group["rules"] if "alert" in rule]


def cases_by_alert(tests_doc: dict) -> dict[str, set[str]]:
    """Alert name -> the kinds of its cases in a promtool test file: "fires", "quiet"."""
    kinds: dict[str, set[str]] = defaultdict(set)
    for group in tests_doc["tests"]:
        for case in group.get("alert_rule_test", []):
            kinds[case["alertname"]].add("fires" if case.get("exp_alerts") else "quiet")
    return kinds


def test_every_alert_has_a_firing_and_a_quiet_case():
    rules_doc = yaml.safe_load(ALERT_RULES.read_text())
    tests_doc = yaml.safe_load(RULE_TESTS.read_text())
    names = alert_names(rules_doc)
    assert tests_doc["rule_files"] == [ALERT_RULES.name]
    cases = cases_by_alert(tests_doc)
    missing = {name: sorted({"fires", "quiet"} - cases.get(name, set())) for name in names}
    assert {name: kinds for name, kinds in missing.items() if kinds} == {}
    assert sorted(set(cases) - set(names)) == [], "cases of alerts that alerts.yml does not have"


def test_the_coverage_check_sees_a_missing_case():
    rules_doc = {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up == 0"},
                                                    {"record": "r", "expr": "sum(up)"}]}]}
    tests_doc = {"tests": [{"alert_rule_test": [{"eval_time": "1m", "alertname": "A", "exp_alerts": []}]}]}
    assert alert_names(rules_doc) == ["A"]
    assert cases_by_alert(tests_doc) == {"A": {"quiet"}}
