"""Rule authoring safety: `python -m rules diff` and shadow rules (pure core)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rules.loader import parse_policy
from rules.simulate import run

from .conftest import DAY_MS, DEFAULT_RULES, REPO, T0_MS, alert_bytes

TIGHT_COPYRIGHT = DEFAULT_RULES.read_text().replace(
    "      - {id: copyright-2-suspend-7d, strikes: 2, actions: [stop_stream, {suspend: 7d}]}\n"
    "      - {id: copyright-3-ban, strikes: 3+, actions: [stop_stream, ban]}\n",
    "      - {id: copyright-2-ban, strikes: 2+, actions: [stop_stream, ban]}\n")


@pytest.fixture
def tight_rules(tmp_path):
    assert TIGHT_COPYRIGHT != DEFAULT_RULES.read_text()
    path = tmp_path / "tight.yaml"
    path.write_text(TIGHT_COPYRIGHT)
    return path


def strikes(user: str, vtype: str, n: int) -> list[bytes]:
    return [alert_bytes(alert_id=f"{user}-{vtype}-{i}", user_id=user, stream_id=f"{user}-s{i}", violation_type=vtype,
                        confidence=0.97, event_time_ms=T0_MS + i * DAY_MS) for i in range(n)]


ALERTS = (strikes("two-copyright", "copyright", 2) + strikes("one-copyright", "copyright", 1)
          + strikes("two-hate", "hate_speech", 2) + strikes("three-copyright", "copyright", 3)
          + strikes("review-only", "copyright", 0)
          + [alert_bytes(alert_id="r-1", user_id="review-only", violation_type="copyright", confidence=0.7)])


def rules_cli(*args, stdin: bytes | None = None):
    return subprocess.run([sys.executable, "-m", "rules", *args], cwd=REPO, input=stdin, capture_output=True,
                          check=False, timeout=60)


def test_diff_lists_exactly_the_users_a_tighter_copyright_ladder_affects(tight_rules, tmp_path):
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_bytes(b"\n".join(ALERTS))
    full = tmp_path / "summary.json"
    result = rules_cli("diff", "--old", str(DEFAULT_RULES), "--new", str(tight_rules), "--alerts", str(alerts),
                       "--json-out", str(full))
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout.decode().splitlines()[-1])
    assert summary["changed_users"] == ["three-copyright", "two-copyright"]
    assert summary["totals"]["ban"] == {"old": 1, "new": 2}
    assert summary["totals"]["suspend"] == {"old": 3, "new": 1}  # two-hate keeps its 24 h
    changed = {c["user_id"]: c for c in json.loads(full.read_text())["changed"]}
    assert [a["rule_id"] for a in changed["two-copyright"]["after"]][-1] == "copyright-2-ban"
    report = result.stdout.decode()
    assert "two-copyright: after 3 same action(s): suspend(copyright-2-suspend-7d) -> ban(copyright-2-ban)" in report


def test_diff_exit_codes_and_topic_dump_input(tmp_path):
    dump = tmp_path / "dump.jsonl"
    dump.write_text("\n".join(json.dumps({"topic": "alerts", "partition": 0, "offset": i, "value": line.decode()})
                              for i, line in enumerate(ALERTS)))
    same = rules_cli("diff", "--old", str(DEFAULT_RULES), "--new", str(DEFAULT_RULES), "--alerts", str(dump))
    assert same.returncode == 0
    summary = json.loads(same.stdout.decode().splitlines()[-1])
    assert summary["alerts"] == len(ALERTS) and summary["users_changed"] == 0 and summary["totals"]["ban"]["old"] == 1
    broken = rules_cli("diff", "--old", str(DEFAULT_RULES), "--new", "tests/data/bad_policy.yaml", "--alerts", str(dump))
    assert broken.returncode == 2 and b"13 problems in tests/data/bad_policy.yaml" in broken.stderr


def test_shadow_rules_audit_without_enforcing(policy):
    tight = parse_policy(TIGHT_COPYRIGHT.encode(), "tight.yaml")
    live_only = [json.loads(x) for x in run(policy, ALERTS)]
    with_shadow = [json.loads(x) for x in run(policy, ALERTS, shadow_policy=tight)]
    # The live outputs are unchanged: shadow rules add audit records only.
    assert [r for r in with_shadow if r["record"].get("kind") != "shadow"] == live_only
    shadows = [r["record"] for r in with_shadow if r["record"].get("kind") == "shadow"]
    decided = [r for r in live_only if r["kind"] == "audit" and r["record"]["kind"] in ("decision", "dismissal")]
    assert len(shadows) == len(decided)
    disagree = [s for s in shadows if s["outcome"] == "disagree"]
    # Each shadow decision starts from the live state: the second copyright strike is where the
    # tighter ladder bans instead of suspending; the third (a ban either way) agrees.
    assert sorted((s["alert_ids"][0], s["rule_id"]) for s in disagree) == [
        ("three-copyright-copyright-1", "copyright-2-ban"), ("two-copyright-copyright-1", "copyright-2-ban")]
    second = next(s for s in disagree if s["alert_ids"] == ["two-copyright-copyright-1"])
    assert second["detail"]["live"]["rule_id"] == "copyright-2-suspend-7d"
    assert [a["action"] for a in second["detail"]["shadow"]["actions"]] == ["stop_stream", "ban"]
    third = next(s for s in shadows if s["alert_ids"] == ["three-copyright-copyright-2"])
    assert third["outcome"] == "agree" and third["detail"]["live"]["rule_id"] == "copyright-3-ban"
    assert all(s["rule_set_version"] == tight.version for s in shadows)
    assert second["detail"]["live"]["rule_set_version"] == policy.version
