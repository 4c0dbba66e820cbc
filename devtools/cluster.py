"""A local standalone Flink cluster (jobmanager + TaskManagers) from the Flink distribution inside the
apache-flink wheel, configured from the project's flink-conf/, and job submission with `flink run -py`.

    python -m devtools.cluster up                   start the cluster (REST/UI on 127.0.0.1:8081), two
                                                    TaskManagers of one slot each
    python -m devtools.cluster submit -- JOB ARGS   `flink run -d -py jobs/penalty_job.py --cluster JOB ARGS`
    python -m devtools.cluster stop-job JOB_ID      stop the job with a savepoint (`flink stop`)
    python -m devtools.cluster down                 stop the cluster
    python -m devtools.cluster status
    python -m devtools.cluster render --conf-dir DIR --lib-dir DIR
                                                    the container entrypoint's FLINK_CONF_DIR and lib/

This is the same submission a data platform engineer does on a production cluster; only the
generated configuration (.run/cluster/conf) points paths and ports at this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import yaml

from devtools.localstack import RUN_DIR
from jobs.config import REPO_ROOT

FLINK_CONF = REPO_ROOT / "flink-conf" / "config.yaml"
JOB_SCRIPT = REPO_ROOT / "jobs" / "penalty_job.py"


class ClusterError(Exception):
    """The standalone cluster cannot start or a command against it failed."""


def flink_home() -> Path:
    spec = find_spec("pyflink")
    if spec is None or not spec.submodule_search_locations:
        raise ClusterError("apache-flink is not installed: run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        tree = tree.setdefault(name, {})
    tree[leaf] = value


@dataclass(frozen=True)
class Cluster:
    root: Path
    rest_port: int = 8081
    metrics_port: int = 9249

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def conf_dir(self) -> Path:
        return self.root / "conf"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    def env(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        env = dict(os.environ, FLINK_CONF_DIR=str(self.conf_dir), FLINK_LOG_DIR=str(self.log_dir),
                   FLINK_LIB_DIR=str(self.root / "lib"), PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
        if sys.prefix != sys.base_prefix:
            env["VIRTUAL_ENV"] = sys.prefix  # thread mode: the TaskManager's embedded Python is this venv
        return env

    def bin(self, name: str) -> str:
        return str(flink_home() / "bin" / name)


def render_conf(conf_dir: Path, overrides: dict[str, object]) -> None:
    """Write FLINK_CONF_DIR: the project's flink-conf/config.yaml with `overrides` (dotted keys)
    applied, plus the distribution's log4j files. Everything not overridden (checkpointing, state
    backend, restart strategy, thread mode, Prometheus reporter) is as shipped."""
    with open(FLINK_CONF, encoding="utf-8") as fh:
        tree = yaml.safe_load(fh)
    for key, value in overrides.items():
        _set(tree, key, value)
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    for name in ("log4j.properties", "log4j-cli.properties", "log4j-console.properties"):
        shutil.copy(flink_home() / "conf" / name, conf_dir / name)


def local_overrides(cluster: Cluster) -> dict[str, object]:
    """This machine's paths and loopback ports."""
    return {
        "rest.port": cluster.rest_port,
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "jobmanager.rpc.address": "127.0.0.1",
        "jobmanager.bind-host": "127.0.0.1",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        "metrics.reporter.prom.port": f"{cluster.metrics_port}-{cluster.metrics_port + 9}",
        "execution.checkpointing.dir": (cluster.root / "checkpoints").as_uri(),
        "execution.checkpointing.savepoint-dir": (cluster.root / "savepoints").as_uri(),
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "env.pid.dir": str(cluster.root / "pids"),
        "io.tmp.dirs": str(cluster.root / "tmp"),
    }


def parse_properties(text: str) -> dict[str, str]:
    """FLINK_PROPERTIES of the container images: one `key: value` per line."""
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition(":")
            if not sep:
                raise ClusterError(f"FLINK_PROPERTIES line without 'key: value': {line!r}")
            out[key.strip()] = value.strip()
    return out


def link_lib(lib: Path) -> None:
    """lib/ of the distribution plus opt/flink-python: without it in lib a second Python job on the
    same TaskManager fails in thread mode (pemja loaded twice by different class loaders)."""
    shutil.rmtree(lib, ignore_errors=True)
    lib.mkdir(parents=True)
    home = flink_home()
    for jar in [*sorted((home / "lib").glob("*.jar")), *sorted((home / "opt").glob("flink-python*.jar"))]:
        (lib / jar.name).symlink_to(jar)


