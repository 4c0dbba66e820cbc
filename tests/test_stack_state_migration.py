"""Upgrades on the real stack: an older job stops with a savepoint; the current job restores from it
and carries on exactly as if one job had seen everything: retries of alerts decided before the
upgrade are deduplicated, strikes escalate, incidents merge, and each moderator decision is
applied once, whichever job read it. The older jobs:
- one that stores user state the way jobs before state format 4 did (tests/legacy_layout_job.py);
- the job before bundling (tests/prebundling_job.py): records keyed by user and one record per
  call into Python; the current job bundles them by key group and keeps the same keyed state."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from devtools.generator import AlertGenerator, Mix, produce
from devtools.localstack import create_topics
from jobs.config import Topics

from .conftest import HOUR_MS, REPO, signed
from .stack_helpers import JobProcess, caught_up, read_committed
from .test_stack_exactly_once import ID_FIELDS, job_args, oracle, wait_for

pytestmark = pytest.mark.stack


OLDER_JOBS = {
    "format-3-layout": ("tests/legacy_layout_job.py", "operator storing the format-3 layout"),
    "before-bundling": ("tests/prebundling_job.py", "operator reading one record per call"),
}
# A checkout of a released job to upgrade from, when given (a work tree with the same venv's
# packages; its own code first on the path): PENALTY_OLDER_CHECKOUT=/path/to/checkout.
OLDER_CHECKOUT = os.environ.get("PENALTY_OLDER_CHECKOUT")
if OLDER_CHECKOUT:
    OLDER_JOBS["released-checkout"] = (str(Path(OLDER_CHECKOUT) / "jobs" / "penalty_job.py"), "running")


class LegacyJobProcess(JobProcess):
    def __init__(self, script: str, args: list[str], log: Path):
        self.log = log
        self.fh = open(log, "ab")  # noqa: SIM115 - the job's log while it runs
        env = dict(os.environ)
        if OLDER_CHECKOUT and script.startswith(OLDER_CHECKOUT):
            env["PYTHONPATH"] = OLDER_CHECKOUT  # the TaskManager's Python imports that checkout's packages
        self.proc = subprocess.Popen([sys.executable, script, *args], cwd=REPO, env=env,
                                     stdout=self.fh, stderr=subprocess.STDOUT, start_new_session=True)


def alive_and_caught_up(job: JobProcess, bootstrap: str, group_id: str, topic: str) -> bool:
    if job.proc.poll() is not None:  # fail now rather than at the timeout
        raise AssertionError(f"the job exited with {job.proc.returncode}:\n{job.tail()}")
    return caught_up(bootstrap, group_id, topic)


def denied_appeals(enforcements: list[dict], at_ms: int) -> list[bytes]:
    """A denied appeal per enforced incident: recorded and notified, the ledger unchanged, so the
    alerts' expected outputs stay the oracle's."""
    return [signed({"schema_version": 1, "decision_id": f"appeal-{e['incident_id']}", "kind": "appeal",
                    "verdict": "denied", "user_id": e["user_id"], "incident_id": e["incident_id"],
                    "moderator_id": "mod-1", "event_time_ms": at_ms}) for e in enforcements]


def from_decision(kind: str, record: dict) -> bool:
    return (kind == "audit" and record["kind"] == "appeal") or (kind == "notification"
                                                                 and record["topic"] == "appeal_outcome")


@pytest.mark.parametrize("older", sorted(OLDER_JOBS))
def test_savepoint_of_an_older_job_restores_into_the_current_job(stack, tmp_path, older):
    script, banner = OLDER_JOBS[older]
    prefix = f"mig-{older}-"
    topics = Topics().prefixed(prefix)
    create_topics(stack.bootstrap, topics.partitions())
    # One stream per user: all of a user's alerts share a partition, so the job sees them in the
    # order the oracle does.
    gen = AlertGenerator(seed=5, users=60, start_ms=int(time.time() * 1000) - 4 * HOUR_MS, step_ms=2000,
                         streams_per_user=1, mix=Mix(malformed=0.0, oversized=0.0))
    lines = list(gen.payloads(3000))
    before, after = lines[:1500], lines[1500:]
    after = [*before[:100], *after]  # retries of alerts decided before the upgrade
    expected = oracle(before + after)
    want = {kind: Counter(r["record"][field] for r in expected if r["kind"] == kind)
            for kind, field in ID_FIELDS.items()}
    decided_before = oracle(before)
    assert sum(r["kind"] == "enforcement" for r in decided_before) < sum(want["enforcement"].values())
    # Incidents that made a strike (a review band's actions make none): each can be appealed.
    enforced = [r["record"] for r in decided_before if r["kind"] == "audit" and r["record"]["outcome"] == "enforced"]
    appeals_at_ms = json.loads(before[-1])["event_time_ms"]
    appeals_before, appeals_after = denied_appeals(enforced[:5], appeals_at_ms), denied_appeals(enforced[5:10],
                                                                                               appeals_at_ms)
    appealed = Counter(e["incident_id"] for e in enforced[:10])
    assert len(appealed) == 10

    ck, sp = tmp_path / "checkpoints", tmp_path / "savepoints"
    produce(stack.bootstrap, topics.alerts, before)
    old = LegacyJobProcess(script, job_args(stack, prefix, ck, "--starting-offsets", "earliest", "--savepoint-on-stop",
                                            str(sp)), tmp_path / "legacy.log")
    try:
        wait_for(lambda: alive_and_caught_up(old, stack.bootstrap, prefix + "job", topics.alerts), 180,
                 "the legacy job", old)
        produce(stack.bootstrap, topics.decisions, appeals_before)  # after their strikes exist
        wait_for(lambda: alive_and_caught_up(old, stack.bootstrap, prefix + "job", topics.decisions), 60,
                 "the legacy job to read the appeals", old)
        old.proc.send_signal(signal.SIGTERM)
        assert old.wait(120) == 0, old.tail()
    finally:
        old.kill()
    assert banner in old.log.read_text()
    [savepoint] = re.findall(r"savepoint: (\S+)", old.log.read_text())

    produce(stack.bootstrap, topics.alerts, after)
    produce(stack.bootstrap, topics.decisions, appeals_after)
    new = JobProcess(job_args(stack, prefix, ck, "--restore-from", savepoint), tmp_path / "current.log")
    try:
        wait_for(lambda: all(alive_and_caught_up(new, stack.bootstrap, prefix + "job", topic)
                             for topic in (topics.alerts, topics.decisions)), 180, "the current job", new)
        time.sleep(2)  # the checkpoint that committed the offsets also committed the outputs
        extra = {"audit": len(appealed), "notification": 2 * len(appealed)}
        got = {kind: read_committed(stack.bootstrap, getattr(topics, "notifications" if kind == "notification"
                                                             else kind), sum(want[kind].values()) + extra.get(kind, 0),
                                    timeout_s=60, settle_s=2)
               for kind in ID_FIELDS}
    finally:
        new.kill(signal.SIGTERM)
    # Each appeal once: the old job read the first five, the new one the other five (one read
    # again would be dropped as a duplicate decision by the restored state).
    assert Counter(r["record"]["incident_id"] for r in got["audit"] if from_decision("audit", r["record"])) == appealed
    assert Counter(r["record"]["incident_id"] for r in got["notification"]
                   if from_decision("notification", r["record"])) == Counter({i: 2 for i in appealed})
    for kind, field in ID_FIELDS.items():
        have = Counter(r["record"][field] for r in got[kind] if not from_decision(kind, r["record"]))
        assert have == want[kind], (f"{kind}: {sum(have.values())} records, expected {sum(want[kind].values())}; "
                                    f"missing {len(want[kind] - have)}, extra {len(have - want[kind])}")
