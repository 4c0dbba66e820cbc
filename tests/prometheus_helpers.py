"""A real Prometheus server for live tests: Debian's `prometheus` (installed by scripts/setup.sh),
started on a loopback port with a generated config and queried through its HTTP API; and what
the shipped alert rules and Grafana dashboard ask of it (their selectors and queries)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from devtools.localstack import free_port

REPO = Path(__file__).resolve().parent.parent
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "penalty-job.json"
# A metric with its label matchers as written in a rule or a query (`by (...)` clauses have no
# braces, so they are never taken for matchers).
SELECTOR = re.compile(r"\bflink_[A-Za-z0-9_]+(?:\{[^}]*\})?")
# Grafana's global variables, which only Grafana expands: fixed ranges for Prometheus's own API.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "${__rate_interval}": "1m", "$__interval": "15s",
                     "${__interval}": "15s", "$__range": "1h", "${__range}": "1h"}


def metric_of(selector: str) -> str:
    return selector.split("{", 1)[0]


def alert_selectors() -> dict[str, set[str]]:
    """Alert name -> the selectors of its expression."""
    rules = yaml.safe_load(ALERT_RULES.read_text())
    return {rule["alert"]: set(SELECTOR.findall(rule["expr"]))
            for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) for every query of the dashboard, Grafana's variables replaced."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
                expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
            assert "$" not in expr, f"{panel['title']}: a Grafana variable this test does not know: {expr}"
            queries.append((panel["title"], expr))
    return queries


def finite(result: list[dict]) -> list[dict]:
    """The series of an instant query's result that hold a number (not NaN, not +-Inf)."""
    return [r for r in result if math.isfinite(float(r["value"][1]))]


class PrometheusError(Exception):
    """The server did not start or a query failed."""


@dataclass
class Prometheus:
    proc: subprocess.Popen
    port: int
    log: Path

    def api(self, path: str, **params) -> object:
        query = urllib.parse.urlencode(params, doseq=True)
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}{'?' + query if query else ''}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        data = self.api("query", query=expr)
        return data["result"]

    def series(self, selector: str, window_s: int = 300) -> list[dict]:
        now = time.time()
        return self.api("series", **{"match[]": selector, "start": f"{now - window_s:.3f}", "end": f"{now:.3f}"})

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def rules(self) -> list[dict]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def targets(self) -> list[dict]:
        return self.api("targets")["activeTargets"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def tail(self, n: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def start_prometheus(work_dir: Path, targets: list[str], rule_files: list[Path], scrape_interval_s: int = 1,
                     evaluation_interval_s: int = 1, timeout_s: float = 30.0) -> Prometheus:
    """`prometheus` on a free loopback port scraping `targets` (job "flink", as in
    deploy/prometheus/prometheus.yml) and evaluating `rule_files`; returns once it is ready."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusError("prometheus is missing: run scripts/setup.sh (`make test` does), which installs "
                              "Debian's prometheus package")
    work_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": f"{scrape_interval_s}s", "scrape_timeout": f"{scrape_interval_s}s",
                   "evaluation_interval": f"{evaluation_interval_s}s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "flink", "static_configs": [{"targets": targets}]}],
    }
    (work_dir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = work_dir / "prometheus.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([binary, f"--config.file={work_dir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={work_dir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                cwd=work_dir, stdout=fh, stderr=subprocess.STDOUT)
    server = Prometheus(proc, port, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PrometheusError(f"prometheus exited with {proc.returncode}:\n{server.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise PrometheusError(f"prometheus was not ready within {timeout_s:.0f} s:\n{server.tail()}")
