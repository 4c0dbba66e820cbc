"""Helpers for the fault tests (tests/test_faults_*.py): the oracle's expected outputs, exact
comparison (lost, duplicated, unknown), when output first appears after a fault, and what a
checkpoint's metadata says about the source's offsets."""

from __future__ import annotations

import json
import re
import struct
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from devtools.generator import AlertGenerator, Mix
from devtools.generator import produce as produce_paced
from jobs.config import Topics

from .conftest import HOUR_MS
from .stack_helpers import JobProcess, caught_up, read_committed
from .test_stack_exactly_once import ID_FIELDS, oracle

TOPIC_OF_KIND = {"enforcement": "enforcement", "notification": "notifications", "audit": "audit", "review": "review"}


@dataclass
class Expected:
    records: dict[str, dict[str, dict]]  # kind -> id -> the oracle's record
    counts: dict[str, Counter]  # kind -> id -> how many times (1: every id is unique)
    dlq: int

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def expected_outputs(lines: list[bytes]) -> Expected:
    out = oracle(lines)
    records = {kind: {r["record"][field]: r["record"] for r in out if r["kind"] == kind}
               for kind, field in ID_FIELDS.items()}
    counts = {kind: Counter(r["record"][field] for r in out if r["kind"] == kind) for kind, field in ID_FIELDS.items()}
    # Empty records are blank lines to `simulate` (skipped); the job dead-letters them as `empty`.
    dlq = sum(r["kind"] == "rejection" for r in out) + sum(not line.strip() for line in lines)
    assert counts["enforcement"] and dlq
    return Expected(records, counts, dlq)


@dataclass
class Outcome:
    have: dict[str, Counter]  # kind -> id -> copies the read_committed consumer saw
    records: dict[str, dict[str, dict]]
    dlq: Counter
    lost: int
    duplicated: int  # copies beyond the first
    unknown: int  # ids the oracle does not know
    missing: dict[str, list[str]]  # kind -> ids the oracle has and the topic does not

    def summary(self, records_in: int) -> str:
        return (f"missing by kind {({k: len(v) for k, v in self.missing.items()})}; {records_in} records in, {sum(sum(c.values()) for c in self.have.values())} outputs read "
                f"(+{sum(self.dlq.values())} dlq): lost {self.lost}, duplicated {self.duplicated}, unknown {self.unknown}")


def read_outputs(bootstrap: str, topics: Topics, want: Expected, timeout_s: float = 120) -> Outcome:
    """Every committed output record, with a read_committed consumer started now (after the job has
    caught up: see ../shared/PLATFORM.md on consumers running across a restore)."""
    have, records, missing = {}, {}, {}
    lost = duplicated = unknown = 0
    for kind, field in ID_FIELDS.items():
        got = read_committed(bootstrap, getattr(topics, TOPIC_OF_KIND[kind]), sum(want.counts[kind].values()),
                             timeout_s=timeout_s, settle_s=3)
        have[kind] = Counter(r["record"][field] for r in got)
        records[kind] = {r["record"][field]: r["record"] for r in got}
        missing[kind] = sorted(want.counts[kind] - have[kind])
        lost += sum((want.counts[kind] - have[kind]).values())
        duplicated += sum(n - 1 for n in have[kind].values() if n > 1)
        unknown += len(set(have[kind]) - set(want.counts[kind]))
    dlq = Counter(d["record"]["dlq_id"] for d in read_committed(bootstrap, topics.dlq, want.dlq, timeout_s=30,
                                                                settle_s=1))
    lost += max(0, want.dlq - len(dlq))
    duplicated += sum(n - 1 for n in dlq.values() if n > 1)
    return Outcome(have, records, dlq, lost, duplicated, unknown, missing)


def assert_exactly_once(out: Outcome, want: Expected) -> None:
    for kind in ID_FIELDS:
        assert out.have[kind] == want.counts[kind], (
            f"{kind}: missing {len(want.counts[kind] - out.have[kind])}, extra {len(out.have[kind] - want.counts[kind])}")
        # The whole record, not just its id: the decision (strikes, ledger before and after) is the oracle's.
        differ = [i for i, r in want.records[kind].items() if out.records[kind][i] != r]
        assert not differ, f"{kind}: {len(differ)} records differ from the oracle's, e.g. {out.records[kind][differ[0]]}"
    assert len(out.dlq) == want.dlq and sum(out.dlq.values()) == want.dlq
    assert (out.lost, out.duplicated, out.unknown) == (0, 0, 0)


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{time.time_ns()}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions}
    finally:
        consumer.close()


