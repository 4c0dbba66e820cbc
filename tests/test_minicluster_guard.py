"""The detector guard in the job: a flood through the mini-cluster equals `rules simulate`.

The guard's verdicts depend on the order its stage sees alerts in, so the input here reaches it
in one order, as one Kafka partition would deliver it: a collection source at parallelism 1,
watermarks at parallelism 1, in event-time order (what simulate's default order processes)."""

from __future__ import annotations

import json

import pytest

from .conftest import T0_MS, alert_bytes
from .test_minicluster import _event_time, canonical, simulate

pytestmark = pytest.mark.minicluster

MINUTE_MS = 60_000
T0 = T0_MS - T0_MS % MINUTE_MS


def run_in_order(lines: list[bytes], **config_changes) -> list[dict]:
    from pyflink.common import Row

    from connectors import kafka
    from jobs.config import DEFAULT_RULES, JobConfig
    from jobs.flink_env import create_env
    from jobs.pipeline import decide

    config = JobConfig(flink_conf=(("state.backend.type", "hashmap"), ("restart-strategy.type", "none"))).with_(**config_changes)
    env = create_env(config)
    rows = [Row("decisions" if b'"guard_release_id"' in line else "alerts", 0, offset, _event_time(line), line,
                len(line), _event_time(line))
            for offset, line in enumerate(lines)]
    raw = (env.from_collection(rows, type_info=kafka.RAW_ALERT_TYPE)
           .assign_timestamps_and_watermarks(kafka.alert_watermarks(config.max_out_of_orderness_ms,
                                                                    config.idleness_ms))
           .set_parallelism(1))
    outputs = decide(raw, config, DEFAULT_RULES.read_bytes(), str(DEFAULT_RULES))
    with outputs.execute_and_collect("minicluster-guard-test") as results:
        return [{"kind": kind, "key": key, "record": json.loads(value)} for kind, key, value in results]


def flood_with_traffic() -> list[bytes]:
    """3,000 users flagged by one new detector 10 a second (high confidence), a healthy detector's
    alerts among them, and 31 minutes after the flood one more healthy alert (the cool-down)."""
    lines = [alert_bytes(alert_id=f"nsfw-v9-{i:06d}", user_id=f"user-{i:06d}", stream_id=f"live-{i:06d}",
                         detector_id="vision-nsfw-v9", violation_type="nudity", confidence=0.97,
                         event_time_ms=T0 + i * 100)
             for i in range(3000)]
    for i in range(0, 3000, 10):
        lines.append(alert_bytes(alert_id=f"hate-{i}", user_id=f"user-{i % 500:06d}", stream_id=f"chat-{i}",
                                 detector_id="text-hate-v3", violation_type="hate_speech", confidence=0.93,
                                 event_time_ms=T0 + i * 100 + 50))
    lines.append(alert_bytes(alert_id="hate-after", user_id="user-after", stream_id="chat-after",
                             detector_id="text-hate-v3", violation_type="hate_speech", confidence=0.93,
                             event_time_ms=T0 + 300_000 + 31 * MINUTE_MS))
    return sorted(lines, key=_event_time)


def test_flood_in_the_job_equals_rules_simulate():
    lines = flood_with_traffic()
    job = run_in_order(lines)
    sim = [r for r in simulate(lines) if r["kind"] != "rejection"]
    guard = [(r["record"]["outcome"], r["record"]["detail"]["detector_id"])
             for r in job if r["kind"] == "audit" and r["record"]["kind"] == "detector_guard"]
    assert guard == [("tripped", "vision-nsfw-v9"), ("released", "vision-nsfw-v9")]
    flood = [r for r in job if r["kind"] == "enforcement" and r["record"]["cause"].startswith("alert:nsfw-v9")]
    reviews = [r for r in job if r["kind"] == "review" and r["record"].get("reason") == "detector_guard"]
    assert (len(flood), len(reviews)) == (2000, 1000)
    assert canonical(job) == canonical(sim)


def test_an_operator_release_in_the_job_equals_rules_simulate():
    """The flood, then a signed release on the decisions topic, then the flood detector again 11
    minutes after its last alert: released, it penalises (the cool-down alone would still hold it).
    A forged release among them is dead-lettered and changes nothing."""
    from .test_detector_guard import release_line

    lines = [line for line in flood_with_traffic() if b"hate-after" not in line]
    last_ms = T0 + 2999 * 100
    lines.append(release_line("vision-nsfw-v9", "op-1", last_ms + 1000, signature="0" * 64))
    lines.append(release_line("vision-nsfw-v9", "op-1", last_ms + 2000))
    lines.append(alert_bytes(alert_id="nsfw-v9-after", user_id="user-after", stream_id="live-after",
                             detector_id="vision-nsfw-v9", violation_type="nudity", confidence=0.97,
                             event_time_ms=last_ms + 11 * MINUTE_MS))
    job = run_in_order(lines)
    sim = simulate(lines)
    assert [r["record"]["reason"] for r in sim if r["kind"] == "rejection"] == ["invalid_signature"]
    dlq = [r["record"] for r in job if r["kind"] == "dlq"]
    assert [(d["reason"], d["source"]["topic"]) for d in dlq] == [("invalid_signature", "decisions")]
    guard = [(r["record"]["outcome"], r["record"]["detail"].get("released_by"))
             for r in job if r["kind"] == "audit" and r["record"]["kind"] == "detector_guard"]
    assert guard == [("tripped", None), ("released", "operator:op-1")]
    assert any(r["kind"] == "enforcement" and r["record"]["user_id"] == "user-after" for r in job)
    assert canonical([r for r in job if r["kind"] != "dlq"]) == canonical([r for r in sim if r["kind"] != "rejection"])
