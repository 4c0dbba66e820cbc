"""Fault: users live on 3 streams at once, so each user's alerts arrive on
several partitions of `alerts` (keyed by stream id) and are read by different source subtasks,
with event times out of order within the job's bounded out-of-orderness (jobs/config.py,
max_out_of_orderness_ms). The job's enforcement, notification, review and audit records must
equal the `python -m rules simulate` oracle's exactly: incidents deduplicated across detectors,
strikes escalating across the streams of one user.

The core decides a user's alerts in the order they arrive (a late alert counts strikes at its own
event time), and Kafka orders records per partition only. So that the oracle knows the order the
job saw, the alerts come in phases: within a phase every user is on one stream (one partition)
and the phase is produced only after the job has read and checkpointed the one before (its
committed group offsets reach the end of every partition). Between phases a user moves to
another stream and partition, and event times run backwards within a phase and across phases
(by less than the bounded out-of-orderness)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest
from confluent_kafka import Producer

from devtools.localstack import create_topics
from jobs.config import JobConfig, Topics

from .conftest import REPO, alert_bytes
from .stack_helpers import JobProcess, caught_up, read_committed

pytestmark = [pytest.mark.faults, pytest.mark.stack, pytest.mark.minicluster]

USERS = 6
STREAMS_PER_USER = 3
PHASES = 6  # every user on each of its streams twice
PARTITIONS = Topics().partitions()["alerts"]
OUT_OF_ORDER_MS = JobConfig().max_out_of_orderness_ms
PHASE_STEP_MS = 120_000  # a new pair of phases starts two incident windows later: new incidents
SPREAD_MS = 2_000  # event times within one phase of one user
BACK_MS = 2_500  # how much earlier the second phase of a pair starts
assert SPREAD_MS + BACK_MS < OUT_OF_ORDER_MS


def stream_of(user: int, stream: int) -> str:
    return f"live-{user}-{stream}"


def partition_of(user: int, stream: int) -> int:
    """The user's three streams are on three different partitions."""
    return (user + stream) % PARTITIONS


