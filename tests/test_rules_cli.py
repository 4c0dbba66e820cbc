"""`python -m rules validate | simulate | catalog`: the contract rule authors and tools rely on."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import DEFAULT_RULES, REPO, T0_MS, alert_bytes

DATA = REPO / "tests" / "data"


def rules_cli(*args, stdin: bytes | None = None):
    return subprocess.run([sys.executable, "-m", "rules", *args], cwd=REPO, input=stdin,
                          capture_output=True, check=False, timeout=60)


def test_validate_ok_prints_one_summary_line_per_file():
    result = rules_cli("validate", str(DEFAULT_RULES), str(DEFAULT_RULES))
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 2 and all(": ok: rule set 'default' sha256:" in line for line in lines)


def test_validate_lists_every_problem_with_file_and_line_golden():
    result = rules_cli("validate", "tests/data/bad_policy.yaml")
    assert result.returncode == 2
    assert result.stdout.decode() == (DATA / "bad_policy.expected").read_text()


def test_validate_missing_file_and_yaml_syntax_error(tmp_path):
    broken = tmp_path / "syntax.yaml"
    broken.write_text("rule_set: x\ncategories: [\n")
    result = rules_cli("validate", str(tmp_path / "nope.yaml"), str(broken))
    out = result.stdout.decode().splitlines()
    assert result.returncode == 2
    assert out[0] == f"{tmp_path / 'nope.yaml'}:1: cannot read rule file: No such file or directory"
    assert out[1].startswith(f"{broken}:") and "Traceback" not in result.stderr.decode()


def test_simulate_prints_records_and_reports_bad_lines(tmp_path):
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_bytes(b"\n".join([
        alert_bytes(alert_id="a-1", confidence=0.95),
        b"{broken",
        alert_bytes(alert_id="a-1", confidence=0.95),  # retry
        alert_bytes(alert_id="a-2", confidence=0.7, stream_id="s-2", event_time_ms=T0_MS + 1000),
    ]))
    result = rules_cli("simulate", "--rules", str(DEFAULT_RULES), "--alerts", str(alerts))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert records[0] == {"kind": "rejection", "key": None,
                          "record": {"line": 2, "reason": "not_json", "detail": records[0]["record"]["detail"]}}
    kinds = [r["kind"] for r in records[1:]]
    assert kinds.count("enforcement") == 1 and kinds.count("review") == 1
    # Drained at end of input: the strike's expiry is in the output too.
    assert any(r["kind"] == "audit" and r["record"]["kind"] == "strike_expired" for r in records)
    again = rules_cli("simulate", "--alerts", "-", stdin=alerts.read_bytes())
    assert again.stdout == result.stdout


def test_simulate_with_a_broken_rule_file_exits_2(tmp_path):
    result = rules_cli("simulate", "--rules", "tests/data/bad_policy.yaml", "--alerts", "-", stdin=b"")
    assert result.returncode == 2 and b"13 problems" in result.stderr


def test_catalog_lists_actions_decisions_and_keys():
    text = rules_cli("catalog").stdout.decode()
    for word in ("warning", "stop_stream", "suspend", "ban", "enforce", "review", "dismiss", "strike_expiry"):
        assert word in text
    catalog = json.loads(rules_cli("catalog", "--json").stdout)
    assert set(catalog["actions"]) == {"warning", "stop_stream", "suspend", "ban"}
    assert catalog["actions"]["suspend"]["parameter"] == "duration"


def test_simulate_in_input_order_rejects_alerts_older_than_the_horizon():
    lines = b"\n".join([alert_bytes(alert_id="a-1", event_time_ms=T0_MS + 2 * 86_400_000),
                        alert_bytes(alert_id="a-2", user_id="u-2", event_time_ms=T0_MS)])
    result = rules_cli("simulate", "--order", "input", "--alerts", "-", stdin=lines)
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    [late] = [r for r in records if r["kind"] == "dlq"]
    assert late["record"]["reason"] == "too_late" and late["key"] == "u-2"
    # In event-time order nothing is late.
    result = rules_cli("simulate", "--alerts", "-", stdin=lines)
    assert b'"kind":"dlq"' not in result.stdout
