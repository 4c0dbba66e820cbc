"""Faults on the real stack that Flink itself must recover from, each checked against the
`rules simulate` oracle with read_committed consumers started after the job has caught up:

- the broker frozen for 20 s with input in flight, and the broker stopped for 20 s and restarted
  on the same port and data dir: the embedded job recovers by itself (restart strategy,
  flink-conf), exactly-once;
- one TaskManager of the standalone cluster killed with SIGKILL mid-stream: Flink restarts the job
   from its latest checkpoint, on a TaskManager a supervisor (here the test) starts; exactly-once.

Each prints one line (pytest -s): fault, records in, lost, duplicated, recovery time."""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import pytest

from devtools import cluster as flink_cluster
from devtools.localstack import create_topics, free_port, start_broker
from jobs.config import Topics

from .fault_helpers import (
    alert_lines,
    alive_and_caught_up,
    assert_exactly_once,
    embedded_job,
    embedded_restarts,
    end_offsets,
    expected_outputs,
    paced_producer,
    read_outputs,
    report,
    rest_args,
    rest_json,
    wait_first_output,
)
from .stack_helpers import JobProcess, caught_up
from .test_stack_exactly_once import checkpoints, job_args, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.faults]


class OwnBroker:
    """A broker of the test's own (the session's is shared with other tests), on a fixed port and
    data dir so that it can come back where the job expects it."""

    def __init__(self, data_dir):
        self.port, self.data_dir = free_port(), data_dir
        self.service = start_broker(self.port, data_dir)
        self.bootstrap = f"127.0.0.1:{self.port}"

    def restart(self) -> None:
        self.service = start_broker(self.port, self.data_dir)

    def stop(self) -> None:
        self.service.stop()


def run_outage(tmp_path, prefix: str, seed: int, outage, idle_before: bool) -> None:
    """8,000 alerts at 1,000/s, half before the outage and half after; `outage(broker)` takes the
    broker away for ~20 s and brings it back. The job is the same process throughout, nobody
    restarts it: its Kafka clients retry through the outage (a checkpoint waits for the broker),
    and what they cannot ride out fails the job, which Flink's restart strategy (flink-conf)
    restores from its latest checkpoint."""
    broker = OwnBroker(tmp_path / "kafka")
    topics = Topics().prefixed(prefix)
    port = free_port()
    try:
        create_topics(broker.bootstrap, topics.partitions())
        lines = alert_lines(seed=seed, count=8000)
        before, after = lines[:4000], lines[4000:]
        want = expected_outputs(lines)
        job = JobProcess(job_args(SimpleNamespace(bootstrap=broker.bootstrap), prefix, tmp_path / "checkpoints",
                                  "--starting-offsets", "earliest", *rest_args(port)), tmp_path / "job.log")
        try:
            job_id = embedded_job(port, job)
            wait_for(lambda: checkpoints(tmp_path / "checkpoints"), 120, "the first checkpoint", job)
            producer = paced_producer(broker.bootstrap, topics.alerts, before, 1000)
            wait_first_output(broker.bootstrap, topics.audit, dict.fromkeys(range(4), 0), 120)
            if idle_before:
                producer.join(timeout=60)
                wait_for(lambda: alive_and_caught_up(job, broker.bootstrap, prefix + "job", topics.alerts), 300,
                         "the job to commit the input before the stop", job)
            at_outage = end_offsets(broker.bootstrap, topics.audit)
            in_flight = producer.is_alive()
            started = time.monotonic()
            outage(broker)
            back = time.monotonic()
            assert job.proc.poll() is None, job.tail()
            producer.join(timeout=120)
            assert not producer.is_alive()
            producer = paced_producer(broker.bootstrap, topics.alerts, after, 1000)
            first = wait_first_output(broker.bootstrap, topics.audit, at_outage, 300)
            producer.join(timeout=120)
            assert not producer.is_alive()
            wait_for(lambda: alive_and_caught_up(job, broker.bootstrap, prefix + "job", topics.alerts), 300,
                     "the job to catch up after the outage", job)
            time.sleep(2)  # the checkpoint that committed the offsets also committed the outputs
            out = read_outputs(broker.bootstrap, topics, want)
            restarts = embedded_restarts(port, job_id)
            counts = rest_json(port, f"/jobs/{job_id}/checkpoints")["counts"]
            slowest_ms = rest_json(port, f"/jobs/{job_id}/checkpoints")["summary"]["end_to_end_duration"]["max"]
            assert job.proc.poll() is None, job.tail()  # never restarted by hand: still the same process
        finally:
            job.kill(signal.SIGTERM)
        report(f"broker {outage.__doc__}", f"exact outputs vs oracle ({want.total} + {want.dlq} dlq); input in "
               f"flight at the outage: {in_flight}; job restarts by Flink: {restarts}; checkpoints failed "
               f"{counts['failed']}, slowest {slowest_ms / 1000:.1f} s", len(lines), out.lost,
               out.duplicated, f"outage start -> first new output {first - started:.1f} s; broker back -> "
               f"{first - back:.1f} s")
        assert_exactly_once(out, want)
        # The outage reached the job: a checkpoint waited for the broker, or failed and Flink
        # restarted the job (both heal without anyone's help).
        assert slowest_ms >= 15_000 or counts["failed"] or restarts, (slowest_ms, counts, restarts)
    finally:
        broker.stop()


