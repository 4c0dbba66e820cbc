"""The embedded default run (`make run`): stack, generator, job and live summary, then a clean end."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from devtools.localstack import free_port

from .conftest import REPO

pytestmark = pytest.mark.stack


def test_run_local_shows_alerts_flowing_and_exits_cleanly(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "devtools.run_local", "--duration", "20", "--rate", "150", "--every", "5",
         "--kafka-port", str(free_port()), "--redis-port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=240,
        env={**os.environ, "PENALTY_RUN_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = [line for line in result.stdout.splitlines() if line.startswith("final:")]
    assert final, result.stdout
    numbers = dict(re.findall(r"(\w+)=(\d+)", final[0]))
    assert int(numbers["produced"]) > 1000
    assert int(numbers["in"]) > 0 and int(numbers["dlq"]) > 0 and int(numbers["warning"]) > 0
    assert "stopped: job cancelled, broker and Redis stopped" in result.stdout
