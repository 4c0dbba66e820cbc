"""The job on a real standalone Flink cluster (jobmanager + taskmanager processes from the
distribution in the apache-flink wheel, the project's flink-conf), submitted with `flink run -py`:
records flow, the job's metrics are on the cluster's REST API and Prometheus endpoint (including
every metric the alerting rules use), and it stops with a savepoint it can be restarted from."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from devtools import cluster as flink_cluster
from devtools.bench import job_under_test
from devtools.localstack import create_topics, free_port
from jobs.config import Topics

from .conftest import alert_bytes
from .stack_helpers import produce, read_committed

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parent.parent


def scrape(base_port: int) -> str:
    """Everything the jobmanager's and taskmanager's reporters expose (each takes the next free
    port of the configured range)."""
    out = []
    for port in range(base_port, base_port + 10):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                out.append(resp.read().decode())
        except OSError:
            pass
    return "".join(out)


def alert_rule_metrics() -> set[str]:
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    names: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            names.update(re.findall(r"\bflink_[A-Za-z0-9_]+", rule["expr"]))
    return names


def test_submit_to_standalone_cluster_metrics_and_savepoint(stack, tmp_path):
    topics = Topics().prefixed("cl-")
    create_topics(stack.bootstrap, topics.partitions())
    base = free_port()
    cluster = flink_cluster.Cluster(tmp_path / "cluster", rest_port=free_port(), metrics_port=base)
    started = time.monotonic()
    flink_cluster.up(cluster)
    try:
        now = int(time.time() * 1000)
        alerts = [alert_bytes(alert_id=f"c{i}", user_id=f"u-c{i}", stream_id=f"s-c{i}", event_time_ms=now - 60_000)
                  for i in range(20)]
        produce(stack.bootstrap, topics.alerts, alerts + [b"{broken"])
        job_id = flink_cluster.submit(cluster, [
            "--bootstrap-servers", stack.bootstrap, "--topic-prefix", "cl-", "--group-id", "cl-job",
            "--transactional-id-prefix", "cl", "--starting-offsets", "earliest", "--idleness-ms", "1000"])
        assert flink_cluster.job_status(cluster, job_id) in ("CREATED", "INITIALIZING", "RUNNING")
        checkpointing = flink_cluster.rest(cluster, f"/jobs/{job_id}/checkpoints/config")
        assert (checkpointing["mode"], checkpointing["interval"]) == ("exactly_once", 250)  # flink-conf

        enforcement = read_committed(stack.bootstrap, topics.enforcement, 20, timeout_s=120)
        assert sorted(r["record"]["user_id"] for r in enforcement) == sorted(f"u-c{i}" for i in range(20))
        # The watermark is now past the first alerts: one 3 days old is too late to dedupe.
        produce(stack.bootstrap, topics.alerts, [alert_bytes(alert_id="c-late", user_id="u-c0", stream_id="s-c0",
                                                             event_time_ms=now - 3 * 86_400_000)])
        dlq = read_committed(stack.bootstrap, topics.dlq, 2, timeout_s=30)
        assert sorted(d["record"]["reason"] for d in dlq) == ["not_json", "too_late"]

        # The job's own counters through the REST API (what the UI shows) ...
        vertices = flink_cluster.rest(cluster, f"/jobs/{job_id}")["vertices"]
        parse = next(v for v in vertices if "penalty decisions" in v["name"])
        url = f"/jobs/{job_id}/vertices/{parse['id']}/subtasks/metrics"
        # Every dead-lettered alert is in alerts_rejected by its reason, too_late (decided by the
        # core, not the parser) included: the DLQ-rate alert sums them.
        wanted = {"alerts_in": 22, "reason.not_json.alerts_rejected": 1, "reason.too_late.alerts_rejected": 1}
        deadline = time.monotonic() + 30
        while True:
            ids = [m["id"] for m in flink_cluster.rest(cluster, url) if m["id"].endswith(tuple(wanted))]
            sums = flink_cluster.rest(cluster, f"{url}?get={','.join(ids)}&agg=sum") if ids else []
            got = {m["id"].split(".", 1)[1]: m["sum"] for m in sums}
            if got == wanted or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert got == wanted

        # ... and through the Prometheus reporter, with every metric the alerting rules use.
        deadline = time.monotonic() + 30
        while True:
            exposed = scrape(base)
            missing = {m for m in alert_rule_metrics() if not re.search(rf"^{m}[{{ ]", exposed, flags=re.MULTILINE)}
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert not missing, f"alert rules use metrics the cluster does not expose: {sorted(missing)}"
        assert re.search(r'decision_latency_ms\{[^}]*quantile="0.99"', exposed)

        # What the bench reads of a cluster's processes (its smoke run uses the mini-cluster):
        # the operator's task threads and the JIT compilers are found by name.
        usages = [job_under_test.tree_usage(pid, threads=True) for pid in flink_cluster._alive_pids(cluster.root / "pids")]
        assert sum(u.task_cpu_s for u in usages) > 0 and sum(u.jit_cpu_s for u in usages) > 0

        savepoint = flink_cluster.stop_job(cluster, job_id, tmp_path / "savepoints")
        assert (Path(savepoint.removeprefix("file:")) / "_metadata").is_file()
        assert flink_cluster.job_status(cluster, job_id) == "FINISHED"

        # Restart from the savepoint as printed, at-least-once: the delivery's own checkpointing
        # is a job setting over the cluster's.
        job_id = flink_cluster.submit(cluster, [
            "--bootstrap-servers", stack.bootstrap, "--topic-prefix", "cl-", "--group-id", "cl-job",
            "--delivery", "at_least_once", "--restore-from", savepoint])
        checkpointing = flink_cluster.rest(cluster, f"/jobs/{job_id}/checkpoints/config")
        assert (checkpointing["mode"], checkpointing["interval"]) == ("at_least_once", 5000)
        flink_cluster.stop_job(cluster, job_id, tmp_path / "savepoints")
        print(f"cluster up -> savepoint in {time.monotonic() - started:.1f} s")
    finally:
        flink_cluster.down(cluster)
    assert not flink_cluster._alive_pids(cluster.root / "pids")
