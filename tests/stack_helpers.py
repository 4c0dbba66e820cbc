"""Helpers for real-stack tests: run the job as its own process, produce, read committed output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

REPO = Path(__file__).resolve().parent.parent


class JobProcess:
    """`python -m jobs.penalty_job ...` in its own process group (kill -9 takes the JVM too)."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.fh = open(log, "ab")  # noqa: SIM115 - the job's log while it runs
        self.proc = subprocess.Popen([sys.executable, "-m", "jobs.penalty_job", *args], cwd=REPO,
                                     stdout=self.fh, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self.fh.flush()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.fh.close()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def produce(bootstrap: str, topic: str, values: list[bytes | None], key: bytes | None = None,
            partition: int | None = None, key_field: str | None = None) -> None:
    """key_field: take each record's key from this JSON field (as the job keys by user_id)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for value in values:
        if key_field is not None:
            key = json.loads(value)[key_field].encode()
        if partition is None:
            producer.produce(topic, value=value, key=key)
        else:
            producer.produce(topic, value=value, key=key, partition=partition)
    assert producer.flush(30) == 0


def read_committed(bootstrap: str, topic: str, expected: int | None = None, timeout_s: float = 60.0,
                   settle_s: float = 2.0) -> list[dict]:
    """Every committed record of a topic, from the beginning; waits for `expected` records (then
    `settle_s` more to catch extras), or until timeout."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{time.time_ns()}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    out: list[dict] = []
    deadline = time.monotonic() + timeout_s
    settle_until = None
    while time.monotonic() < deadline:
        for msg in consumer.consume(1000, timeout=0.5):
            if msg.error():
                continue
            out.append({"key": msg.key().decode() if msg.key() else None, "partition": msg.partition(),
                        "offset": msg.offset(), "record": json.loads(msg.value())})
        if expected is not None and len(out) >= expected:
            settle_until = settle_until or time.monotonic() + settle_s
            if time.monotonic() >= settle_until:
                break
    consumer.close()
    return out


def caught_up(bootstrap: str, group_id: str, topic: str) -> bool:
    """True when the group's committed offsets (the job commits them on checkpoints) reach the
    end of every partition of `topic`: everything was read and checkpointed."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        partitions = [TopicPartition(topic, p) for p in meta.partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
        for tp in partitions:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high > 0 and committed.get(tp.partition, -1) < high:
                return False
        return True
    finally:
        consumer.close()
