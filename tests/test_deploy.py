"""docker-compose.yml, the image and the Prometheus files cannot run here (no Docker engine), so
they are validated: every service, image, volume, port and command, and that the Flink settings
of the stack agree with flink-conf/config.yaml. The alert rules' metric names are checked against
a live cluster in tests/test_cluster.py."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.cluster import parse_properties
from jobs.flink_env import load_flink_conf

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
SERVICES = {"kafka", "topics", "redis", "jobmanager", "taskmanager", "submit", "applier", "notifier",
            "audit-archiver", "prometheus", "grafana"}
FLINK_SERVICES = ("jobmanager", "taskmanager", "submit")
ENTRYPOINT_ROLES = ("jobmanager", "taskmanager", "submit")


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_problems(doc: dict) -> list[str]:
    """Everything that would make `docker compose up` fail or drift from flink-conf/."""
    problems: list[str] = []
    services = doc.get("services", {})
    declared_volumes = set(doc.get("volumes") or {})
    used_volumes: set[str] = set()
    for missing in sorted(SERVICES - set(services)):
        problems.append(f"service {missing} is missing")
    for name, svc in services.items():
        if not svc.get("image") and not svc.get("build"):
            problems.append(f"{name}: neither image nor build")
        build = svc.get("build")
        if build:
            dockerfile = REPO / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                problems.append(f"{name}: Dockerfile {dockerfile} does not exist")
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                if not (REPO / source).exists():
                    problems.append(f"{name}: bind mount source {source} does not exist")
            else:
                used_volumes.add(source)
                if source not in declared_volumes:
                    problems.append(f"{name}: volume {source} is not declared")
        depends = svc.get("depends_on", [])
        for dep in depends if isinstance(depends, list) else depends.keys():
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
    for unused in sorted(declared_volumes - used_volumes):
        problems.append(f"volume {unused} is declared but not used")

    conf = load_flink_conf()
    for name in FLINK_SERVICES:
        svc = services.get(name)
        if svc is None:
            continue
        props = parse_properties(svc.get("environment", {}).get("FLINK_PROPERTIES", ""))
        for key in props:
            if key not in conf:
                problems.append(f"{name}: FLINK_PROPERTIES sets {key}, which flink-conf/config.yaml does not have")
        for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir", "rest.port",
                    "taskmanager.numberOfTaskSlots"):
            if key in props and props[key] != conf[key]:
                problems.append(f"{name}: {key}={props[key]} differs from flink-conf ({conf[key]})")
        prom = props.get("metrics.reporter.prom.port")
        low, _, high = conf["metrics.reporter.prom.port"].partition("-")
        if prom is None or not int(low) <= int(prom) <= int(high or low):
            problems.append(f"{name}: metrics.reporter.prom.port {prom} outside flink-conf's {low}-{high}")
        role = (svc.get("command") or ["jobmanager"])[0]
        if role not in ENTRYPOINT_ROLES:
            problems.append(f"{name}: unknown entrypoint role {role}")
    taskmanager = services.get("taskmanager", {})
    slots = int(conf["taskmanager.numberOfTaskSlots"]) * int(taskmanager.get("deploy", {}).get("replicas", 1))
    if slots < int(conf["parallelism.default"]):
        problems.append(f"taskmanager: {slots} slots in all, fewer than parallelism.default {conf['parallelism.default']}")
    jobmanager = services.get("jobmanager", {})
    if f"{conf['rest.port']}:{conf['rest.port']}" not in jobmanager.get("ports", []):
        problems.append(f"jobmanager: REST port {conf['rest.port']} is not published")
    return problems


def test_compose_is_complete_and_agrees_with_flink_conf():
    assert compose_problems(load_compose()) == []


@pytest.mark.parametrize("break_it, expected", [
    (lambda d: d["services"].__setitem__("job-manager", d["services"].pop("jobmanager")),
     "service jobmanager is missing"),
    (lambda d: d["volumes"].pop("flink-state"), "jobmanager: volume flink-state is not declared"),
    (lambda d: d["services"]["prometheus"]["volumes"].__setitem__(0, "./deploy/prom.yml:/etc/prometheus/prometheus.yml"),
     "prometheus: bind mount source ./deploy/prom.yml does not exist"),
    (lambda d: d["services"]["taskmanager"]["environment"].__setitem__(
        "FLINK_PROPERTIES", "execution.checkpointing.dir: file:///tmp/elsewhere\nmetrics.reporter.prom.port: 9249"),
     "taskmanager: execution.checkpointing.dir=file:///tmp/elsewhere differs from flink-conf"),
])
def test_validation_catches_a_broken_compose_file(break_it, expected):
    doc = copy.deepcopy(load_compose())
    break_it(doc)
    assert any(p.startswith(expected) for p in compose_problems(doc)), compose_problems(doc)


def _flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--")]


def _help(module: str, *sub: str) -> str:
    done = subprocess.run([sys.executable, "-m", module, *sub, "--help"], cwd=REPO, capture_output=True,
                          text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_service_commands_use_flags_their_programs_have():
    services = load_compose()["services"]
    for name, svc in services.items():
        args = svc.get("entrypoint") or []
        if args[:2] == ["python", "-m"]:
            module, rest = args[2], args[3:]
            sub = [rest[0]] if rest and not rest[0].startswith("-") else []
            text = _help(module, *sub)
            for flag in _flags(rest):
                assert flag in text, f"{name}: {module} {' '.join(sub)} has no {flag}"
    submit_args = services["submit"]["command"][1:]
    text = _help("jobs.penalty_job")
    for flag in _flags(submit_args):
        assert flag in text, f"submit: the job has no {flag}"
    rules = submit_args[submit_args.index("--rules") + 1]
    assert (REPO / rules.removeprefix("/opt/penalty/")).is_file()


def test_dockerfile_copies_what_exists_and_entrypoint_knows_the_roles():
    dockerfile = (REPO / "deploy/flink/Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", dockerfile, flags=re.MULTILINE):
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    assert "scripts/setup.sh" in dockerfile  # jars are fetched and sha256-checked as on a dev machine
    entrypoint = (REPO / "deploy/flink/entrypoint.sh").read_text()
    for role in ENTRYPOINT_ROLES:
        assert re.search(rf"^\s*{role}\)", entrypoint, flags=re.MULTILINE), f"entrypoint has no role {role}"
    assert subprocess.run(["bash", "-n", str(REPO / "deploy/flink/entrypoint.sh")], check=False).returncode == 0


def test_prometheus_scrapes_the_flink_services_and_loads_the_alerts():
    compose = load_compose()
    prom = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    port = parse_properties(compose["services"]["jobmanager"]["environment"]["FLINK_PROPERTIES"])[
        "metrics.reporter.prom.port"]
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert sorted(targets) == sorted([f"jobmanager:{port}", f"taskmanager:{port}"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["prometheus"]["volumes"]
              if v.startswith("./")}
    for rule_file in prom["rule_files"]:
        assert rule_file in mounts, f"{rule_file} is not mounted into the prometheus service"
        assert (REPO / mounts[rule_file]).is_file()


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard():
    grafana = load_compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: REPO / v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    provisioning = mounts["/etc/grafana/provisioning"]
    [datasource] = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    prometheus_port = load_compose()["services"]["prometheus"]["ports"][0].split(":")[-1]
    assert (datasource["type"], datasource["url"]) == ("prometheus", f"http://prometheus:{prometheus_port}")
    scrape_interval = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval  # what $__rate_interval is derived from
    [provider] = yaml.safe_load((provisioning / "dashboards/penalty.yml").read_text())["providers"]
    assert mounts[provider["options"]["path"]] == REPO / "deploy/grafana/dashboards"
    [dashboard_file] = sorted((REPO / "deploy/grafana/dashboards").glob("*.json"))
    dashboard = json.loads(dashboard_file.read_text())
    panels = dashboard["panels"]
    assert {(p["datasource"]["uid"], t["datasource"]["uid"]) for p in panels for t in p["targets"]} == {
        (datasource["uid"], datasource["uid"])}
    assert all(t["expr"] for p in panels for t in p["targets"])
    assert len({p["id"] for p in panels}) == len(panels)
    assert [p["title"].split(":")[0].split(" (")[0] for p in panels] == [
        "Backlog", "Dead-lettered per second, by reason", "Decisions per second, by action", "Decision latency",
        "Checkpoint duration", "Detector guard"]


def test_every_alert_has_a_runbook_section():
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", (REPO / "docs/operations.md").read_text(), flags=re.MULTILINE)}
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {a["alert"] for a in alerts} >= {"PenaltyConsumerLagGrowing", "PenaltyCheckpointFailures",
                                            "PenaltyDlqRateSpike", "PenaltyBanRateJump", "PenaltyNoOutput"}
    for alert in alerts:
        anchor = alert["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in headings, f"{alert['alert']}: no section #{anchor} in docs/operations.md"
