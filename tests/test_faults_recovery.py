"""Faults on the real stack, each checked against the `rules simulate` oracle with read_committed
consumers started after the job has recovered and caught up:

- a savepoint at parallelism 2 restored at 1 and at 3: exactly-once, each user's ledger intact;
- at-least-once, kill -9 after a checkpoint that holds state: nothing lost, repeats counted.

Each prints one line (pytest -s): fault, records in, lost, duplicated, recovery time."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from devtools.generator import produce as produce_paced
from devtools.localstack import create_topics
from jobs.config import Topics

from .fault_helpers import (
    alert_lines,
    alert_positions,
    alive_and_caught_up,
    assert_exactly_once,
    end_offsets,
    expected_outputs,
    paced_producer,
    read_outputs,
    report,
    source_offsets,
    wait_first_output,
)
from .stack_helpers import JobProcess, read_committed
from .test_stack_exactly_once import checkpoints, job_args, wait_for

pytestmark = [pytest.mark.stack, pytest.mark.faults]


def json_or_none(line: bytes):
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def follow_ups(before: list[bytes], at_ms: int) -> list[bytes]:
    """One new alert per user of `before`, on the user's stream: what it decides (strikes, rung,
    ledger_before in its audit record) depends on the ledger the restored job holds for that user."""
    users = {}
    for line in before:
        try:
            doc = json.loads(line)
        except ValueError:
            continue  # a malformed record of the mix
        if isinstance(doc, dict) and str(doc.get("user_id")).startswith("user-"):  # the generator's users
            users.setdefault(doc["user_id"], doc["stream_id"])
    return [json.dumps({"alert_id": f"follow-up-{user}", "stream_id": stream, "user_id": user,
                        "detector_id": "text-hate-v3", "violation_type": "hate_speech", "confidence": 0.97,
                        "event_time_ms": at_ms + i, "model_version": "v3"}).encode()
            for i, (user, stream) in enumerate(sorted(users.items()))]


@pytest.mark.parametrize("restore_parallelism", [1, 3])
def test_savepoint_at_parallelism_2_restores_at_another_parallelism(stack, tmp_path, restore_parallelism):
    prefix = f"rescale{restore_parallelism}-"
    topics = Topics().prefixed(prefix)
    create_topics(stack.bootstrap, topics.partitions())
    gen_lines = alert_lines(seed=20 + restore_parallelism, count=3000, users=80, step_ms=2000)
    before, rest_lines = gen_lines[:2000], gen_lines[2000:]
    last_ms = max(doc["event_time_ms"] for doc in map(json_or_none, gen_lines) if doc and "event_time_ms" in doc)
    extra = follow_ups(before, last_ms + 120_000)  # past any incident's 60 s window
    after = [*before[:150], *rest_lines, *extra]  # retries of alerts decided before the savepoint, then more
    lines = before + after
    want = expected_outputs(lines)
    ck, sp = tmp_path / "checkpoints", tmp_path / "savepoints"
    produce_paced(stack.bootstrap, topics.alerts, before)
    job = JobProcess(job_args(stack, prefix, ck, "--starting-offsets", "earliest", "--parallelism", "2",
                              "--savepoint-on-stop", str(sp)), tmp_path / "job-p2.log")
    try:
        wait_for(lambda: alive_and_caught_up(job, stack.bootstrap, prefix + "job", topics.alerts), 180,
                 "the parallelism-2 job", job)
        job.proc.send_signal(signal.SIGTERM)  # stop with a savepoint (PLATFORM.md's workaround, jobs/penalty_job.py)
        assert job.wait(180) == 0, job.tail()
    finally:
        job.kill()
    [savepoint] = re.findall(r"savepoint: (\S+)", job.log.read_text())
    produce_paced(stack.bootstrap, topics.alerts, after)
    started = time.monotonic()
    restored = JobProcess(job_args(stack, prefix, ck, "--restore-from", savepoint, "--parallelism",
                                   str(restore_parallelism)), tmp_path / f"job-p{restore_parallelism}.log")
    try:
        at_restore = end_offsets(stack.bootstrap, topics.audit)
        first = wait_first_output(stack.bootstrap, topics.audit, at_restore, 240)
        wait_for(lambda: alive_and_caught_up(restored, stack.bootstrap, prefix + "job", topics.alerts), 240,
                 f"the job restored at parallelism {restore_parallelism}", restored)
        time.sleep(2)  # the checkpoint that committed the offsets also committed the outputs
        out = read_outputs(stack.bootstrap, topics, want)
    finally:
        restored.kill(signal.SIGTERM)
    # Every user's ledger, as the oracle holds it at the savepoint, is what the restored job decided the
    # follow-up alert on: its audit record (ledger before and after, rule, outcome) is the oracle's.
    follow_audits = {aid: r for aid, r in want.records["audit"].items() if any(a.startswith("follow-up-") for a in r["alert_ids"])}
    assert len(follow_audits) == len(extra)
    with_strikes = [r for r in follow_audits.values() if r["ledger_before"]["active_strikes"]]
    assert len(with_strikes) >= len(extra) // 4, "too few users with strikes before the savepoint to show much"
    wrong = [r["user_id"] for aid, r in follow_audits.items() if out.records["audit"].get(aid) != r]
    report(f"savepoint at p2, restored at p{restore_parallelism}",
           f"exact outputs vs oracle ({want.total} + {want.dlq} dlq); {len(extra)} users' ledgers via follow-up "
           f"alerts ({len(with_strikes)} with strikes), {len(wrong)} wrong", len(lines), out.lost, out.duplicated,
           f"restore start -> first new output {first - started:.1f} s")
    assert not wrong, f"ledgers differ after the restore for users {wrong[:10]}"
    assert_exactly_once(out, want)


def test_at_least_once_crash_after_a_checkpoint_with_state(stack, tmp_path):
    """Replaces the old at-least-once case of test_stack_exactly_once.py, which killed 4 s into the
    first 5 s interval and so restored the empty first checkpoint."""
    prefix = "alo-"
    topics = Topics().prefixed(prefix)
    create_topics(stack.bootstrap, topics.partitions())
    lines = alert_lines(seed=14, count=15_000, step_ms=500)  # event times stay in the past (4 h span)
    want = expected_outputs(lines)
    ck = tmp_path / "checkpoints"
    mode = ("--delivery", "at_least_once")  # unaligned checkpoints every 5 s (jobs/flink_env.py)
    job = JobProcess(job_args(stack, prefix, ck, "--starting-offsets", "earliest", *mode), tmp_path / "job1.log")
    try:
        empty = wait_for(lambda: checkpoints(ck), 120, "the first checkpoint", job)[0]
        producer = paced_producer(stack.bootstrap, topics.alerts, lines, 1000)
        wait_first_output(stack.bootstrap, topics.audit, dict.fromkeys(range(4), 0), 120)
        output_seen = time.time()
        # A checkpoint completed after output was visible: it holds the state that produced it.
        holding = wait_for(lambda: [c for c in checkpoints(ck) if (c / "_metadata").stat().st_mtime > output_seen + 0.5],
                           120, "a checkpoint after the first outputs", job)
        assert producer.is_alive(), "the input ended before the kill: not mid-stream"
    finally:
        job.kill(signal.SIGKILL)  # the whole process group: python and the JVM
    # At-least-once output is visible at once: what the killed job had written.
    before_restore = {kind: read_committed(stack.bootstrap, getattr(topics, topic), None, timeout_s=8)
                      for kind, topic in (("audit", "audit"), ("enforcement", "enforcement"))}
    latest = checkpoints(ck)[-1]
    assert latest in holding and latest != empty
    start_offsets = source_offsets(latest, topics.alerts)
    assert sorted(start_offsets) == [0, 1, 2, 3], start_offsets
    # The first checkpoint has read nothing (-2: Kafka's "earliest" marker, or 0); the restored one has.
    assert sum(start_offsets.values()) > 0 and max(source_offsets(empty, topics.alerts).values()) <= 0
    killed_audits = {r["record"]["audit_id"]: r for r in before_restore["audit"]}
    assert killed_audits and before_restore["enforcement"]  # the killed job had written output
    restored = JobProcess(job_args(stack, prefix, ck, "--restore-from", str(latest), *mode), tmp_path / "job2.log")
    started = time.monotonic()
    try:
        producer.join(timeout=120)
        assert not producer.is_alive()
        wait_for(lambda: alive_and_caught_up(restored, stack.bootstrap, prefix + "job", topics.alerts), 300,
                 "the restored job to catch up", restored)
        time.sleep(2)
        out = read_outputs(stack.bootstrap, topics, want)
    finally:
        restored.kill(signal.SIGTERM)
    caught_up_s = time.monotonic() - started
    # Replayed: input at or after the restored checkpoint's source offsets. Of those the killed job had
    # already decided, each is either decided again (its outputs repeat, same ids) or found in the
    # restored state (the unaligned snapshot already held it) and dropped by the dedupe: never lost.
    first_offset = alert_positions(stack.bootstrap, topics.alerts, len(lines))
    replayed = [aid for aid, r in killed_audits.items()
                if (at := first_offset.get(r["record"]["alert_ids"][0])) and at[1] >= start_offsets[at[0]]]
    again = sum(out.have["audit"][aid] > 1 for aid in replayed)
    report("at-least-once kill -9 after a checkpoint with state",
           f"0 lost, no unknown ids; restored {latest.name} (source offsets {start_offsets}; first was {empty.name}); "
           f"{len(killed_audits)} audits before the kill, {len(replayed)} of them of replayed input: "
           f"{again} decided again, {len(replayed) - again} dropped as already in restored state",
           len(lines), out.lost, out.duplicated, f"restore -> caught up {caught_up_s:.1f} s")
    if out.lost:  # where the lost outputs' alerts were, against the restored checkpoint's offsets
        lost_alerts = sorted({want.records[kind][i].get("alert_ids", [want.records[kind][i].get("cause", "")])[0]
                              for kind, ids in out.missing.items() for i in ids})
        print("lost:", [(a, first_offset.get(a.split(":")[-1])) for a in lost_alerts[:40]])
        print("lost records:", [want.records[k][i] for k, ids in out.missing.items() for i in ids][:5])
    assert out.lost == 0 and out.unknown == 0, out.summary(len(lines))
