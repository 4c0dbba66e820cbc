"""The latency benchmark: `python -m devtools.bench latency` drives a steady rate of fresh, clear
violations and times each alert from produced to its enforcement record visible to a read_committed
consumer; the p99 of each 10 s of send time and the checkpoints of the measured period explain the tail."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from devtools import localstack
from devtools.bench.job_under_test import (
    OUTPUTS,
    JobUnderTest,
    Trimmer,
    checkpoint_interval_ms,
    passthrough_flags,
    rest_get,
)
from jobs import config as job_config

# Each stays under the default guard's ceiling (2,000 enforcements in 10 minutes) up to 2,000 alerts/s
# for 10 minutes of warm-up plus measurement.
LATENCY_DETECTORS = 1024
# How long the enforcement reader rests after a fetch that found nothing (see consume()).
READ_PAUSE_S = 0.05


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class CheckpointWatch(threading.Thread):
    """Records every completed checkpoint of a running job from Flink's REST history (polled each
    second; the history keeps the last 10, i.e. 2.5 s at the 250 ms interval): under exactly-once
    a record's output becomes visible when the next checkpoint completes, so their durations
    explain the latency tail. For each one it also reads where the time went, per vertex, slowest
    subtask: the barrier's wait to reach the task (start delay), alignment, the synchronous part
    (the operators' snapshot: flushing the Python bundle, the Kafka producer's flush) and the
    asynchronous part (RocksDB upload)."""

    PARTS = ("start_delay", "alignment", "sync", "async")

    def __init__(self, rest_port: int, job_id: str):
        super().__init__(daemon=True)
        self.rest_port, self.job_id = rest_port, job_id
        self.done = threading.Event()
        self.completed: dict[int, tuple[int, int]] = {}  # id -> (trigger time ms, end-to-end ms)
        self.names: dict[str, str] = {}  # vertex id -> short name
        self.parts: dict[int, dict[str, dict[str, int]]] = {}  # id -> vertex -> part -> ms

    def run(self) -> None:
        while not self.done.wait(1.0):
            try:
                history = rest_get(self.rest_port, f"/jobs/{self.job_id}/checkpoints").get("history", [])
            except (OSError, ValueError):
                continue
            for entry in history:
                if entry.get("status") == "COMPLETED" and entry["id"] not in self.completed:
                    self.completed[entry["id"]] = (entry["trigger_timestamp"], entry["end_to_end_duration"])
                    self._read_parts(entry["id"])

    def _read_parts(self, checkpoint_id: int) -> None:
        try:
            if not self.names:
                vertices = rest_get(self.rest_port, f"/jobs/{self.job_id}").get("vertices", [])
                self.names = {v["id"]: v["name"].split(" -> ")[0][:40] for v in vertices}
            parts = {}
            for vertex in self.names:
                detail = rest_get(self.rest_port,
                                  f"/jobs/{self.job_id}/checkpoints/details/{checkpoint_id}/subtasks/{vertex}")
                subtasks = [s for s in detail.get("subtasks", []) if s.get("status") == "completed"]
                if subtasks:
                    parts[vertex] = {
                        "start_delay": max(s.get("start_delay", 0) for s in subtasks),
                        "alignment": max(s.get("alignment", {}).get("duration", 0) for s in subtasks),
                        "sync": max(s.get("checkpoint", {}).get("sync", 0) for s in subtasks),
                        "async": max(s.get("checkpoint", {}).get("async", 0) for s in subtasks)}
            self.parts[checkpoint_id] = parts
        except (OSError, ValueError, KeyError):
            pass

    def summary(self, since_ms: int) -> dict:
        ids = [cid for cid, (trigger_ms, _) in self.completed.items() if trigger_ms >= since_ms]
        durations = [self.completed[cid][1] for cid in ids]
        if not durations:
            return {"checkpoints": 0}
        by_vertex: dict[str, dict[str, list[int]]] = {}
        for cid in ids:
            for vertex, parts in self.parts.get(cid, {}).items():
                for part, ms in parts.items():
                    by_vertex.setdefault(self.names.get(vertex, vertex), {}).setdefault(part, []).append(ms)
        return {"checkpoints": len(durations), "checkpoint_p50_ms": percentile(durations, 0.5),
                "checkpoint_p99_ms": percentile(durations, 0.99), "checkpoint_max_ms": max(durations),
                # per vertex and part: [p50, p99] in ms over the checkpoints of the period
                "checkpoint_parts_ms": {name: {part: [percentile(v, 0.5), percentile(v, 0.99)]
                                               for part, v in parts.items()}
                                        for name, parts in by_vertex.items()}}


def measure_latency(args) -> dict:
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

    data = Path(tempfile.mkdtemp(prefix="penalty-bench-"))
    stack = localstack.start_stack(data)
    topics = job_config.Topics()
    localstack.create_topics(stack.bootstrap, topics.partitions())
    sent_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    job = JobUnderTest(data, args.parallelism, args.mini_cluster, args.cluster_conf)
    try:
        group = "bench-latency"
        job_args = ["--bootstrap-servers", stack.bootstrap, "--starting-offsets", "latest", "--delivery", args.delivery,
                    "--group-id", group]
        if args.checkpoint_interval_ms:
            job_args += ["--checkpoint-interval-ms", str(args.checkpoint_interval_ms)]
        job_args += passthrough_flags(args)
        job.start(job_args)
        deadline = time.monotonic() + 180
        while (job_id := job.running_job()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the job did not start within 180 s; logs in {data}")
            time.sleep(0.5)
        checkpoints = CheckpointWatch(job.rest_port, job_id)
        checkpoints.start()
        consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "bench",
                             "isolation.level": "read_committed", "enable.auto.commit": False,
                             "enable.partition.eof": True})
        partitions = consumer.list_topics(topics.enforcement, timeout=10).topics[topics.enforcement].partitions
        # Where the next record of each partition will be: the consumer is assigned from here
        # after every pause (see consume()).
        next_offsets = {p: consumer.get_watermark_offsets(TopicPartition(topics.enforcement, p), timeout=10)[1]
                        for p in partitions}

        def assignment() -> list:
            return [TopicPartition(topics.enforcement, p, offset) for p, offset in next_offsets.items()]

        consumer.assign(assignment())
        time.sleep(8)  # job start, before the first alert
        stop = threading.Event()
        read_up_to: list = []  # the consumer's positions after its last burst (for the trimmer)

        def consume():
            # The local broker answers an empty fetch at once (it ignores the fetch wait), so a
            # caught-up consumer that stays assigned spins: ~0.45 core of its own and ~0.35 of the
            # broker's, taken from the job under test. pause()/resume() delayed records by seconds
            # after each resume; dropping the assignment and assigning again at the next offsets
            # does not. So the reader reads until every partition reports its end (a partition EOF
            # event after the fetch that found nothing more), rests READ_PAUSE_S, and assigns again:
            # that adds at most READ_PAUSE_S to a measured latency (measured alone against records
            # committed every 250 ms: p50 28 ms, p99 56 ms, at 0.11 core with the broker's share,
            # where spinning gave 4 / 6 ms at 0.8 core). The short consume timeout matters:
            # consume() returns at its timeout unless the batch fills.
            at_end: set[int] = set()
            while not stop.is_set():
                msgs = consumer.consume(500, timeout=0.005)
                now = time.time()
                for msg in msgs:
                    if msg.error():
                        if msg.error().code() == KafkaError._PARTITION_EOF:
                            at_end.add(msg.partition())
                        continue
                    at_end.discard(msg.partition())
                    next_offsets[msg.partition()] = msg.offset() + 1
                    cause = json.loads(msg.value())["cause"]
                    seen_at.setdefault(cause.split(":", 1)[1], now)
                if msgs:
                    read_up_to[:] = assignment()
                if len(at_end) == len(next_offsets):
                    at_end.clear()
                    consumer.unassign()
                    stop.wait(READ_PAUSE_S)
                    consumer.assign(assignment())

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        trimmer = Trimmer(stack.bootstrap, topics.alerts, group,
                          [getattr(topics, name) for name in OUTPUTS if name != "enforcement"],
                          consumed=lambda: list(read_up_to))
        trimmer.start()
        # Only clear, fresh violations of distinct users: each gets one enforcement record to time.
        # Spread over LATENCY_DETECTORS detectors: one detector enforcing hundreds a second is the
        # flood the detector guard stops (docs/rules.md), and then there is nothing left to time.
        producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 1})
        interval = 1.0 / args.rate
        started, started_wall = time.monotonic(), time.time()
        n = 0
        while time.monotonic() - started < args.warmup_s + args.seconds:
            doc = {"alert_id": f"bench-{n}", "stream_id": f"live-{n}", "user_id": f"user-{n}",
                   "detector_id": f"chat-spam-bench-{n % LATENCY_DETECTORS}", "violation_type": "spam",
                   "confidence": 0.99,
                   "event_time_ms": int(time.time() * 1000)}
            sent_at[doc["alert_id"]] = time.time()
            producer.produce(topics.alerts, key=doc["stream_id"], value=json.dumps(doc))
            producer.poll(0)
            n += 1
            ahead = n * interval - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        producer.flush(30)
        deadline = time.monotonic() + 15
        while len(seen_at) < len(sent_at) and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        trimmer.done.set()
        checkpoints.done.set()
        reader.join(timeout=5)
        consumer.close()
    finally:
        job.stop()
        stack.stop()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    measured_from = started_wall + args.warmup_s
    latencies = [seen_at[a] - sent_at[a] for a in sent_at if a in seen_at and sent_at[a] >= measured_from]
    warmup = [seen_at[a] - sent_at[a] for a in sent_at if a in seen_at and sent_at[a] < measured_from]
    # Without a warm-up period, skip the first 10%: the job's first checkpoints while tasks warm up
    # are not steady state.
    warm = (latencies if args.warmup_s else latencies[int(len(latencies) * 0.1):]) or latencies
    return {
        "benchmark": "latency", "delivery": args.delivery, "rate_per_s": args.rate, "seconds": args.seconds,
        "checkpoint_interval_ms": checkpoint_interval_ms(args), "flink_conf": args.conf,
        "cluster_conf": args.cluster_conf, "rules": args.rules,
        "bundle_records": args.bundle_records, "bundle_ms": args.bundle_ms,
        "state_cache_users": args.state_cache_users,
        "source_properties": args.source_property, "sink_properties": args.sink_property, "parallelism": args.parallelism,
        "deployment": "mini-cluster" if args.mini_cluster else f"standalone, {args.parallelism} TaskManagers x 1 slot",
        "warmup_s": args.warmup_s, "sent": len(sent_at), "seen": len(latencies) + len(warmup),
        "warmup_p99_s": round(percentile(warmup, 0.99), 3) if warmup else None,
        "p50_s": round(percentile(warm, 0.50), 3), "p95_s": round(percentile(warm, 0.95), 3),
        "p99_s": round(percentile(warm, 0.99), 3), "max_s": round(max(warm), 3),
        "mean_s": round(statistics.fmean(warm), 3), "cpus": os.cpu_count(),
        "p99_s_by_10s": latency_windows(sent_at, seen_at, started_wall),
        "broker_trims": trimmer.trims, "broker_trims_skipped": trimmer.skipped,
        # The checkpoints triggered in the measured period (end-to-end durations).
        **checkpoints.summary(int(measured_from * 1000) if args.warmup_s else 0),
    }


def latency_windows(sent_at: dict[str, float], seen_at: dict[str, float], start: float) -> list[float | None]:
    """p99 latency of the alerts sent in each 10 s of the run (warm-up included), in order: shows
    whether a backlog from the start drains or the tail is steady."""
    windows: dict[int, list[float]] = {}
    for alert_id, sent in sent_at.items():
        if alert_id in seen_at:
            windows.setdefault(int((sent - start) // 10), []).append(seen_at[alert_id] - sent)
    last = max(windows, default=-1)
    return [round(percentile(windows[i], 0.99), 3) if i in windows else None for i in range(last + 1)]


def latency_table(r: dict) -> str:
    warmup = f" after {r['warmup_s']} s of warm-up (its p99 {r['warmup_p99_s']} s)" if r["warmup_s"] else ""
    return (f"latency ({r['delivery']}, {r['rate_per_s']}/s for {r['seconds']} s{warmup}): "
            f"{r['seen']}/{r['sent']} enforced; "
            f"p50 {r['p50_s']} s, p95 {r['p95_s']} s, p99 {r['p99_s']} s, max {r['max_s']} s\n"
            f"  p99 by 10 s of send time: {r['p99_s_by_10s']}\n"
            f"  {r['checkpoints']} checkpoints in the measured period: p50 {r.get('checkpoint_p50_ms')} ms, "
            f"p99 {r.get('checkpoint_p99_ms')} ms, max {r.get('checkpoint_max_ms')} ms"
            + "".join(f"\n    {name}: " + ", ".join(f"{part} {p50}/{p99}" for part, (p50, p99) in parts.items())
                      + " ms (p50/p99)" for name, parts in r.get("checkpoint_parts_ms", {}).items()))
