"""Benchmarks of the whole job on the local stack: noida-db, and by default a local standalone
Flink cluster of one-slot TaskManagers (parallelism 2), as the job is deployed; `--mini-cluster`
runs it embedded in one process instead, as `make run` does.

    python -m jobs.bench throughput [--alerts 1000000] [--users 100000] [--zipf-s 1.0] [--step-ms 50]
        pre-produces a realistic mix, runs the job exactly-once from the earliest offset until
        every input offset is committed by a checkpoint (so every output of it is committed
        too); reports alerts/s, peak RSS of the job's process tree, checkpoint duration and
        size, checkpointed state bytes per user. `--floor python|jvm` runs the same pipeline with a
        pass-through in place of the penalty operator (jobs/floor_job.py): what the rest costs.
    python -m jobs.bench latency [--rate 1000] [--seconds 60] [--warmup-s 0] [--delivery exactly_once]
        steady rate; alert produced -> enforcement visible to a read_committed consumer; the p99
        of each 10 s of send time shows whether a backlog of the job's warm-up drains, and the
        end-to-end durations of the checkpoints of the measured period explain the tail.
    python -m jobs.bench all     both (`make bench`), one JSON summary line.

Each prints one JSON line and a short human table. Not part of the tests (a smoke run is).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from jobs import config as job_config
from jobs import localstack

OUTPUTS = ("enforcement", "notifications", "audit", "review", "dlq")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# How often Flink's REST API refreshes the metrics it serves (default 10 s): the bench reads the
# job's counters once at the end, when a 10 s old value would miss the last records.
METRICS_FETCH_MS = 1000


class JobUnderTest:
    """The penalty job as a bench runs it: by default on a local standalone cluster of
    `parallelism` TaskManagers with one slot each, as shipped (thread mode runs Python on one
    GIL per TaskManager process, so this is how subtasks get a core each); with mini_cluster,
    embedded in one process the way `make run` runs it."""

    def __init__(self, data: Path, parallelism: int, mini_cluster: bool):
        self.data, self.parallelism, self.mini_cluster = data, parallelism, mini_cluster
        self.rest_port = localstack.free_port()
        self.process = None
        self.cluster = None
        self.job_id: str | None = None

    def start(self, job_args: list[str], module: str = "jobs.penalty_job") -> None:
        job_args = [*job_args, "--parallelism", str(self.parallelism)]
        if self.mini_cluster:
            cmd = [sys.executable, "-m", module, *job_args, "--checkpoint-dir", str(self.data / "checkpoints"),
                   "--conf", f"rest.port={self.rest_port}", "--conf", "rest.address=127.0.0.1",
                   "--conf", f"metrics.fetcher.update-interval={METRICS_FETCH_MS}"]
            log = open(self.data / "job.log", "wb")  # noqa: SIM115 - the child holds it
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            return
        from jobs import cluster as flink_cluster

        self.cluster = flink_cluster.Cluster(self.data / "cluster", self.rest_port, localstack.free_port())
        flink_cluster.up(self.cluster, taskmanagers=self.parallelism, slots=1,
                         overrides={"metrics.fetcher.update-interval": str(METRICS_FETCH_MS)})
        script = flink_cluster.REPO_ROOT.joinpath(*module.split(".")).with_suffix(".py")
        self.job_id = flink_cluster.submit(self.cluster, job_args, script)

    def running_job(self) -> str | None:
        """The job id once every task runs; raises if the job is gone."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the job exited with {self.process.returncode}; see {self.data / 'job.log'}")
        try:
            jobs = _rest(self.rest_port, "/jobs")["jobs"]
            job_id = self.job_id or next((j["id"] for j in jobs if j["status"] == "RUNNING"), None)
            if job_id is None:
                return None
            detail = _rest(self.rest_port, f"/jobs/{job_id}")
            if detail["state"] in ("FAILED", "CANCELED", "FINISHED"):
                raise RuntimeError(f"the job is {detail['state']}; logs in {self.data}")
            if all(v["status"] == "RUNNING" for v in detail["vertices"]):
                return job_id
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def usage(self, threads: bool = False) -> Usage:
        """Memory and CPU time of the job's processes (with a cluster: JobManager and TaskManagers)."""
        if self.process is not None:
            return tree_usage(self.process.pid, threads)
        from jobs import cluster as flink_cluster

        usages = [tree_usage(pid, threads) for pid in flink_cluster._alive_pids(self.cluster.root / "pids")]
        return Usage(*(sum(column) for column in zip(*usages))) if usages else Usage(0, 0.0)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            localstack._stop_group(self.process.pid, proc=self.process)
        if self.cluster is not None:
            from jobs import cluster as flink_cluster

            flink_cluster.down(self.cluster)


