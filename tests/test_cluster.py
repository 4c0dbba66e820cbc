"""The job on a real standalone Flink cluster (jobmanager + taskmanager processes from the
distribution in the apache-flink wheel, the project's flink-conf), submitted with `flink run -py`:
records flow, the job's metrics are on the cluster's REST API, and it stops with a savepoint it can
be restarted from. Then a real Prometheus (Debian's) scrapes the cluster's reporters while the job
runs: every metric the alert rules and the Grafana dashboard use has data there, every dashboard
query is answered, and a burst of malformed alerts makes the DLQ alert pending."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from devtools import cluster as flink_cluster
from devtools.bench import job_under_test
from devtools.localstack import create_topics, free_port
from jobs.config import Topics

from .conftest import DEFAULT_RULES, alert_bytes
from .prometheus_helpers import (
    ALERT_RULES,
    SELECTOR,
    alert_selectors,
    dashboard_queries,
    finite,
    metric_of,
    start_prometheus,
)
from .stack_helpers import produce, read_committed

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One standalone cluster for this module's tests. Two one-slot TaskManagers run one job at
    parallelism 2, so each test stops or cancels its job before the next one submits."""
    running = flink_cluster.Cluster(tmp_path_factory.mktemp("cluster"), rest_port=free_port(), metrics_port=free_port())
    # The jobmanager's RPC port too: with flink-conf's 6123, TaskManagers started while another
    # cluster runs on this machine register with that one.
    flink_cluster.up(running, overrides={"jobmanager.rpc.port": free_port()})
    yield running
    flink_cluster.down(running)
    assert not flink_cluster._alive_pids(running.root / "pids")


def reporter_ports(cluster: flink_cluster.Cluster) -> list[int]:
    """The Prometheus reporters of the cluster's processes: each takes the next free port of the
    configured range (jobmanager and taskmanagers)."""
    ports = []
    for port in range(cluster.metrics_port, cluster.metrics_port + 10):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                resp.read(1)
            ports.append(port)
        except OSError:
            pass
    return ports


def test_submit_to_standalone_cluster_metrics_and_savepoint(stack, cluster, tmp_path):
    topics = Topics().prefixed("cl-")
    create_topics(stack.bootstrap, topics.partitions())
    started = time.monotonic()
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

    # The job's own counters through the REST API (what the UI shows; Prometheus: below).
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
    print(f"submit -> savepoint in {time.monotonic() - started:.1f} s")


GUARD_METRIC = "flink_taskmanager_job_task_operator_detector_guard_tripped"
GUARD_TEST_DETECTOR = "guard-test-v1"
ALERTS_IN = 'flink_taskmanager_job_task_operator_alerts_in{job_name="penalty_job"}'


