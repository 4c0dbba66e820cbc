"""Set-up failures give one clear line saying what is wrong and what to do."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from devtools import localstack

from .conftest import REPO


def test_broken_jar_checksum_is_one_clear_line(tmp_path):
    cache = tmp_path / "cache"
    (cache / "jars").mkdir(parents=True)
    (cache / "jars" / "flink-connector-kafka.jar").write_bytes(b"not the real jar")
    (cache / "jars" / "kafka-clients.jar").write_bytes(b"not the real jar either")
    result = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PENALTY_CACHE": str(cache)}, check=False, timeout=120)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("setup: checksum mismatch for ") and "flink-connector-kafka.jar" in line
    assert "Delete" in line and "Traceback" not in result.stderr


def test_missing_java_is_one_clear_line(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python3.11", "python3", "dirname", "sha256sum", "cut", "cat"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    result = subprocess.run([shutil.which("bash"), "scripts/setup.sh"], cwd=REPO, capture_output=True, text=True,
                            env={"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/root")}, check=False,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "setup: Java 11+ is required by Flink and was not found. Install it: apt-get install -y openjdk-17-jdk-headless"]


def test_port_already_taken_is_one_clear_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(localstack.StackError, match=f"port {port} is already taken"):
            localstack.start_broker(port, tmp_path / "kafka")
        result = subprocess.run([sys.executable, "-m", "devtools.localstack", "up", "--kafka-port", str(port),
                                 "--data-dir", str(tmp_path / "stack")], cwd=REPO, capture_output=True,
                                text=True, check=False, timeout=60,
                                env={**os.environ, "PENALTY_RUN_DIR": str(tmp_path / "run")})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"localstack: port {port} is already taken: stop what uses it (`make stop`) or pick another port"]


def _path_without(tmp_path, *tools: str) -> str:
    """A PATH of links to every program on this PATH except `tools`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = os.path.join(directory, name)
            if name not in tools and not (bin_dir / name).exists() and os.access(target, os.X_OK):
                (bin_dir / name).symlink_to(target)
    return str(bin_dir)


def _setup(path: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, capture_output=True, text=True, check=False,
                          timeout=120, env={**os.environ, "PATH": path, "PENALTY_WITH_REDIS": "0", **env})


def test_missing_promtool_without_apt_is_one_clear_line(tmp_path):
    result = _setup(_path_without(tmp_path, "promtool", "apt-get", "apt-cache"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "setup: promtool is missing: run 'sudo apt-get install -y prometheus' and retry"]


def test_missing_prometheus_server_without_apt_is_one_clear_line(tmp_path):
    """promtool alone is not enough: the live monitoring test runs the server."""
    result = _setup(_path_without(tmp_path, "prometheus", "apt-get", "apt-cache"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "setup: prometheus is missing: run 'sudo apt-get install -y prometheus' and retry"]


@pytest.mark.skipif(os.geteuid() != 0, reason="setup.sh installs Debian packages only as root")
def test_failed_promtool_install_refreshes_the_lists_once_then_says_what_is_missing(tmp_path):
    """apt-get that fails: one install from the current lists, one `update` and one more install,
    then a line naming the package and the missing command."""
    path = _path_without(tmp_path, "promtool", "apt-get", "apt-cache")
    calls = tmp_path / "apt-calls"
    for tool in ("apt-get", "apt-cache"):
        fake = tmp_path / "bin" / tool
        fake.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n[ "$1" = show ] || [ "$1" = update ] && exit 0\n'
                        'echo "E: Unable to locate package" >&2\nexit 100\n')
        fake.chmod(0o755)
    result = _setup(path)
    assert result.returncode == 1
    assert [line.split(" -", 1)[0] for line in calls.read_text().splitlines()] == [
        "apt-cache show prometheus", "apt-get install", "apt-get update", "apt-get install"]
    assert result.stderr.strip().splitlines()[-1] == (
        "setup: apt-get install prometheus failed (see above), so promtool is missing: install prometheus and retry")
