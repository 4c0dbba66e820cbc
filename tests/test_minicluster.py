"""The Flink operators on a local mini-cluster (parallelism 2, bounded input) against the pure core.

The job and `python -m rules simulate` must give the same records for the same alerts, strike
expiries fired by the operator's event-time timer included.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import DAY_MS, REPO, T0_MS, alert_bytes

pytestmark = pytest.mark.minicluster


def run_operators(lines: list[bytes], shadow: tuple[bytes, str] | None = None, **config_changes) -> list[dict]:
    from pyflink.common import Row, Types

    from connectors import kafka
    from jobs.config import DEFAULT_RULES, JobConfig
    from jobs.flink_env import create_env
    from jobs.pipeline import decide

    config = JobConfig(flink_conf=(("state.backend.type", "hashmap"), ("restart-strategy.type", "none"))).with_(**config_changes)
    env = create_env(config)
    rows = [Row("alerts", 0, offset, _event_time(line), line, len(line), _event_time(line))
            for offset, line in enumerate(lines)]
    # The collection source has parallelism 1; route each user's records to one parse subtask so
    # the keyed operator sees them in input order, as `simulate` does. (With Kafka, order holds
    # per partition; decisions inside one incident depend on arrival order by design.)
    raw = (env.from_collection(rows, type_info=kafka.RAW_ALERT_TYPE)
           .key_by(_user_of, key_type=Types.STRING())
           .map(lambda row: row, output_type=kafka.RAW_ALERT_TYPE)
           .assign_timestamps_and_watermarks(kafka.alert_watermarks(config.max_out_of_orderness_ms,
                                                                    config.idleness_ms)))
    policy_bytes = DEFAULT_RULES.read_bytes()
    outputs = decide(raw, config, policy_bytes, str(DEFAULT_RULES), shadow)
    with outputs.execute_and_collect("minicluster-test") as results:
        return [{"kind": kind, "key": key, "record": json.loads(value)} for kind, key, value in results]


def _user_of(row) -> str:
    try:
        return str(json.loads(bytes(row[4]))["user_id"])
    except Exception:  # noqa: BLE001 - malformed lines
        return ""


def _event_time(line: bytes) -> int:
    try:
        return int(json.loads(line)["event_time_ms"])
    except Exception:  # noqa: BLE001 - malformed lines: any timestamp
        return T0_MS


def simulate(lines: list[bytes], *extra: str) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "rules", "simulate", "--alerts", "-", *extra], cwd=REPO,
                            input=b"\n".join(lines), capture_output=True, timeout=120, check=True)
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def canonical(records: list[dict]) -> list[str]:
    kind_names = {"notifications": "notification", "dlq": "dlq"}
    out = []
    for r in records:
        kind = kind_names.get(r["kind"], r["kind"])
        out.append(json.dumps({"kind": kind, "key": r["key"], "record": r["record"]}, sort_keys=True))
    return sorted(out)


@pytest.mark.parametrize("state_cache_users", [10_000, 1, 0], ids=["cache", "cache-of-1", "no-cache"])
def test_operator_and_simulate_agree_including_timer_expiry(state_cache_users):
    """Also with the read cache evicting at every other user (1) and off (0): the cache changes
    where reads come from, never what the job decides."""
    from devtools.generator import AlertGenerator, Mix

    # 4 hours of event time between alerts: over 2,000 alerts strikes of 30 and 90 days expire
    # by the operator's timers while the stream runs, and the rest when the input ends.
    gen = AlertGenerator(seed=11, users=40, start_ms=T0_MS, step_ms=4 * 3_600_000, mix=Mix(malformed=0, oversized=0))
    lines = [line for line in gen.payloads(2000) if line]
    lines.sort(key=_event_time)  # simulate orders by event time; feed the job the same order
    job = run_operators(lines, state_cache_users=state_cache_users)
    sim = [r for r in simulate(lines) if r["kind"] != "rejection"]
    expiries = [r for r in job if r["kind"] == "audit" and r["record"]["kind"] == "strike_expired"]
    assert len(expiries) > 100
    assert sum(r["kind"] == "enforcement" for r in job) > 200
    assert canonical(job) == canonical(sim)


def test_bad_records_become_dlq_records_and_the_job_keeps_going():
    lines = [b"{broken", alert_bytes(alert_id="a-1"), b"\xff", alert_bytes(alert_id="a-1"),
             alert_bytes(alert_id="a-2", confidence=2.0)]
    out = run_operators(lines)
    dlq = sorted(r["record"]["reason"] for r in out if r["kind"] == "dlq")
    assert dlq == ["not_json", "not_utf8", "schema"]
    positions = sorted(r["record"]["source"]["offset"] for r in out if r["kind"] == "dlq")
    assert positions == [0, 2, 4]
    assert [r["record"]["action"] for r in out if r["kind"] == "enforcement"] == ["warning"]


def test_strike_expires_by_timer_in_the_operator():
    lines = [alert_bytes(alert_id="a-1", event_time_ms=T0_MS),
             alert_bytes(alert_id="b-1", user_id="other", event_time_ms=T0_MS + 91 * DAY_MS)]
    out = run_operators(lines)
    expired = [r["record"] for r in out if r["kind"] == "audit" and r["record"]["kind"] == "strike_expired"]
    assert [(e["user_id"], e["event_time_ms"]) for e in expired] == [("u-1", T0_MS + 90 * DAY_MS),
                                                                       ("other", T0_MS + 181 * DAY_MS)]


def test_plan_has_stable_uids_for_every_stateful_operator():
    from jobs.config import DEFAULT_RULES, JobConfig
    from jobs.flink_env import create_env
    from jobs.pipeline import UIDS, build_pipeline

    env = create_env(JobConfig())
    build_pipeline(env, JobConfig(), DEFAULT_RULES.read_bytes(), str(DEFAULT_RULES))
    j_graph = env._j_stream_execution_environment.getStreamGraph()
    uids = {node.getTransformationUID() for node in j_graph.getStreamNodes().toArray()}
    assert set(UIDS.values()) <= {u for u in uids if u}


def test_shadow_rules_in_the_job_never_enforce_and_audit_what_the_core_predicts(tmp_path):
    from .test_rule_safety import ALERTS, TIGHT_COPYRIGHT

    shadow_file = tmp_path / "tight.yaml"
    shadow_file.write_text(TIGHT_COPYRIGHT)
    lines = sorted(ALERTS, key=_event_time)
    job = run_operators(lines, shadow=(TIGHT_COPYRIGHT.encode(), str(shadow_file)))
    live = run_operators(lines)
    # Enforcement (and everything but the shadow audit records) is what the live rules alone give.
    not_shadow = [r for r in job if r["record"].get("kind") != "shadow"]
    assert canonical(not_shadow) == canonical(live)
    predicted = simulate(lines, "--shadow-rules", str(shadow_file))
    shadows = [r for r in job if r["record"].get("kind") == "shadow"]
    assert len(shadows) == 9 and sum(r["record"]["outcome"] == "disagree" for r in shadows) == 2
    assert canonical(shadows) == canonical([r for r in predicted if r["record"].get("kind") == "shadow"])
