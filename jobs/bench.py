"""End-to-end latency benchmark on the local stack: alert produced -> enforcement visible to a
read_committed consumer, at a steady rate. Prints one JSON line and a short table.

    python -m jobs.bench latency [--rate 1000] [--seconds 60] [--delivery exactly_once]
                                 [--checkpoint-interval-ms 250]        (`make bench`)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from jobs import config as job_config
from jobs import localstack


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_latency(args) -> dict:
    from confluent_kafka import Consumer, Producer

    data = Path(tempfile.mkdtemp(prefix="penalty-bench-"))
    stack = localstack.start_stack(data)
    topics = job_config.Topics()
    localstack.create_topics(stack.bootstrap, topics.partitions())
    sent_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    job = None
    try:
        flink_conf = []
        if args.checkpoint_interval_ms:
            flink_conf.append(("execution.checkpointing.interval", f"{args.checkpoint_interval_ms}ms"))
        config = job_config.JobConfig(bootstrap_servers=stack.bootstrap, starting_offsets="latest",
                                      delivery=args.delivery, flink_conf=tuple(flink_conf))
        from jobs.penalty_job import build

        env = build(config)
        job = env.execute_async("penalty-job-bench")
        consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "bench",
                             "group.instance.id": "bench-1", "isolation.level": "read_committed",
                             "auto.offset.reset": "latest", "enable.auto.commit": False})
        consumer.subscribe([topics.enforcement])
        time.sleep(8)  # job start + consumer assignment, before the first alert
        consumer.poll(0.5)
        stop = threading.Event()

        def consume():
            while not stop.is_set():
                for msg in consumer.consume(500, timeout=0.2):
                    if msg.error():
                        continue
                    cause = json.loads(msg.value())["cause"]
                    alert_id = cause.split(":", 1)[1]
                    seen_at.setdefault(alert_id, time.time())

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        # Only clear, fresh violations of distinct users: each gets one enforcement record to time.
        producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 1})
        interval = 1.0 / args.rate
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < args.seconds:
            doc = {"alert_id": f"bench-{n}", "stream_id": f"live-{n}", "user_id": f"user-{n}",
                   "detector_id": "chat-spam-v4", "violation_type": "spam", "confidence": 0.99,
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
        reader.join(timeout=5)
        consumer.close()
    finally:
        if job is not None:
            try:
                job.cancel().result()
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        stack.stop()
    latencies = [seen_at[a] - sent_at[a] for a in sent_at if a in seen_at]
    # Skip the first seconds: the job's first checkpoints while tasks warm up are not steady state.
    warm = latencies[int(len(latencies) * 0.1):] or latencies
    return {
        "benchmark": "latency", "delivery": args.delivery, "rate_per_s": args.rate, "seconds": args.seconds,
        "checkpoint_interval_ms": args.checkpoint_interval_ms or 250, "parallelism": config.parallelism,
        "sent": len(sent_at), "seen": len(latencies),
        "p50_s": round(percentile(warm, 0.50), 3), "p95_s": round(percentile(warm, 0.95), 3),
        "p99_s": round(percentile(warm, 0.99), 3), "max_s": round(max(warm), 3),
        "mean_s": round(statistics.fmean(warm), 3), "cpus": os.cpu_count(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("latency")
    p.add_argument("--rate", type=float, default=1000)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--delivery", choices=("exactly_once", "at_least_once"), default="exactly_once")
    p.add_argument("--checkpoint-interval-ms", type=int, default=None)
    args = parser.parse_args(argv)
    result = measure_latency(args)
    print(json.dumps(result))
    print(f"{result['delivery']}: {result['seen']}/{result['sent']} alerts enforced; latency p50 {result['p50_s']} s, "
          f"p95 {result['p95_s']} s, p99 {result['p99_s']} s, max {result['max_s']} s", file=sys.stderr)
    return 0 if result["seen"] == result["sent"] else 1


if __name__ == "__main__":
    sys.exit(main())