def rest(cluster: Cluster, path: str, timeout_s: float = 2.0):
    with urllib.request.urlopen(f"{cluster.rest_url}{path}", timeout=timeout_s) as resp:
        return json.load(resp)


def _run(cluster: Cluster, args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=cluster.env(), cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                          timeout=timeout_s)


def up(cluster: Cluster, taskmanagers: int = 2, slots: int = 1, timeout_s: float = 90.0,
       overrides: dict[str, str] | None = None) -> None:
    """Start a jobmanager and `taskmanagers` TaskManagers of `slots` slots each. Thread mode runs
    the Python operators inside the TaskManager's JVM, on one CPython and so one GIL per process:
    two subtasks in one TaskManager take turns in Python. One slot per TaskManager (the shipped
    configuration) lets each subtask run Python on its own core."""
    from devtools.localstack import port_taken

    if port_taken(cluster.rest_port):
        raise ClusterError(f"port {cluster.rest_port} is taken: is a cluster already up? (`python -m devtools.cluster down`)")
    render_conf(cluster.conf_dir, {**local_overrides(cluster), "taskmanager.numberOfTaskSlots": slots,
                                   **(overrides or {})})
    for sub in ("pids", "tmp", "log"):
        (cluster.root / sub).mkdir(parents=True, exist_ok=True)
    link_lib(cluster.root / "lib")
    for script in ["jobmanager.sh"] + ["taskmanager.sh"] * taskmanagers:
        done = _run(cluster, [cluster.bin(script), "start"], 60)
        if done.returncode != 0:
            raise ClusterError(f"{script} start failed: {done.stderr.strip() or done.stdout.strip()}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            overview = rest(cluster, "/overview")
            if overview["taskmanagers"] >= taskmanagers and overview["slots-total"] >= taskmanagers * slots:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    down(cluster)
    raise ClusterError(f"the cluster did not report a TaskManager within {timeout_s:.0f} s; logs in {cluster.log_dir}")


def submit(cluster: Cluster, job_args: list[str], script: Path = JOB_SCRIPT, timeout_s: float = 180.0) -> str:
    """`flink run -d -py <script> --cluster ...` (the penalty job unless told); returns the job id. The connector jars
    travel with the job (the job adds them as pipeline.jars), as on any shared cluster."""
    done = _run(cluster, [cluster.bin("flink"), "run", "-d", "-py", str(script), "--cluster", *job_args], timeout_s)
    found = re.search(r"JobID ([0-9a-f]{32})", done.stdout + done.stderr)
    if done.returncode != 0 or not found:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise ClusterError(f"flink run failed (exit {done.returncode}):\n{tail}")
    return found.group(1)


def job_status(cluster: Cluster, job_id: str) -> str:
    return rest(cluster, f"/jobs/{job_id}")["state"]


def stop_job(cluster: Cluster, job_id: str, savepoint_dir: Path, timeout_s: float = 180.0) -> str:
    """Stop with a savepoint (`flink stop --savepointPath`); returns the savepoint path."""
    savepoint_dir.mkdir(parents=True, exist_ok=True)
    done = _run(cluster, [cluster.bin("flink"), "stop", "--savepointPath", savepoint_dir.resolve().as_uri(), job_id],
                timeout_s)
    found = re.search(r"Savepoint completed\. Path: (\S+)", done.stdout)
    if done.returncode != 0 or not found:
        raise ClusterError(f"flink stop failed (exit {done.returncode}): {(done.stdout + done.stderr).strip()[-2000:]}")
    return found.group(1)


def taskmanager_pids(cluster: Cluster) -> list[int]:
    """The live TaskManager processes (taskmanager.sh appends each one's pid to one file)."""
    pids = []
    for pid_file in (cluster.root / "pids").glob("*-taskexecutor.pid"):
        pids += [pid for pid in map(int, pid_file.read_text().split()) if _alive(pid)]
    return pids


def start_taskmanager(cluster: Cluster, timeout_s: float = 90.0) -> int:
    """One more TaskManager, as a supervisor (systemd, Kubernetes) starts one after a process died;
    returns once the jobmanager counts it (its pid is returned)."""
    before = set(taskmanager_pids(cluster))
    # By id, not by count: the jobmanager drops a killed TaskManager only at its heartbeat timeout.
    registered = {tm["id"] for tm in rest(cluster, "/taskmanagers")["taskmanagers"]}
    done = _run(cluster, [cluster.bin("taskmanager.sh"), "start"], 60)
    if done.returncode != 0:
        raise ClusterError(f"taskmanager.sh start failed: {done.stderr.strip() or done.stdout.strip()}")
    new = set(taskmanager_pids(cluster)) - before
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if new and {tm["id"] for tm in rest(cluster, "/taskmanagers")["taskmanagers"]} - registered:
                return new.pop()
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise ClusterError(f"the new TaskManager did not register within {timeout_s:.0f} s; logs in {cluster.log_dir}")


def down(cluster: Cluster, timeout_s: float = 30.0) -> None:
    for script in ("taskmanager.sh", "jobmanager.sh"):
        _run(cluster, [cluster.bin(script), "stop-all" if script == "taskmanager.sh" else "stop"], 60)
    deadline = time.monotonic() + timeout_s
    pid_dir = cluster.root / "pids"
    while time.monotonic() < deadline:
        if not _alive_pids(pid_dir):
            return
        time.sleep(0.2)
    for pid in _alive_pids(pid_dir):
        os.kill(pid, 9)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _alive_pids(pid_dir: Path) -> list[int]:
    alive = []
    for pid_file in pid_dir.glob("*.pid"):
        for line in pid_file.read_text().split():
            try:
                os.kill(int(line), 0)
                alive.append(int(line))
            except (ValueError, ProcessLookupError):
                pass
    return alive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(RUN_DIR / "cluster"), help="conf, logs, checkpoints (default .run/cluster)")
    parser.add_argument("--rest-port", type=int, default=8081)
    parser.add_argument("--metrics-port", type=int, default=9249, help="first Prometheus reporter port")
    sub = parser.add_subparsers(dest="cmd", required=True)
    start = sub.add_parser("up", help="start a jobmanager and TaskManagers (one slot each by default)")
    start.add_argument("--taskmanagers", type=int, default=2, help="TaskManager processes (default 2)")
    start.add_argument("--slots", type=int, default=1, help="slots per TaskManager (default 1: one GIL each)")
    run = sub.add_parser("submit", help="submit the penalty job; arguments after -- go to the job")
    run.add_argument("job_args", nargs=argparse.REMAINDER)
    stop = sub.add_parser("stop-job", help="stop a job (default: every running job) with a savepoint")
    stop.add_argument("job_id", nargs="?")
    stop.add_argument("--savepoint-dir", default=str(RUN_DIR / "cluster" / "savepoints"))
    sub.add_parser("down", help="stop the cluster")
    sub.add_parser("status")
    render = sub.add_parser("render", help="container entrypoint: write FLINK_CONF_DIR and FLINK_LIB_DIR "
                            "from flink-conf/ plus the FLINK_PROPERTIES environment variable")
    render.add_argument("--conf-dir", required=True)
    render.add_argument("--lib-dir", required=True)
    args = parser.parse_args(argv)
    cluster = Cluster(Path(args.root), args.rest_port, args.metrics_port)
    try:
        if args.cmd == "render":
            render_conf(Path(args.conf_dir), parse_properties(os.environ.get("FLINK_PROPERTIES", "")))
            link_lib(Path(args.lib_dir))
        elif args.cmd == "up":
            up(cluster, args.taskmanagers, args.slots)
            print(f"Flink cluster up: {cluster.rest_url} (logs in {cluster.log_dir})")
        elif args.cmd == "submit":
            job_args = args.job_args[1:] if args.job_args[:1] == ["--"] else args.job_args
            print(f"submitted: job {submit(cluster, job_args)} ({cluster.rest_url}/#/job/running)")
        elif args.cmd == "stop-job":
            jobs = [args.job_id] if args.job_id else [
                j["id"] for j in rest(cluster, "/jobs")["jobs"] if j["status"] == "RUNNING"]
            for job_id in jobs:
                print(f"job {job_id} stopped, savepoint: {stop_job(cluster, job_id, Path(args.savepoint_dir))}")
        elif args.cmd == "down":
            down(cluster)
            print("Flink cluster stopped")
        else:
            print(json.dumps(rest(cluster, "/overview")))
        return 0
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cluster: {cluster.rest_url} not reachable ({exc})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