def measure_latency(args) -> dict:
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

    data = Path(tempfile.mkdtemp(prefix="penalty-bench-"))
    stack = localstack.start_stack(data)
    topics = job_config.Topics()
    localstack.create_topics(stack.bootstrap, topics.partitions())
    sent_at: dict[str, float] = {}
    seen_at: dict[str, float] = {}
    job = JobUnderTest(data, args.parallelism, args.mini_cluster)
    try:
        group = "bench-latency"
        job_args = ["--bootstrap-servers", stack.bootstrap, "--starting-offsets", "latest", "--delivery", args.delivery,
                    "--group-id", group]
        if args.checkpoint_interval_ms:
            job_args += ["--checkpoint-interval-ms", str(args.checkpoint_interval_ms)]
        job_args += _passthrough(args)
        job.start(job_args)
        deadline = time.monotonic() + 180
        while (job_id := job.running_job()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the job did not start within 180 s; logs in {data}")
            time.sleep(0.5)
        checkpoints = CheckpointWatch(job.rest_port, job_id)
        checkpoints.start()
        consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "bench",
                             "isolation.level": "read_committed", "enable.auto.commit": False})
        partitions = consumer.list_topics(topics.enforcement, timeout=10).topics[topics.enforcement].partitions
        assignment = [TopicPartition(topics.enforcement, p, OFFSET_END) for p in partitions]
        consumer.assign(assignment)
        time.sleep(8)  # job start, before the first alert
        stop = threading.Event()
        read_up_to: list = []  # the consumer's positions after its last burst (for the trimmer)

        def consume():
            # Polls all the time: pausing between bursts (to spare the CPU a caught-up consumer
            # spends against this broker, which ignores the fetch wait) delayed records by
            # seconds after each resume.
            while not stop.is_set():
                msgs = consumer.consume(500, timeout=0.05)
                now = time.time()
                for msg in msgs:
                    if msg.error():
                        continue
                    cause = json.loads(msg.value())["cause"]
                    seen_at.setdefault(cause.split(":", 1)[1], now)
                if msgs:
                    read_up_to[:] = consumer.position(assignment)

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        trimmer = Trimmer(stack.bootstrap, topics.alerts, group,
                          [getattr(topics, name) for name in OUTPUTS if name != "enforcement"],
                          consumed=lambda: list(read_up_to))
        trimmer.start()
        # Only clear, fresh violations of distinct users: each gets one enforcement record to time.
        producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 1})
        interval = 1.0 / args.rate
        started, started_wall = time.monotonic(), time.time()
        n = 0
        while time.monotonic() - started < args.warmup_s + args.seconds:
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


class Usage(NamedTuple):
    rss_bytes: int
    cpu_s: float  # user + system time so far
    jit_cpu_s: float = 0.0  # of which the JVMs' JIT compiler threads
    task_cpu_s: float = 0.0  # of which the task threads of the Python operator's chain


# Thread names (/proc comm keeps 15 characters): the JIT compilers ("C2 CompilerThread0") and the
# task threads of the chain that starts with the Python operator ("penalty decisions -> route
# outputs -> ... (1/2)#0"): the operator, the JVM router, the sink writer and their state calls.
JIT_THREAD = "CompilerThre"
TASK_THREAD = "penalty decisio"


