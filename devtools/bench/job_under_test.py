"""The job under test and what the benchmarks read of it: its processes' memory and CPU (from
/proc, per thread where it matters), Flink's REST API, the broker's committed and end offsets, and
the trimmer that keeps the local broker small during a run; the job flags a bench passes through."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from devtools import localstack

# The output topics (attributes of jobs.config.Topics) a bench counts and trims.
OUTPUTS = ("enforcement", "notifications", "audit", "review", "dlq")


# How often Flink's REST API refreshes the metrics it serves (default 10 s): the bench reads the
# job's counters once at the end, when a 10 s old value would miss the last records.
METRICS_FETCH_MS = 1000


class JobUnderTest:
    """The penalty job as a bench runs it: by default on a local standalone cluster of
    `parallelism` TaskManagers with one slot each, as shipped (thread mode runs Python on one
    GIL per TaskManager process, so this is how subtasks get a core each); with mini_cluster,
    embedded in one process the way `make run` runs it."""

    def __init__(self, data: Path, parallelism: int, mini_cluster: bool, cluster_conf: list[str] | None = None):
        self.data, self.parallelism, self.mini_cluster = data, parallelism, mini_cluster
        self.cluster_conf = cluster_overrides(cluster_conf or [])
        if mini_cluster and self.cluster_conf:
            raise ValueError("--cluster-conf sets the standalone cluster: not with --mini-cluster")
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
        from devtools import cluster as flink_cluster

        self.cluster = flink_cluster.Cluster(self.data / "cluster", self.rest_port, localstack.free_port())
        flink_cluster.up(self.cluster, taskmanagers=self.parallelism, slots=1,
                         overrides={"metrics.fetcher.update-interval": str(METRICS_FETCH_MS), **self.cluster_conf})
        script = flink_cluster.REPO_ROOT.joinpath(*module.split(".")).with_suffix(".py")
        self.job_id = flink_cluster.submit(self.cluster, job_args, script)

    def running_job(self) -> str | None:
        """The job id once every task runs; raises if the job is gone."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the job exited with {self.process.returncode}; see {self.data / 'job.log'}")
        try:
            jobs = rest_get(self.rest_port, "/jobs")["jobs"]
            job_id = self.job_id or next((j["id"] for j in jobs if j["status"] == "RUNNING"), None)
            if job_id is None:
                return None
            detail = rest_get(self.rest_port, f"/jobs/{job_id}")
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
        from devtools import cluster as flink_cluster

        usages = [tree_usage(pid, threads) for pid in flink_cluster._alive_pids(self.cluster.root / "pids")]
        return Usage(*(sum(column) for column in zip(*usages))) if usages else Usage(0, 0.0)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            localstack._stop_group(self.process.pid, proc=self.process)
        if self.cluster is not None:
            from devtools import cluster as flink_cluster

            flink_cluster.down(self.cluster)


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


def rest_get(port: int, path: str):
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


def checkpoint_interval_ms(args) -> int:
    """The interval the job under test runs with (jobs.flink_env.settings_for decides it)."""
    from jobs import config as job_config
    from jobs.flink_env import settings_for

    parser = argparse.ArgumentParser()
    job_config.add_arguments(parser)
    flags = ["--delivery", getattr(args, "delivery", "exactly_once"), *passthrough_flags(args)]
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


def cluster_overrides(items: list[str]) -> dict[str, str]:
    """`--cluster-conf KEY=VALUE` items: settings of the standalone cluster itself (its rendered
    FLINK_CONF_DIR), for what a job cannot set, e.g. `env.java.opts.taskmanager` (JVM flags such as
    Java Flight Recorder) or `env.java.opts.jobmanager`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--cluster-conf wants KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def passthrough_flags(args) -> list[str]:
    """The bench's Flink and Kafka overrides as flags of the job under test."""
    flags = []
    for flag, items in (("--conf", args.conf), ("--source-property", args.source_property),
                        ("--sink-property", args.sink_property)):
        for item in items:
            flags += [flag, item]
    if getattr(args, "rules", None):
        flags += ["--rules", os.path.abspath(args.rules)]
    for flag in ("fetch_backoff_ms", "bundle_records", "bundle_ms", "state_cache_users"):
        if getattr(args, flag, None) is not None:
            flags += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return flags