def committed_beyond(bootstrap: str, topic: str, offsets: dict[int, int], wait_s: float = 1.0) -> bool:
    """Whether a read_committed consumer started now sees a record at or after `offsets`. A fresh
    consumer each time: one running across a restore may skip a transaction on this broker."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{time.time_ns()}",
                         "isolation.level": "read_committed", "enable.auto.commit": False, "log_level": 0})
    try:
        consumer.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])
        return any(not m.error() for m in consumer.consume(100, timeout=wait_s))
    finally:
        consumer.close()


def wait_first_output(bootstrap: str, topic: str, offsets: dict[int, int], timeout_s: float) -> float:
    """Monotonic time at which committed output past `offsets` was first seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if committed_beyond(bootstrap, topic, offsets):
                return time.monotonic()
        except Exception as exc:  # noqa: BLE001 - the broker may be restarting
            print(f"probe failed ({exc}); retrying")
        time.sleep(0.2)
    raise AssertionError(f"no new output on {topic} within {timeout_s:.0f} s")


def paced_producer(bootstrap: str, topic: str, lines: list[bytes], rate_per_s: float) -> threading.Thread:
    thread = threading.Thread(target=produce_paced, args=(bootstrap, topic, lines, rate_per_s), daemon=True)
    thread.start()
    return thread


def source_offsets(checkpoint: Path, topic: str) -> dict[int, int]:
    """The Kafka source's next offsets per partition of `topic` in a checkpoint's _metadata (the
    split state is small, so it is inline: KafkaPartitionSplitSerializer writes the topic as Java
    UTF, then int partition, long starting offset, long stopping offset)."""
    data = (checkpoint / "_metadata").read_bytes()
    name = topic.encode()
    found: dict[int, int] = {}
    for match in re.finditer(re.escape(struct.pack(">H", len(name)) + name), data):
        partition, offset = struct.unpack_from(">iq", data, match.end())
        if 0 <= partition < 1024 and offset >= -3:
            found[partition] = offset
    return found


def alert_positions(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> dict[str, tuple[int, int]]:
    """alert_id -> (partition, offset) of its first copy on the input topic (malformed records skipped)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{time.time_ns()}",
                         "enable.auto.commit": False, "log_level": 0})
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    seen, out = 0, {}
    deadline = time.monotonic() + timeout_s
    try:
        while seen < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error():
                    continue
                seen += 1
                try:
                    doc = json.loads(msg.value())
                    out.setdefault(doc["alert_id"], (msg.partition(), msg.offset()))
                except (ValueError, TypeError, KeyError):
                    continue
    finally:
        consumer.close()
    assert seen == expected, f"read {seen} of {expected} input records"
    return out


def alert_lines(seed: int, count: int, users: int = 400, step_ms: int = 1000) -> list[bytes]:
    # One stream per user: all of a user's alerts share a partition, so the job sees them in the
    # order the oracle does.
    gen = AlertGenerator(seed=seed, users=users, start_ms=int(time.time() * 1000) - 4 * HOUR_MS, step_ms=step_ms,
                         streams_per_user=1, mix=Mix(oversized=0.0))
    return list(gen.payloads(count))


def alive_and_caught_up(job: JobProcess, bootstrap: str, group_id: str, topic: str) -> bool:
    if job.proc.poll() is not None:  # the restart strategy gave up, or the job died: fail now
        raise AssertionError(f"the job exited with {job.proc.returncode}:\n{job.tail()}")
    return caught_up(bootstrap, group_id, topic)


def report(fault: str, checked: str, records_in: int, lost: int, duplicated: int, recovery: str) -> None:
    """One line per fault test (run pytest with -s to see them): the closing table's row."""
    print(f"\nFAULT | {fault} | {checked} | in {records_in} | lost {lost} | duplicated {duplicated} | {recovery}")


# The embedded job's REST API (rest_args), to read its restarts.
def rest_json(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.load(response)


def rest_args(port: int) -> list[str]:
    """The embedded job's REST API on a port of the test's: numRestarts is read from it."""
    return ["--conf", f"rest.port={port}", "--conf", "rest.address=127.0.0.1", "--conf", "rest.bind-address=127.0.0.1"]


def embedded_job(port: int, job: JobProcess, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        assert job.proc.poll() is None, f"the job exited:\n{job.tail()}"
        try:
            jobs = rest_json(port, "/jobs/overview")["jobs"]
            if jobs and jobs[0]["state"] == "RUNNING":
                return jobs[0]["jid"]
        except OSError:
            pass
        assert time.monotonic() < deadline, f"no running job on the REST API; log:\n{job.tail()}"
        time.sleep(1)


def embedded_restarts(port: int, job_id: str, timeout_s: float = 30) -> int:
    # The REST API fetches metrics on demand: the first answers can be empty.
    deadline = time.monotonic() + timeout_s
    while not (metric := rest_json(port, f"/jobs/{job_id}/metrics?get=numRestarts")):
        assert time.monotonic() < deadline, "no numRestarts metric on the job's REST API"
        time.sleep(1)
    return int(float(metric[0]["value"]))