def frozen_20s(broker: OwnBroker) -> None:
    """frozen 20 s (SIGSTOP, SIGCONT)"""
    os.kill(broker.service.pid, signal.SIGSTOP)
    try:
        time.sleep(20)
    finally:
        os.kill(broker.service.pid, signal.SIGCONT)


def stopped_20s(broker: OwnBroker) -> None:
    """stopped 20 s (SIGTERM), restarted on the same port and data dir"""
    stopped = time.monotonic()
    broker.stop()  # noida-db saves its data dir on the way out
    time.sleep(max(0.0, 20.0 - (time.monotonic() - stopped)))
    broker.restart()


def test_broker_frozen_20s_with_input_in_flight_job_recovers_by_itself_exactly_once(tmp_path):
    """Unreachable mid-stream (a hung broker, or a network partition): requests time out, the
    checkpoint in progress fails, transactions open and pre-committed at the time survive in the
    broker and are committed or aborted after the restart."""
    run_outage(tmp_path, "bkf-", 11, frozen_20s, idle_before=False)


def test_broker_stopped_20s_and_restarted_job_recovers_by_itself_exactly_once(tmp_path):
    """A broker process stopped and started again. The local broker (noida-db) keeps its logs across
    a restart but not its transaction coordinator's state: a transaction Flink pre-committed before
    the stop cannot be committed after it (the commit is acknowledged, the records stay invisible
    to read_committed consumers). Apache Kafka keeps that state in __transaction_state. So here the
    stop comes once the job has committed what it read (its transactions open at the stop are
    empty), and what the test checks is the job's own recovery: reconnecting, new transactional
    producers, exact outputs for the input that follows."""
    run_outage(tmp_path, "bks-", 13, stopped_20s, idle_before=True)


def rest_metric(cluster: flink_cluster.Cluster, job_id: str, name: str) -> float:
    [metric] = flink_cluster.rest(cluster, f"/jobs/{job_id}/metrics?get={name}")
    return float(metric["value"])


def test_taskmanager_sigkill_flink_restarts_from_latest_checkpoint_exactly_once(stack, tmp_path):
    prefix = "tmk-"
    topics = Topics().prefixed(prefix)
    create_topics(stack.bootstrap, topics.partitions())
    lines = alert_lines(seed=12, count=10_000)
    want = expected_outputs(lines)
    cluster = flink_cluster.Cluster(tmp_path / "cluster", rest_port=free_port(), metrics_port=free_port())
    flink_cluster.up(cluster)  # a jobmanager and two TaskManagers of one slot: parallelism 2 uses both
    try:
        job_id = flink_cluster.submit(cluster, [
            "--bootstrap-servers", stack.bootstrap, "--topic-prefix", prefix, "--group-id", prefix + "job",
            "--transactional-id-prefix", prefix + "penalty", "--starting-offsets", "earliest"])
        wait_for(lambda: flink_cluster.rest(cluster, f"/jobs/{job_id}/checkpoints")["counts"]["completed"] > 0, 180,
                 "the first checkpoint")
        producer = paced_producer(stack.bootstrap, topics.alerts, lines, 1000)
        wait_first_output(stack.bootstrap, topics.audit, dict.fromkeys(range(4), 0), 120)
        victim = flink_cluster.taskmanager_pids(cluster)[0]
        at_kill = end_offsets(stack.bootstrap, topics.audit)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        assert producer.is_alive(), "the input ended before the kill: not mid-stream"
        flink_cluster.start_taskmanager(cluster)  # as a supervisor would
        first = wait_first_output(stack.bootstrap, topics.audit, at_kill, 300)
        producer.join(timeout=120)
        wait_for(lambda: caught_up(stack.bootstrap, prefix + "job", topics.alerts), 300, "the job to catch up")
        time.sleep(2)  # the checkpoint that committed the offsets also committed the outputs
        out = read_outputs(stack.bootstrap, topics, want)
        assert flink_cluster.job_status(cluster, job_id) == "RUNNING"  # the same job, restarted by Flink
        restored = flink_cluster.rest(cluster, f"/jobs/{job_id}/checkpoints")["latest"]["restored"]
        restarts = rest_metric(cluster, job_id, "numRestarts")
    finally:
        flink_cluster.down(cluster)
    report("TaskManager SIGKILL (standalone cluster)", f"exact outputs vs oracle ({want.total} + {want.dlq} dlq); "
           f"restored checkpoint {restored and restored['id']}, numRestarts {restarts:.0f}", len(lines), out.lost,
           out.duplicated, f"kill -> first new output {first - killed:.1f} s")
    assert restored is not None and not restored["is_savepoint"] and restored["id"] > 0
    assert restarts >= 1
    assert_exactly_once(out, want)