def _stat_fields(path: str) -> list[str]:
    with open(path) as fh:
        return fh.read().rsplit(")", 1)[1].split()


def _thread_cpu_s(pid: int, tick_s: float) -> tuple[float, float]:
    """CPU time of a JVM's JIT compiler threads and of its operator task threads (0 for other
    processes)."""
    jit = task = 0.0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0.0
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as fh:
                name = fh.read()
            if JIT_THREAD not in name and not name.startswith(TASK_THREAD):
                continue
            fields = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
            cpu_s = (int(fields[11]) + int(fields[12])) * tick_s
        except (OSError, IndexError, ValueError):
            continue
        if JIT_THREAD in name:
            jit += cpu_s
        else:
            task += cpu_s
    return jit, task


def tree_usage(root_pid: int, threads: bool = False) -> Usage:
    """Resident memory and CPU time of a process and all its live descendants (from /proc); with
    `threads`, also how much of that CPU the JVMs spent compiling (a warm-up cost a short run
    pays) and how much the operator's task threads used."""
    children: dict[int, list[int]] = {}
    usage: dict[int, Usage] = {}
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(f"/proc/{entry}/stat")
            ppid, utime, stime, pages = int(fields[1]), int(fields[11]), int(fields[12]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        usage[int(entry)] = Usage(pages * os.sysconf("SC_PAGE_SIZE"), (utime + stime) * tick_s)
    rss, cpu, jit_cpu, task_cpu, todo = 0, 0.0, 0.0, 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        rss += usage.get(pid, Usage(0, 0.0)).rss_bytes
        cpu += usage.get(pid, Usage(0, 0.0)).cpu_s
        if threads and pid in usage:
            jit, task = _thread_cpu_s(pid, tick_s)
            jit_cpu, task_cpu = jit_cpu + jit, task_cpu + task
        todo.extend(children.get(pid, []))
    return Usage(rss, cpu, jit_cpu, task_cpu)


def _rest(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
        return json.load(resp)


def committed_and_end(bootstrap: str, topic: str, group: str) -> tuple[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in parts]
        committed = sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
        end = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        return committed, end
    finally:
        consumer.close()


class Trimmer(threading.Thread):
    """Keeps the local broker's stored data small while the bench runs. noida-db rewrites every
    stored record on each autosave (about once a second while records arrive): with the bench's
    input and outputs kept, that alone grows past a core of the two, which a real broker never
    spends. Every few seconds this deletes (DeleteRecords) the outputs below their committed end
    (the bench only counts end offsets) and the input the job has committed, as retention would
    on a real cluster; `consumed` gives positions of a topic the bench reads itself (below which
    it may go too). Best effort: a request the broker does not answer in time is skipped."""

    def __init__(self, bootstrap: str, input_topic: str, group: str, output_topics: list[str],
                 consumed: Callable[[], list] = list):
        super().__init__(daemon=True)
        self.bootstrap, self.input_topic, self.group = bootstrap, input_topic, group
        self.output_topics, self.consumed = output_topics, consumed
        self.done = threading.Event()
        self.trims = self.skipped = 0

    @staticmethod
    def offsets(consumer, topic: str, committed: bool) -> list:
        from confluent_kafka import TopicPartition

        parts = [TopicPartition(topic, p) for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
        if committed:
            return [tp for tp in consumer.committed(parts, timeout=10) if tp.offset > 0]
        # The consumer reads read_committed: the end it sees is the last stable offset.
        ends = [(tp.partition, consumer.get_watermark_offsets(tp, timeout=10)[1]) for tp in parts]
        return [TopicPartition(topic, partition, end) for partition, end in ends if end > 0]

    def run(self) -> None:
        from confluent_kafka import Consumer
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                             "enable.auto.commit": False, "isolation.level": "read_committed"})
        try:
            while not self.done.wait(3.0):
                try:
                    wanted = self.offsets(consumer, self.input_topic, committed=True)
                    for topic in self.output_topics:
                        wanted += self.offsets(consumer, topic, committed=False)
                    wanted += [tp for tp in self.consumed() if tp.offset > 0]
                    if wanted:
                        for future in admin.delete_records(wanted, request_timeout=5).values():
                            future.result(timeout=10)
                        self.trims += 1
                except Exception:  # noqa: BLE001 - a missed trim only costs the broker time
                    self.skipped += 1
        finally:
            consumer.close()


class CheckpointWatch(threading.Thread):
    """Records every completed checkpoint of a running job from Flink's REST history (polled each
    second; the history keeps the last 10, i.e. 2.5 s at the 250 ms interval): under exactly-once
    a record's output becomes visible when the next checkpoint completes, so their durations
    explain the latency tail."""

    def __init__(self, rest_port: int, job_id: str):
        super().__init__(daemon=True)
        self.rest_port, self.job_id = rest_port, job_id
        self.done = threading.Event()
        self.completed: dict[int, tuple[int, int]] = {}  # id -> (trigger time ms, end-to-end ms)

    def run(self) -> None:
        while not self.done.wait(1.0):
            try:
                history = _rest(self.rest_port, f"/jobs/{self.job_id}/checkpoints").get("history", [])
            except (OSError, ValueError):
                continue
            for entry in history:
                if entry.get("status") == "COMPLETED":
                    self.completed[entry["id"]] = (entry["trigger_timestamp"], entry["end_to_end_duration"])

    def summary(self, since_ms: int) -> dict:
        durations = [ms for trigger_ms, ms in self.completed.values() if trigger_ms >= since_ms]
        if not durations:
            return {"checkpoints": 0}
        return {"checkpoints": len(durations), "checkpoint_p50_ms": percentile(durations, 0.5),
                "checkpoint_p99_ms": percentile(durations, 0.99), "checkpoint_max_ms": max(durations)}


class OperatorWatch(threading.Thread):
    """Polls the penalty operator's metrics on Flink's REST API each second while the job runs:
    when its input watermark first leaves Long.MIN_VALUE (event time starts: timers can fire,
    the too_late gate applies); at the end, how long event time takes to catch up once the input
    is read, and its dead-lettered alerts by reason (the DLQ topic itself is trimmed during the
    run)."""

    WATERMARK = "penalty_decisions.currentInputWatermark"
    OUTPUT_WATERMARK = "penalty_decisions.currentOutputWatermark"

    def __init__(self, rest_port: int, job_id: str):
        super().__init__(daemon=True)
        self.rest_port, self.job_id = rest_port, job_id
        self.done = threading.Event()
        self.started = time.monotonic()
        self.watermark_first_s: float | None = None
        self.url: str | None = None

    def _metrics(self, names: list[str]) -> list[dict]:
        if self.url is None:
            vertices = _rest(self.rest_port, f"/jobs/{self.job_id}")["vertices"]
            vertex = next(v for v in vertices if "penalty decisions" in v["name"])
            self.url = f"/jobs/{self.job_id}/vertices/{vertex['id']}/subtasks/metrics"
        return _rest(self.rest_port, f"{self.url}?get={','.join(names)}&agg=min,sum") if names else []

    def run(self) -> None:
        while self.watermark_first_s is None and not self.done.wait(1.0):
            try:
                [metric] = self._metrics([self.WATERMARK]) or [{}]
            except (OSError, ValueError, StopIteration):
                continue
            if metric.get("min", -(2**63)) > -(2**62):  # every subtask has a watermark
                self.watermark_first_s = round(time.monotonic() - self.started, 1)

    def event_time_caught_up(self, timeout_s: float, unseen_s: float = 60.0) -> bool:
        """Waits until every subtask's input watermark has left Long.MIN_VALUE and its output
        watermark has reached it: the timers due by then have all fired. A job that ends a
        catch-up runs them here if event time was held through it (docs/operations.md)."""
        deadline = time.monotonic() + timeout_s
        # A job without these metrics (no operator named "penalty decisions") has nothing to wait
        # for: give up after unseen_s of not seeing them rather than at the timeout.
        unseen_until = time.monotonic() + unseen_s
        while time.monotonic() < deadline:
            try:
                got = {m["id"]: m["min"] for m in self._metrics([self.WATERMARK, self.OUTPUT_WATERMARK])}
            except (OSError, ValueError, StopIteration, KeyError):
                got = {}
            if self.WATERMARK in got:
                unseen_until = float("inf")
            elif time.monotonic() > unseen_until:
                return False
            held = got.get(self.WATERMARK, -(2**63))
            if held > -(2**62) and got.get(self.OUTPUT_WATERMARK, -(2**63)) >= held:
                return True
            time.sleep(METRICS_FETCH_MS / 1000)
        return False

    def rejected_by_reason(self, settle_s: float = 2 * METRICS_FETCH_MS / 1000) -> dict[str, int]:
        """`alerts_rejected{reason}` summed over subtasks, reasons with a count only; read after
        the REST API has refreshed its metrics (settle_s) once the input is processed."""
        time.sleep(settle_s)
        try:
            self._metrics([])
            ids = [m["id"] for m in _rest(self.rest_port, self.url) if m["id"].endswith(".alerts_rejected")]
            return {m["id"].split(".")[-2]: round(m["sum"]) for m in self._metrics(ids) if m.get("sum")}
        except (OSError, ValueError, StopIteration):
            return {}


def measure_throughput(args) -> dict:
    from jobs.generator import AlertGenerator, produce

    data = Path(tempfile.mkdtemp(prefix="penalty-bench-"))
    stack = localstack.start_stack(data)
    topics = job_config.Topics()
    localstack.create_topics(stack.bootstrap, topics.partitions())
    job = JobUnderTest(data, args.parallelism, args.mini_cluster)
    try:
        generator = AlertGenerator(seed=args.seed, users=args.users, zipf_s=args.zipf_s, step_ms=args.step_ms,
                                   start_ms=int(time.time() * 1000) - args.alerts * args.step_ms)
        t0 = time.monotonic()
        produced = produce(stack.bootstrap, topics.alerts, generator.payloads(args.alerts))
        produce_s = time.monotonic() - t0
        group = "bench-throughput"
        job_args = ["--bootstrap-servers", stack.bootstrap, "--starting-offsets", "earliest", "--group-id", group,
                    "--delivery", "exactly_once"]
        if args.checkpoint_interval_ms:
            job_args += ["--checkpoint-interval-ms", str(args.checkpoint_interval_ms)]
        job_args += _passthrough(args)
        if args.floor:
            job.start([*job_args, "--floor", args.floor], "jobs.floor_job")
        else:
            job.start(job_args)
        peak_rss, started, job_id = 0, None, None
        start_usage, broker_cpu_start = Usage(0, 0.0), 0.0
        # The second half: from the first check that finds half the input committed to the end.
        # It leaves out the start (JIT compilation, first checkpoints), which a long-running job
        # pays once: `steady_alerts_per_s` is the sustained rate.
        half: tuple[float, int, Usage] | None = None
        deadline = time.monotonic() + args.timeout_s
        committed = end = 0
        trimmer = Trimmer(stack.bootstrap, topics.alerts, group, [getattr(topics, name) for name in OUTPUTS])
        trimmer.start()
        watch: OperatorWatch | None = None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            usage = job.usage()
            peak_rss = max(peak_rss, usage.rss_bytes)
            if job_id is None:
                job_id = job.running_job()
                started = time.monotonic() if job_id else None
                if job_id:
                    watch = OperatorWatch(job.rest_port, job_id)
                    watch.start()
                usage = job.usage(threads=True)
                start_usage, broker_cpu_start = usage, tree_usage(stack.kafka.pid).cpu_s
                continue
            committed, end = committed_and_end(stack.bootstrap, topics.alerts, group)
            if half is None and end and committed >= end / 2:
                half = (time.monotonic(), committed, job.usage(threads=True))
            if end and committed >= end:
                break
        finished = time.monotonic()
        final = job.usage(threads=True)
        job_cpu_s, jit_cpu_s = final.cpu_s - start_usage.cpu_s, final.jit_cpu_s - start_usage.jit_cpu_s
        task_cpu_s = final.task_cpu_s - start_usage.task_cpu_s
        broker_cpu_s = tree_usage(stack.kafka.pid).cpu_s - broker_cpu_start
        steady_alerts = steady_s = steady_cpu_s = steady_task_s = None
        if half is not None and committed > half[1]:
            steady_alerts, steady_s, steady_cpu_s = committed - half[1], finished - half[0], final.cpu_s - half[2].cpu_s
            steady_task_s = final.task_cpu_s - half[2].task_cpu_s
        trimmer.done.set()
        done = end > 0 and committed >= end
        elapsed = finished - started if started else float("nan")
        outputs = {name: committed_and_end(stack.bootstrap, getattr(topics, name), "bench-count")[1]
                   for name in OUTPUTS}
        # Flink's own statistics over every completed checkpoint of the run (the job still runs),
        # before the wait below adds the quick ones of an idle job.
        try:
            stats = _rest(job.rest_port, f"/jobs/{job_id}/checkpoints") if job_id else {}
        except (OSError, ValueError):
            stats = {}
        # The timers still due once the input is read (all of them if event time was held through
        # the catch-up): how long they take, and the job's CPU meanwhile.
        catch_up_s = catch_up_cpu_s = None
        if watch is not None:
            before = job.usage()
            if done and watch.event_time_caught_up(args.timeout_s):
                catch_up_s = round(time.monotonic() - finished, 1)
                catch_up_cpu_s = round(job.usage().cpu_s - before.cpu_s, 1)
            watch.done.set()
        durations = stats.get("summary", {}).get("end_to_end_duration", {})
        last = (stats.get("latest") or {}).get("completed") or {}
        users_seen = args.users  # upper bound of users with state: every user the generator can pick
        full_size = last.get("full_size", last.get("state_size", 0))
        return {
            "benchmark": "throughput", "alerts": produced, "users": args.users, "zipf_s": args.zipf_s,
            "step_ms": args.step_ms, "floor": args.floor,
            "delivery": "exactly_once", "parallelism": args.parallelism,
            "deployment": "mini-cluster" if args.mini_cluster else f"standalone, {args.parallelism} TaskManagers x 1 slot",
            "checkpoint_interval_ms": checkpoint_interval_ms(args), "flink_conf": args.conf,
            "source_properties": args.source_property, "sink_properties": args.sink_property, "cpus": os.cpu_count(),
            "completed": done, "input_committed": committed, "input_end": end,
            "produce_s": round(produce_s, 1), "job_s": round(elapsed, 1),
            "alerts_per_s": round(produced / elapsed) if done else None,
            "output_end_offsets": outputs, "peak_rss_mb": round(peak_rss / 2**20),
            # CPU while the job ran: steadier than wall-clock throughput on a shared 2-core box.
            "job_cpu_s": round(job_cpu_s, 1), "job_cpu_ms_per_alert": round(1000 * job_cpu_s / produced, 3),
            "jit_cpu_s": round(jit_cpu_s, 1), "broker_cpu_s": round(broker_cpu_s, 1),
            # The operator chain's task threads (Python operator, router, sink writer, state
            # calls): what a change to the operator moves, without the JIT's and the runtime's noise.
            "task_cpu_ms_per_alert": round(1000 * task_cpu_s / produced, 3),
            "steady_alerts_per_s": round(steady_alerts / steady_s) if steady_alerts else None,
            "steady_job_cpu_ms_per_alert": round(1000 * steady_cpu_s / steady_alerts, 3) if steady_alerts else None,
            "steady_task_cpu_ms_per_alert": round(1000 * steady_task_s / steady_alerts, 3) if steady_alerts else None,
            "checkpoints": stats.get("counts", {}).get("completed", 0),
            "checkpoint_p50_ms": _ms(durations.get("p50")), "checkpoint_max_ms": _ms(durations.get("max")),
            "checkpoint_full_size_bytes": full_size,
            "state_bytes_per_user": round(full_size / users_seen) if users_seen else None,
            "broker_trims": trimmer.trims, "broker_trims_skipped": trimmer.skipped,
            # Seconds into the run when event time started in the operator (null: never during the
            # run, so no timer fired), and the DLQ by reason.
            "watermark_first_s": watch.watermark_first_s if watch else None,
            "event_time_catch_up_s": catch_up_s, "event_time_catch_up_job_cpu_s": catch_up_cpu_s,
            "rejected_by_reason": watch.rejected_by_reason() if watch else {},
        }
    finally:
        job.stop()
        stack.stop()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)


