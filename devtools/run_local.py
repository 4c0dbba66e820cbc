"""The embedded default run: local broker + Redis, the demo alert generator, and the penalty job on
the local Flink mini-cluster, with a live summary. Ends cleanly on Ctrl-C or after --duration.

    python -m devtools.run_local [--duration 60] [--rate 200]     (`make run`)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.request
from collections import Counter

from devtools import localstack
from devtools.generator import AlertGenerator, produce
from jobs import config as job_config


class TopicCounter:
    """Counts committed records on the output topics (read_committed, like any consumer)."""

    def __init__(self, bootstrap: str, topics: job_config.Topics):
        from confluent_kafka import Consumer

        self.topics = topics
        self.counts: Counter = Counter()
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"run-local-summary-{time.time_ns()}",
            "isolation.level": "read_committed", "enable.auto.commit": False,
            "auto.offset.reset": "latest",
        })
        self.consumer.subscribe([topics.enforcement, topics.notifications, topics.audit, topics.review,
                                 topics.dlq])

    def poll(self, budget_s: float) -> None:
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            for msg in self.consumer.consume(500, timeout=0.2):
                if msg.error():
                    continue
                topic = msg.topic()
                try:
                    record = json.loads(msg.value())
                except ValueError:
                    continue
                if topic == self.topics.enforcement:
                    self.counts[f"action:{record.get('action')}"] += 1
                elif topic == self.topics.dlq:
                    self.counts["dlq"] += 1
                    self.counts[f"dlq:{record.get('reason')}"] += 1
                elif topic == self.topics.audit:
                    self.counts[f"audit:{record.get('kind')}"] += 1
                else:
                    self.counts[topic] += 1

    def close(self) -> None:
        self.consumer.close()


def job_metrics(rest_port: int, names: tuple[str, ...]) -> dict[str, float]:
    """Sum of the job's counters over all subtasks, from the mini-cluster's REST API."""
    base = f"http://127.0.0.1:{rest_port}"
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"{base}/jobs", timeout=1) as resp:
            jobs = [j["id"] for j in json.load(resp)["jobs"] if j["status"] == "RUNNING"]
        for job_id in jobs:
            with urllib.request.urlopen(f"{base}/jobs/{job_id}", timeout=1) as resp:
                vertices = [v["id"] for v in json.load(resp)["vertices"]]
            for vertex in vertices:
                url = f"{base}/jobs/{job_id}/vertices/{vertex}/subtasks/metrics"
                with urllib.request.urlopen(url, timeout=1) as resp:
                    available = [m["id"] for m in json.load(resp)]
                wanted = [m for m in available if m.rsplit(".", 1)[-1] in names or m.endswith(names)]
                if not wanted:
                    continue
                with urllib.request.urlopen(f"{url}?get={','.join(wanted)}&agg=sum", timeout=1) as resp:
                    for metric in json.load(resp):
                        out[metric["id"]] = out.get(metric["id"], 0) + metric.get("sum", 0)
    except (OSError, ValueError, KeyError):
        pass  # the job is starting or stopping: show what the topics say
    return out


def summary_line(elapsed_s: float, produced: int, metrics: dict[str, float], counts: Counter) -> str:
    def metric(suffix: str) -> int:
        return int(sum(v for k, v in metrics.items() if k.endswith(suffix)))

    actions = " ".join(f"{k.split(':', 1)[1]}={v}" for k, v in sorted(counts.items()) if k.startswith("action:"))
    return (f"[{elapsed_s:5.0f}s] produced={produced} in={metric('alerts_in')} valid={metric('alerts_valid')} "
            f"duplicates={metric('.duplicate')} merged={metric('.merged')} dlq={counts['dlq']} "
            f"review={counts['review']} | actions: {actions or '-'} | notifications={counts['notifications']} "
            f"strikes_expired={counts['audit:strike_expired']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.run_local", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=0, help="seconds to run (default: until Ctrl-C)")
    parser.add_argument("--rate", type=float, default=200, help="demo alerts per second")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--kafka-port", type=int, default=19092)
    parser.add_argument("--redis-port", type=int, default=16379)
    parser.add_argument("--rules", default=str(job_config.DEFAULT_RULES))
    parser.add_argument("--every", type=float, default=5.0, help="seconds between summary lines")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    if localstack.STATE_FILE.exists():
        print("a stack from `make stack` is recorded in .run/stack.json: run `make stop` first", file=sys.stderr)
        return 1
    try:
        stack = localstack.start_stack(localstack.RUN_DIR / "stack", args.kafka_port, args.redis_port)
    except localstack.StackError as exc:
        print(f"run: {exc}", file=sys.stderr)
        return 1
    print(f"local stack: kafka {stack.bootstrap}, redis {stack.redis_url} (logs in .run/stack)")
    localstack.record_stack(stack)  # so `make stop` can clean up if this process is killed
    job = None
    try:
        topics = job_config.Topics()
        localstack.create_topics(stack.bootstrap, topics.partitions())
        rest_port = localstack.free_port()
        config = job_config.JobConfig(
            bootstrap_servers=stack.bootstrap, rules_path=args.rules, starting_offsets="latest",
            flink_conf=(("rest.port", str(rest_port)), ("rest.address", "127.0.0.1"),
                        ("metrics.fetcher.update-interval", "2s")),
        )
        from jobs.penalty_job import build
        from rules.loader import RuleFileError

        try:
            env = build(config)
        except RuleFileError as exc:
            print(exc, file=sys.stderr)
            return 2
        counter = TopicCounter(stack.bootstrap, topics)
        job = env.execute_async("penalty-job")
        print(f"penalty job {job.get_job_id()} on the mini-cluster (parallelism {config.parallelism}, "
              f"Flink UI http://127.0.0.1:{rest_port}); Ctrl-C stops")
        time.sleep(3)  # let the source subscribe before producing (it starts at latest)

        generator = AlertGenerator(users=args.users, step_ms=int(1000 / max(args.rate, 1)))
        produced = [0]

        def payloads():
            for payload in generator.payloads(10**12):
                produced[0] += 1
                yield payload

        producer = threading.Thread(
            target=produce, args=(stack.bootstrap, topics.alerts, payloads(), args.rate, stop.is_set),
            daemon=True, name="demo-generator")
        producer.start()
        started = time.monotonic()
        names = ("alerts_in", "alerts_valid", "duplicate", "merged")
        while not stop.is_set():
            counter.poll(args.every)
            elapsed = time.monotonic() - started
            print(summary_line(elapsed, produced[0], job_metrics(rest_port, names), counter.counts), flush=True)
            if args.duration and elapsed >= args.duration:
                stop.set()
        producer.join(timeout=30)
        counter.poll(2.0)  # the last checkpoint's records
        print("final: " + summary_line(time.monotonic() - started, produced[0],
                                       job_metrics(rest_port, names), counter.counts), flush=True)
        counter.close()
        return 0
    finally:
        if job is not None:
            try:
                job.cancel().result()
            except Exception as exc:  # noqa: BLE001 - shutting down anyway
                print(f"cancel: {exc}", file=sys.stderr)
        stack.stop()
        localstack.STATE_FILE.unlink(missing_ok=True)
        print("stopped: job cancelled, broker and Redis stopped")


if __name__ == "__main__":
    sys.exit(main())
