"""Erasure through the running job on the real stack: `python -m sinks.privacy erase` sends the
signed erasure decision, the job forgets the user's keyed state but keeps the ban in force (the
policy's keep_active_bans), so a new alert of the same account meets the ban with an empty ledger;
the other user's ledger is untouched."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyflink
import pytest
import redis

from devtools.localstack import create_topics
from jobs.config import Topics

from .conftest import HOUR_MS, REPO, alert_bytes
from .stack_helpers import JobProcess, caught_up, produce, read_committed

pytestmark = pytest.mark.stack

GONE, STAY = "u-gone-3", "u-stay-4"


def test_the_job_forgets_an_erased_user_but_keeps_the_ban(stack, tmp_path):
    topics = Topics().prefixed("erasejob-")
    create_topics(stack.bootstrap, topics.partitions())
    redis.Redis.from_url(stack.redis_url).flushdb()
    now = int(time.time() * 1000)
    produce(stack.bootstrap, topics.alerts, [
        alert_bytes(alert_id="g1", user_id=GONE, stream_id="live-g1", event_time_ms=now - 3 * HOUR_MS),
        alert_bytes(alert_id="g2", user_id=GONE, stream_id="live-g2", violation_type="csam", confidence=0.99,
                    event_time_ms=now - 2 * HOUR_MS),
        alert_bytes(alert_id="s1", user_id=STAY, stream_id="live-s1", event_time_ms=now - 3 * HOUR_MS),
    ], partition=0)
    job = JobProcess(["--bootstrap-servers", stack.bootstrap, "--topic-prefix", "erasejob-", "--group-id",
                      "erasejob-job", "--transactional-id-prefix", "erasejob", "--starting-offsets", "earliest",
                      "--idleness-ms", "1000", "--checkpoint-dir", str(tmp_path / "ck")], tmp_path / "job.log")
    try:
        first = read_committed(stack.bootstrap, topics.enforcement, 4, timeout_s=120)
        assert sorted((e["record"]["user_id"], e["record"]["action"]) for e in first) == [
            (GONE, "ban"), (GONE, "stop_stream"), (GONE, "warning"), (STAY, "warning")], job.tail()

        env = {**os.environ, "PENALTY_AUDIT_MASTER_KEY": base64.urlsafe_b64encode(bytes(range(32))).decode(),
               "PENALTY_PRIVACY_TOKEN_KEY": "t" * 40}
        erase = subprocess.run(
            [sys.executable, "-m", "sinks.privacy", "erase", GONE, "--reason", "request 7", "--operator", "ops-1",
             "--bootstrap-servers", stack.bootstrap, "--topic-prefix", "erasejob-", "--redis-url", stack.redis_url,
             "--key-file", str(tmp_path / "keys.json")],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert erase.returncode == 0, erase.stdout + erase.stderr
        # The decision is read and checkpointed before the next alerts are written: the job reads
        # `alerts` and `decisions` side by side, in no order between the two.
        deadline = time.monotonic() + 60
        while not caught_up(stack.bootstrap, "erasejob-job", topics.decisions):
            assert time.monotonic() < deadline, job.tail()
            time.sleep(0.5)
        produce(stack.bootstrap, topics.alerts, [
            alert_bytes(alert_id="g3", user_id=GONE, stream_id="live-g3", event_time_ms=now - HOUR_MS),
            alert_bytes(alert_id="s2", user_id=STAY, stream_id="live-s2", event_time_ms=now - HOUR_MS),
        ], partition=0)
        audit = read_committed(stack.bootstrap, topics.audit, 6, timeout_s=120)  # the erasure's own entry too
        enforcement = read_committed(stack.bootstrap, topics.enforcement, 6, timeout_s=30)
    finally:
        job.kill(signal.SIGTERM)
    by_alert = {tuple(a["record"].get("alert_ids") or ()): a["record"] for a in audit}
    # The erased account still meets its ban, and nothing else of its past: no strike, no points.
    gone = by_alert[("g3",)]
    assert (gone["outcome"], gone["ledger_before"]["status"]) == ("suppressed_banned", "banned"), gone
    assert gone["ledger_before"]["active_strikes"] == [] and gone["ledger_before"]["strike_points"] == {}
    # The other user's ledger went on: a second strike, a suspension.
    stay = by_alert[("s2",)]
    assert stay["outcome"] == "enforced" and stay["ledger_before"]["strike_points"] == {"standard": 1}
    assert [(e["record"]["user_id"], e["record"]["action"]) for e in enforcement[4:]] == [
        (STAY, "stop_stream"), (STAY, "suspend")]
    # The job's own output and the mini-cluster's log name neither user (the log is rewritten at
    # each mini-cluster start, so it is this job's).
    flink_log = Path(pyflink.__file__).parent / "log"
    logs = [tmp_path / "job.log"] + sorted(flink_log.glob("flink-*-python-*.log"))
    for log in logs:
        text = log.read_text(errors="replace")
        assert GONE not in text and STAY not in text, log
    # The erasure command's audit entry names nobody.
    [erasure] = [a["record"] for a in audit if a["record"]["kind"] == "erasure"]
    assert erasure["user_id"] is None and GONE not in str(erasure)
