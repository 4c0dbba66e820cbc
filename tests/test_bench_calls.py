"""Smoke run of the state-call micro-benchmark (`python -m devtools.bench calls`): it runs on the
mini-cluster and reports a positive cost for every call kind. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.minicluster
REPO = Path(__file__).resolve().parent.parent


def test_state_call_benchmark_reports_every_call_kind():
    done = subprocess.run([sys.executable, "-m", "devtools.bench", "calls", "--keys", "4", "--calls", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == "rocksdb" and result["keys"] == 4
    costs = result["us_per_call"]
    assert {"map.put", "map.get (present)", "map.remove", "value.update (1.7 KB)", "timer register"} <= set(costs)
    assert all(us > 0 for us in costs.values())


def test_state_call_benchmark_rejects_a_single_key():
    done = subprocess.run([sys.executable, "-m", "devtools.bench", "calls", "--keys", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "--keys must be at least 2" in done.stderr