def phase_alerts(phase: int, t0_ms: int, rng: random.Random) -> list[tuple[int, bytes]]:
    """(partition, alert) of one phase, in production order. Per user, on one stream: a first
    detector's alert, a second detector's alert on the same moment (one incident, merged), a
    retry of the first (dropped), a review-band alert of another type; event times shuffled
    within less than the out-of-orderness. Users 0-1 get copyright (stop + warning, stop + 7 d,
    ban), the others hate speech (warning, stop + 24 h, stop + 7 d, ban)."""
    out = []
    for user in range(USERS):
        stream = (user + phase) % STREAMS_PER_USER
        # Phases come in pairs: the second of a pair starts a little *before* the first, so the
        # alerts on the user's new stream are older than those already decided on another one
        # (by at most SPREAD_MS + BACK_MS, less than the out-of-orderness).
        base = t0_ms + (phase // 2) * PHASE_STEP_MS - (BACK_MS if phase % 2 else 0)
        offsets = rng.sample(range(0, SPREAD_MS, 100), 3)
        vtype = "copyright" if user < 2 else "hate_speech"
        common = {"user_id": f"u-{user}", "stream_id": stream_of(user, stream), "violation_type": vtype}
        first = alert_bytes(alert_id=f"a-{phase}-{user}-1", detector_id="det-audio", confidence=0.93,
                            event_time_ms=base + offsets[0], **common)
        second = alert_bytes(alert_id=f"a-{phase}-{user}-2", detector_id="det-video", confidence=0.97,
                             event_time_ms=base + offsets[1], **common)
        review = alert_bytes(alert_id=f"a-{phase}-{user}-3", detector_id="det-text", confidence=0.7,
                             event_time_ms=base + offsets[2],
                             **{**common, "violation_type": "nudity"})
        rest = [second, first, review]  # the first alert opens the incident; the rest in any order
        rng.shuffle(rest)
        out += [(partition_of(user, stream), r) for r in [first, *rest]]
    return out


def simulate(lines: list[bytes]) -> list[dict]:
    result = subprocess.run([sys.executable, "-m", "rules", "simulate", "--order", "input", "--no-drain",
                             "--alerts", "-"], cwd=REPO, input=b"\n".join(lines), capture_output=True,
                            timeout=120, check=True)
    return [json.loads(line) for line in result.stdout.decode().splitlines()]


def produce_phase(bootstrap: str, topic: str, alerts: list[tuple[int, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for partition, value in alerts:
        producer.produce(topic, value=value, key=json.loads(value)["stream_id"].encode(), partition=partition)
    assert producer.flush(30) == 0


def wait_until(condition, timeout_s: float, what: str, job: JobProcess) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert job.proc.poll() is None, f"the job exited while waiting for {what}:\n{job.tail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}; job log:\n{job.tail()}"
        time.sleep(0.5)


def canonical(records: list[dict]) -> list[str]:
    return sorted(json.dumps({"key": r["key"], "record": r["record"]}, sort_keys=True) for r in records)


def test_users_on_three_streams_across_partitions_out_of_order_match_the_oracle(stack, tmp_path):
    topics = Topics().prefixed("multi-")
    create_topics(stack.bootstrap, topics.partitions())
    t0 = int(time.time() * 1000) - 3_600_000
    rng = random.Random(28)
    phases = [phase_alerts(p, t0, rng) for p in range(PHASES)]
    for user in range(USERS):
        assert len({partition_of(user, s) for s in range(STREAMS_PER_USER)}) == STREAMS_PER_USER
    group = "multi-job"
    job = JobProcess(["--bootstrap-servers", stack.bootstrap, "--topic-prefix", "multi-", "--group-id", group,
                      "--transactional-id-prefix", "multi", "--starting-offsets", "earliest",
                      "--idleness-ms", "1000", "--checkpoint-dir", str(tmp_path / "ck")], tmp_path / "job.log")
    try:
        for number, alerts in enumerate(phases):
            produce_phase(stack.bootstrap, topics.alerts, alerts)
            # Read and checkpointed (offsets are committed when a checkpoint completes): every
            # output of this phase is decided before the next phase is produced.
            wait_until(lambda: caught_up(stack.bootstrap, group, topics.alerts), 180, f"phase {number}", job)
        expected = simulate([value for alerts in phases for _, value in alerts])
        by_kind = {kind: [r for r in expected if r["kind"] == kind]
                   for kind in ("enforcement", "notification", "review", "audit", "dlq", "rejection")}
        got = {kind: read_committed(stack.bootstrap, topic, len(by_kind[kind]), timeout_s=120)
               for kind, topic in (("enforcement", topics.enforcement), ("notification", topics.notifications),
                                   ("review", topics.review), ("audit", topics.audit))}
        dlq = read_committed(stack.bootstrap, topics.dlq, None, timeout_s=3)
        assert job.proc.poll() is None, job.tail()
    finally:
        job.kill()

    # The oracle's outputs hold what this test is about (so equality is not trivially met).
    assert not by_kind["rejection"] and not by_kind["dlq"] and not dlq
    audit = [r["record"] for r in by_kind["audit"]]
    merges = [a for a in audit if a["kind"] == "merge"]
    assert len(merges) >= USERS * PHASES // 2, "second detectors merged into the first's incident"
    assert all(len(a["alert_ids"]) == 2 and a["detail"]["detector_id"] == "det-video" for a in merges)
    enforcement = [r["record"] for r in by_kind["enforcement"]]
    for user in range(USERS):
        mine = [e for e in enforcement if e["user_id"] == f"u-{user}"]
        assert "ban" in {e["action"] for e in mine}, f"u-{user} escalates to a ban across its streams"
        stopped = {e["stream_id"] for e in mine if e["action"] == "stop_stream"}
        assert len(stopped) >= 2, f"u-{user}: streams stopped on several partitions: {stopped}"
    # Out of order: some alert was decided after one with a later event time of the same user.
    latest: dict[str, int] = {}
    backwards = 0
    for a in audit:
        if a["kind"] in ("decision", "merge"):
            backwards += a["event_time_ms"] < latest.get(a["user_id"], 0)
            latest[a["user_id"]] = max(latest.get(a["user_id"], 0), a["event_time_ms"])
    assert backwards >= USERS * PHASES // 2

    # Exactly the oracle's records: nothing lost, nothing duplicated, the same content.
    for kind, records in got.items():
        assert canonical(records) == canonical(by_kind[kind]), kind
        ids = [json.dumps(r["record"], sort_keys=True) for r in records]
        assert len(ids) == len(set(ids)), f"{kind}: duplicated records"
