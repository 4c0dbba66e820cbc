"""Real stack: the whole job on the local broker with a mixed stream of valid alerts, retries,
several detectors on one moment, malformed records and late alerts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from devtools.localstack import create_topics
from jobs.config import Topics

from .conftest import DAY_MS, REPO, alert_bytes
from .stack_helpers import JobProcess, produce, read_committed

pytestmark = pytest.mark.stack


def simulate(lines: list[bytes]) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "rules", "simulate", "--order", "input", "--no-drain",
                             "--alerts", "-"], cwd=REPO,
                            input=b"\n".join(lines), capture_output=True, timeout=120, check=True)
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def test_mixed_stream_gives_exactly_the_expected_dlq_records_and_incidents(stack, tmp_path):
    topics = Topics().prefixed("ingest-")
    create_topics(stack.bootstrap, topics.partitions())
    now = int(time.time() * 1000)
    t0 = now - 3 * DAY_MS
    valid = [
        alert_bytes(alert_id="v-1", user_id="u-1", stream_id="s-1", confidence=0.95, event_time_ms=t0),
        alert_bytes(alert_id="v-2", user_id="u-1", stream_id="s-1", detector_id="det-2", confidence=0.97,
                    event_time_ms=t0 + 20_000),  # second detector, same moment: merged
        alert_bytes(alert_id="v-3", user_id="u-2", stream_id="s-2", violation_type="copyright",
                    confidence=0.7, event_time_ms=t0 + 1_000),  # review ...
        alert_bytes(alert_id="v-4", user_id="u-2", stream_id="s-2", violation_type="copyright",
                    detector_id="det-9", confidence=0.93, event_time_ms=t0 + 30_000),  # ... upgraded
        alert_bytes(alert_id="v-5", user_id="u-3", stream_id="s-3", violation_type="spam",
                    confidence=0.3, event_time_ms=t0 + 2_000),  # dismissed
        alert_bytes(alert_id="v-6", user_id="u-1", stream_id="s-4", violation_type="nudity",
                    confidence=0.99, event_time_ms=t0 - 3_600_000),  # out of order, within the horizon
    ]
    retries = [valid[0], valid[2]]
    malformed = [b"{oops", b"\xff\xfe", alert_bytes(alert_id="bad", confidence=3.0),
                 json.dumps({"alert_id": "big", "pad": "x" * 70_000}).encode(), b""]
    # All on partition 0, in this order, so the DLQ offsets are known.
    phase1 = valid[:3] + retries[:1] + malformed[:2] + valid[3:] + retries[1:] + malformed[2:]
    produce(stack.bootstrap, topics.alerts, phase1, partition=0)
    job = JobProcess(["--bootstrap-servers", stack.bootstrap, "--topic-prefix", "ingest-",
                      "--starting-offsets", "committed", "--group-id", "ingest-test", "--idleness-ms", "1000",
                      "--checkpoint-dir", str(tmp_path / "checkpoints")], tmp_path / "job.log")
    try:
        # The oracle: the pure core over the valid alerts in the order the job reads them.
        expected = [r for r in simulate([v for v in phase1 if v in valid]) if r["kind"] != "rejection"]
        by_kind = {k: [r for r in expected if r["kind"] == k] for k in ("enforcement", "audit", "review")}
        got_enf = read_committed(stack.bootstrap, topics.enforcement, len(by_kind["enforcement"]), 120)
        assert got_enf, f"no enforcement records; job log:\n{job.tail()}"
        # Phase 2: an alert two days later moves the watermark; then one older than the horizon.
        produce(stack.bootstrap, topics.alerts, [alert_bytes(alert_id="f-1", user_id="u-9", stream_id="s-9",
                                                             confidence=0.1, event_time_ms=t0 + 2 * DAY_MS)], partition=1)
        time.sleep(4)  # idleness (1 s) of the other partitions + watermark interval
        produce(stack.bootstrap, topics.alerts, [alert_bytes(alert_id="late-1", user_id="u-8", stream_id="s-8",
                                                             event_time_ms=t0)], partition=1)
        dlq = read_committed(stack.bootstrap, topics.dlq, len(malformed) + 1, 60)
        audit = read_committed(stack.bootstrap, topics.audit, len(by_kind["audit"]) + 1, 30)
        review = read_committed(stack.bootstrap, topics.review, len(by_kind["review"]), 10)
    finally:
        job.kill()

    # DLQ: one record per malformed input, with its reason and source position, plus the late one.
    reasons = sorted((d["record"]["reason"], d["record"]["source"]["offset"]) for d in dlq)
    assert reasons == sorted([("not_json", 4), ("not_utf8", 5), ("schema", 10), ("too_large", 11),
                              ("empty", 12), ("too_late", None)])
    [late] = [d["record"] for d in dlq if d["record"]["reason"] == "too_late"]
    assert json.loads(late["raw"])["alert_id"] == "late-1" and late["user_id"] == "u-8"
    big = next(d["record"] for d in dlq if d["record"]["reason"] == "too_large")
    assert big["size_bytes"] > 70_000 and big["raw_truncated"] and len(big["raw"]) <= 4096

    # Decisions: exactly what the pure core says for the valid alerts (retries dropped).
    def ids(records, field):
        return sorted(r["record"][field] for r in records)

    assert ids(got_enf, "penalty_id") == ids(by_kind["enforcement"], "penalty_id")
    assert ids(review, "review_id") == ids(by_kind["review"], "review_id")
    job_audit = [a for a in audit if a["record"]["user_id"] != "u-9"]
    assert ids(job_audit, "audit_id") == ids(by_kind["audit"], "audit_id")
    # Incidents: u-1 has two (hate_speech on s-1 with both detectors, nudity on s-4), u-2 one.
    incidents = {(a["record"]["user_id"], a["record"]["incident_id"], tuple(a["record"]["alert_ids"]))
                 for a in job_audit if a["record"]["kind"] in ("decision", "merge")}
    merged = [i for i in incidents if len(i[2]) == 2]
    assert sorted(i[2] for i in merged) == [("v-1", "v-2"), ("v-3", "v-4")]
    assert len({i[1] for i in incidents if i[0] == "u-1"}) == 2
    # v-6 arrived after v-1 but happened an hour earlier: it counts the strikes at its own event
    # time (none), so it is a first strike too.
    assert sorted(e["record"]["rule_id"] for e in got_enf if e["record"]["user_id"] == "u-1") == [
        "standard-1-warning", "standard-1-warning"]
    assert [e["record"]["cause"] for e in got_enf if e["record"]["user_id"] == "u-2"] == ["upgrade:v-4", "upgrade:v-4"]