def _ms(value) -> int | None:
    """A duration of Flink's checkpoint summary ("NaN" when no checkpoint completed)."""
    try:
        return round(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def throughput_table(r: dict) -> str:
    floor = f" [floor: {r['floor']} pass-through, no decisions]" if r.get("floor") else ""
    return (f"throughput{floor}: {r['alerts']} alerts ({r['users']} users, zipf {r['zipf_s']}) in {r['job_s']} s "
            f"= {r['alerts_per_s']} alerts/s exactly-once, parallelism {r['parallelism']} on {r['cpus']} cpus\n"
            f"  output end offsets {r['output_end_offsets']}\n"
            f"  second half (sustained): {r['steady_alerts_per_s']} alerts/s, "
            f"{r['steady_job_cpu_ms_per_alert']} ms of job CPU per alert ({r['steady_task_cpu_ms_per_alert']} ms in the "
            f"operator's task threads)\n"
            f"  job CPU {r['job_cpu_s']} s = {r['job_cpu_ms_per_alert']} ms/alert (JIT compilers {r['jit_cpu_s']} s, "
            f"the operator's task threads {r['task_cpu_ms_per_alert']} ms/alert), "
            f"broker CPU {r['broker_cpu_s']} s\n  peak RSS {r['peak_rss_mb']} MB; {r['checkpoints']} checkpoints, "
            f"p50 {r['checkpoint_p50_ms']} ms, max {r['checkpoint_max_ms']} ms, last full size "
            f"{r['checkpoint_full_size_bytes']} B = {r['state_bytes_per_user']} B/user\n"
            f"  event time started {r['watermark_first_s']} s into the run, caught up {r['event_time_catch_up_s']} s "
            f"after the input was read (job CPU {r['event_time_catch_up_job_cpu_s']} s meanwhile); "
            f"DLQ by reason {r['rejected_by_reason']}")


def latency_table(r: dict) -> str:
    warmup = f" after {r['warmup_s']} s of warm-up (its p99 {r['warmup_p99_s']} s)" if r["warmup_s"] else ""
    return (f"latency ({r['delivery']}, {r['rate_per_s']}/s for {r['seconds']} s{warmup}): "
            f"{r['seen']}/{r['sent']} enforced; "
            f"p50 {r['p50_s']} s, p95 {r['p95_s']} s, p99 {r['p99_s']} s, max {r['max_s']} s\n"
            f"  p99 by 10 s of send time: {r['p99_s_by_10s']}\n"
            f"  {r['checkpoints']} checkpoints in the measured period: p50 {r.get('checkpoint_p50_ms')} ms, "
            f"p99 {r.get('checkpoint_p99_ms')} ms, max {r.get('checkpoint_max_ms')} ms")


def checkpoint_interval_ms(args) -> int:
    """The interval the job under test runs with (jobs.flink_env.settings_for decides it)."""
    from jobs import config as job_config
    from jobs.flink_env import settings_for

    parser = argparse.ArgumentParser()
    job_config.add_arguments(parser)
    flags = ["--delivery", getattr(args, "delivery", "exactly_once"), *_passthrough(args)]
    if args.checkpoint_interval_ms:
        flags += ["--checkpoint-interval-ms", str(args.checkpoint_interval_ms)]
    value = settings_for(job_config.from_args(parser.parse_args(flags)), embedded=True)
    return _duration_ms(value["execution.checkpointing.interval"])


_UNIT_MS = {"": 1, "ms": 1, "s": 1000, "min": 60_000, "m": 60_000, "h": 3_600_000}


def _duration_ms(text: str) -> int:
    """A Flink duration setting ("250ms", "5s", "2 min", a bare number of ms) in milliseconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _UNIT_MS:
        raise ValueError(f"not a duration: {text!r}")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _passthrough(args) -> list[str]:
    """The bench's Flink and Kafka overrides as flags of the job under test."""
    flags = []
    for flag, items in (("--conf", args.conf), ("--source-property", args.source_property),
                        ("--sink-property", args.sink_property)):
        for item in items:
            flags += [flag, item]
    return flags


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("throughput", "latency", "all"):
        p = sub.add_parser(name)
        p.add_argument("--checkpoint-interval-ms", type=int, default=None)
        p.add_argument("--parallelism", type=int, default=2)
        p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                       help="Flink option for the job (repeatable), as `python -m jobs.penalty_job --conf`")
        p.add_argument("--source-property", action="append", default=[], metavar="KEY=VALUE",
                       help="Kafka consumer property for the job's source (repeatable)")
        p.add_argument("--sink-property", action="append", default=[], metavar="KEY=VALUE",
                       help="Kafka producer property for the job's sink (repeatable)")
        p.add_argument("--mini-cluster", action="store_true",
                       help="run the job embedded in one process (`make run`) instead of on a local standalone "
                            "cluster of one-slot TaskManagers")
        p.add_argument("--keep", action="store_true", help="keep broker data, checkpoints and job logs")
        if name in ("throughput", "all"):
            p.add_argument("--alerts", type=int, default=1_000_000)
            p.add_argument("--users", type=int, default=100_000)
            p.add_argument("--zipf-s", type=float, default=1.0, help="skew of repeat offenders")
            p.add_argument("--seed", type=int, default=7)
            # 50 ms: 1M alerts span 14 h, less than the 24 h dedupe horizon, so the timers that forget
            # seen ids and incidents do not fire; --step-ms 1000 over 300k alerts runs that path.
            # At 1000 over the 1M default, 57% of the input went to the DLQ (docs/operations.md).
            p.add_argument("--step-ms", type=int, default=50,
                           help="event time between alerts; the input spans alerts x step: beyond the 24 h dedupe "
                                "horizon the timers that forget seen ids and incidents fire during the run")
            p.add_argument("--timeout-s", type=float, default=3600)
            p.add_argument("--floor", choices=("python", "jvm"),
                           help="run the pipeline with a pass-through in place of the penalty operator "
                                "(jobs/floor_job.py): what the source, exchange, router, sink and broker cost alone")
        if name in ("latency", "all"):
            p.add_argument("--rate", type=float, default=2000)
            p.add_argument("--seconds", type=float, default=60)
            p.add_argument("--warmup-s", type=float, default=0,
                           help="drive the rate this long first and leave it out of the figures (JIT "
                                "compilation of a freshly started job; the per-10 s p99 shows it)")
            p.add_argument("--delivery", choices=("exactly_once", "at_least_once"), default="exactly_once")
    args = parser.parse_args(argv)
    results = {}
    if args.cmd in ("throughput", "all"):
        results["throughput"] = measure_throughput(args)
        print(throughput_table(results["throughput"]), file=sys.stderr)
    if args.cmd in ("latency", "all"):
        results["latency"] = measure_latency(args)
        print(latency_table(results["latency"]), file=sys.stderr)
    print(json.dumps(results[args.cmd] if args.cmd != "all" else results))
    ok = all(r.get("completed", True) for r in results.values()) and \
        all(r["seen"] == r["sent"] for r in results.values() if "seen" in r)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