def wait_for(what: str, check, timeout_s: float = 60.0):
    """Poll `check` every second until it returns a true value (returned); fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not (got := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(1)
    return got


def still_missing(check, grace_s: float = 10.0) -> list:
    """What `check` lists as missing once it lists nothing or `grace_s` passed (a series can be a
    scrape or an evaluation behind)."""
    deadline = time.monotonic() + grace_s
    while (missing := check()) and time.monotonic() < deadline:
        time.sleep(1)
    return missing


class TestMonitoringOnARealPrometheus:
    """deploy/prometheus/alerts.yml and the Grafana dashboard against Debian's prometheus scraping
    the cluster's reporters while the job runs: what the Prometheus of docker-compose.yml does,
    scraping and evaluating every second instead of every 15 s."""

    @pytest.fixture(scope="class")
    @classmethod
    def prom(cls, stack, cluster, tmp_path_factory):
        """The server; the job on `pm-` topics; 20 alerts and a ban decided and scraped."""
        ports = reporter_ports(cluster)
        assert len(ports) == 3, f"a jobmanager and two taskmanagers expose metrics, found ports {ports}"
        work = tmp_path_factory.mktemp("prometheus")
        # The shipped alert rules, unchanged, `for` included: PenaltyDlqRateSpike's `for: 10m` only
        # delays firing, and its pending state already shows the expression true on live data.
        server = start_prometheus(work, [f"127.0.0.1:{p}" for p in ports], [ALERT_RULES])
        # The default policy, plus limits small enough for one test detector to trip its guard.
        policy = yaml.safe_load(DEFAULT_RULES.read_text())
        policy["detector_guard"]["detectors"] = {GUARD_TEST_DETECTOR: {"alerts": {"floor": 1, "ceiling": 1000},
                                                                       "enforcements": {"floor": 1, "ceiling": 2}}}
        (work / "rules.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
        topics = Topics().prefixed("pm-")
        create_topics(stack.bootstrap, topics.partitions())
        job_id = None
        try:
            job_id = flink_cluster.submit(cluster, [
                "--bootstrap-servers", stack.bootstrap, "--topic-prefix", "pm-", "--group-id", "pm-job",
                "--transactional-id-prefix", "pm", "--starting-offsets", "earliest", "--idleness-ms", "1000",
                "--rules", str(work / "rules.yaml")])
            # The counters are registered at zero when the operators open; scraped at zero before any
            # alert, what follows is an increase to rate() and increase().
            wait_for("alerts_in of both subtasks in Prometheus", lambda: len(server.query(ALERTS_IN)) == 2, 180)
            now = int(time.time() * 1000)
            alerts = [alert_bytes(alert_id=f"pm{i}", user_id=f"u-pm{i}", stream_id=f"s-pm{i}", event_time_ms=now - 2000)
                      for i in range(20)]
            alerts.append(alert_bytes(alert_id="pm-ban", user_id="u-pm-ban", stream_id="s-pm-ban",
                                      violation_type="csam", confidence=0.99, event_time_ms=now - 2000))
            produce(stack.bootstrap, topics.alerts, alerts)
            wait_for("the 21 alerts counted in Prometheus",
                     lambda: finite(server.query(f"sum({ALERTS_IN}) >= 21")), 60)
            yield server
        finally:
            if job_id is not None:  # frees the slots; the cluster goes down with the module
                urllib.request.urlopen(urllib.request.Request(f"{cluster.rest_url}/jobs/{job_id}?mode=cancel",
                                                              method="PATCH"), timeout=10).close()
            server.stop()

    def test_the_job_is_scraped_and_every_rule_evaluates(self, prom):
        assert {t["labels"]["job"] for t in prom.targets()} == {"flink"}
        # A scrape of a busy process can miss its 1 s timeout: the next one counts.
        assert still_missing(lambda: [(t["scrapeUrl"], t["lastError"]) for t in prom.targets() if t["health"] != "up"]) == []
        rules = prom.rules()
        assert sorted(r["name"] for r in rules) == sorted(alert_selectors())
        assert still_missing(lambda: [(r["name"], r["health"], r.get("lastError")) for r in prom.rules()
                                      if r["health"] != "ok"]) == []

    def test_every_metric_of_the_alerts_and_the_dashboard_has_data(self, prom):
        used = {s for selectors in alert_selectors().values() for s in selectors}
        used |= {s for _, query in dashboard_queries() for s in SELECTOR.findall(query)}
        assert {metric_of(s) for s in used} >= {GUARD_METRIC, "flink_jobmanager_job_uptime"}
        # /api/v1/series: the series exist; an instant query: they hold a number now.
        assert still_missing(lambda: [s for s in sorted(used) if not (prom.series(s) and finite(prom.query(s)))]) == []
        # A misspelled name or a label its series lack finds nothing: the check is not vacuous.
        assert not prom.series("flink_taskmanager_job_task_operator_alert_in")
        assert not prom.series('flink_taskmanager_job_task_operator_alerts_in{action="ban"}')

    def test_every_dashboard_query_has_data(self, prom):
        queries = dashboard_queries()
        assert len(queries) >= 7
        assert still_missing(lambda: [(title, q) for title, q in queries if not finite(prom.query(q))]) == []

    def test_a_detector_over_its_limits_fires_the_guard_alert(self, stack, prom):
        def guard_alerts():
            return [(a["state"], a["labels"]) for a in prom.alerts()
                    if a["labels"]["alertname"] == "PenaltyDetectorGuardTripped"]

        assert guard_alerts() == []
        now = int(time.time() * 1000)
        # Enforce-band alerts (hate_speech at 0.95): the third goes over the test detector's limit of 2.
        produce(stack.bootstrap, Topics().prefixed("pm-").alerts, [
            alert_bytes(alert_id=f"pm-g{i}", user_id=f"u-pm-g{i}", stream_id=f"s-pm-g{i}",
                        detector_id=GUARD_TEST_DETECTOR, event_time_ms=now - 2000) for i in range(4)])
        # No `for`: it fires at the first evaluation that sees the gauge at 1. Flink's reporter
        # writes label values with `_` for `-`.
        assert wait_for("PenaltyDetectorGuardTripped firing", guard_alerts, 60) == [
            ("firing", {"alertname": "PenaltyDetectorGuardTripped", "detector": "guard_test_v1", "severity": "page"})]
        [guard_panel] = [q for _, q in dashboard_queries() if GUARD_METRIC in q]
        assert {r["metric"]["detector"]: r["value"][1] for r in prom.query(guard_panel)} == {
            "det_1": "0", "guard_test_v1": "1"}

    def test_a_burst_of_malformed_alerts_makes_the_dlq_alert_pending(self, stack, prom):
        def dlq_alert():
            return [a["state"] for a in prom.alerts() if a["labels"]["alertname"] == "PenaltyDlqRateSpike"]

        assert dlq_alert() == []
        schema = json.loads(alert_bytes(alert_id="pm-bad", user_id="u-pm-bad"))
        schema["confidence"] = "very"
        burst = [b"{broken"] * 30 + [json.dumps({**schema, "alert_id": f"pm-bad{i}"}).encode() for i in range(30)]
        produce(stack.bootstrap, Topics().prefixed("pm-").alerts, burst)
        # 60 of 81 alerts, far over 5%, but the rule judges rates against at least 1 alert/s over
        # 5 minutes: 60 / 300 s = 0.2 > 0.05.
        assert wait_for("PenaltyDlqRateSpike pending", dlq_alert, 60) in (["pending"], ["firing"])
        [dlq_panel] = [q for title, q in dashboard_queries() if "reason_alerts_rejected" in q]
        rates = {r["metric"]["reason"]: float(r["value"][1]) for r in prom.query(dlq_panel)}
        assert rates["not_json"] > 0 and rates["schema"] > 0, rates
