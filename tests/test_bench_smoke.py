"""Smoke run of the throughput benchmark (`make bench` runs the real one): a few thousand alerts
through the whole job exactly-once on a fresh local stack. It fails only if the pipeline is
broken (the job does not commit every input, or produces no output); no timing assertions.
It runs the job on the mini-cluster (~40 s on 2 cores; starting and stopping a standalone
cluster adds ~70 s, and tests/test_cluster.py covers that path and what the bench reads of it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.alerts import REASONS

pytestmark = pytest.mark.stack
REPO = Path(__file__).resolve().parent.parent


def test_throughput_benchmark_smoke():
    done = subprocess.run([sys.executable, "-m", "devtools.bench", "throughput", "--alerts", "3000", "--users", "500",
                           "--timeout-s", "240", "--mini-cluster"], cwd=REPO, capture_output=True, text=True, check=False, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["completed"] and result["input_committed"] == result["input_end"] == 3000
    assert result["output_end_offsets"]["enforcement"] > 0 and result["output_end_offsets"]["audit"] > 0
    assert result["output_end_offsets"]["dlq"] > 0  # the mix has malformed records
    # By reason from the job's counters: at most the DLQ's end offset (which counts commit markers too).
    assert result["event_time_catch_up_s"] is not None  # the due timers fired after the input was read
    rejected = result["rejected_by_reason"]
    assert set(rejected) <= set(REASONS) and 0 < sum(rejected.values()) <= result["output_end_offsets"]["dlq"]
    assert result["peak_rss_mb"] > 0 and result["checkpoints"] >= 1
    assert result["jit_cpu_s"] > 0 and "alerts/s exactly-once" in done.stderr
    assert 0 < result["task_cpu_ms_per_alert"] * 3000 < result["job_cpu_s"] * 1000  # the threads were found


@pytest.mark.parametrize("floor", ["python", "python-bundled", "jvm"])
def test_throughput_benchmark_floor_smoke(floor):
    """The floors (devtools/bench/floor_job.py): the same pipeline with a pass-through in place of the
    penalty operator, one audit record per input record and no decisions."""
    done = subprocess.run([sys.executable, "-m", "devtools.bench", "throughput", "--floor", floor, "--alerts", "3000",
                           "--users", "500", "--timeout-s", "240", "--mini-cluster"],
                          cwd=REPO, capture_output=True, text=True, check=False, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["floor"] == floor and result["completed"] and result["input_committed"] == 3000
    outputs = result["output_end_offsets"]
    # Every input record (malformed ones too) is one audit record; end offsets count commit markers too.
    assert outputs["audit"] >= 3000 and outputs["enforcement"] == outputs["dlq"] == outputs["review"] == 0
    assert result["checkpoints"] >= 1 and result["event_time_catch_up_s"] is not None


def test_latency_benchmark_smoke():
    """The latency bench's path (a steady rate, each alert's enforcement timed under
    read_committed): a short run at a low rate; every alert sent is seen. No timing assertions."""
    done = subprocess.run([sys.executable, "-m", "devtools.bench", "latency", "--rate", "20", "--seconds", "5",
                           "--mini-cluster"], cwd=REPO, capture_output=True, text=True, check=False, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "latency" and result["delivery"] == "exactly_once"
    assert result["sent"] == result["seen"] == 100
    assert 0 < result["p50_s"] <= result["p99_s"] <= result["max_s"]
