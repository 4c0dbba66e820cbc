"""End to end on the real stack: alerts -> job -> applier (Redis) and notifier (SMTP) -> a granted
appeal on `decisions` -> the suspension is lifted in Redis and the strike voided; unsigned, forged,
retired-key and replayed decisions change nothing."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest
import redis

from connectors import signing
from devtools.localstack import create_topics
from jobs.config import Topics
from sinks import applier, notifier
from sinks.appeals import decision_record, submit

from .conftest import HOUR_MS, TEST_KEYS, alert_bytes, signed
from .stack_helpers import JobProcess, produce, read_committed
from .test_notifier import SECRET, smtp_server  # noqa: F401 - fixture

pytestmark = pytest.mark.stack


def test_alert_to_redis_email_appeal_and_lift(stack, smtp_server, tmp_path):  # noqa: F811
    controller, inbox = smtp_server
    topics = Topics().prefixed("e2e-")
    create_topics(stack.bootstrap, topics.partitions())
    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    now = int(time.time() * 1000)
    # One partition: the job decides in arrival order, so the oracle needs e1 read before e2.
    produce(stack.bootstrap, topics.alerts, [
        alert_bytes(alert_id="e1", user_id="u-e", stream_id="live-1", event_time_ms=now - 2 * HOUR_MS),
        alert_bytes(alert_id="e2", user_id="u-e", stream_id="live-2", event_time_ms=now - HOUR_MS),
    ], partition=0)
    job = JobProcess(["--bootstrap-servers", stack.bootstrap, "--topic-prefix", "e2e-", "--group-id", "e2e-job",
                      "--transactional-id-prefix", "e2e", "--starting-offsets", "earliest", "--idleness-ms", "1000",
                      "--checkpoint-dir", str(tmp_path / "ck")], tmp_path / "job.log")
    mailer = notifier.Notifier(client, notifier.SmtpConfig("127.0.0.1", controller.port), SECRET,
                               "https://appeals.example.test/appeal")
    passes = iter(range(1, 100))

    def catch_up() -> None:
        """One pass of the applier and the notifier over everything committed so far.

        On this broker a read_committed consumer that runs while transactions are fenced may skip
        one (../shared/PLATFORM.md; Apache Kafka does not), so instead of long-running consumers
        the test runs catch-up passes with fresh consumer groups from the beginning. Both services
        are idempotent, which is exactly what makes such replays safe in production too."""
        n = next(passes)
        applier.run(stack.bootstrap, stack.redis_url, topics.enforcement, f"e2e-applier-{n}", idle_exit_s=2)
        notifier.run(stack.bootstrap, mailer, topics.notifications, f"e2e-notifier-{n}", idle_exit_s=2)

    try:
        # Wait until the job's output is committed (seen by a consumer started now), then apply it.
        enforcement = read_committed(stack.bootstrap, topics.enforcement, 3, timeout_s=120)
        assert [e["record"]["action"] for e in enforcement] == ["warning", "stop_stream", "suspend"], job.tail()
        read_committed(stack.bootstrap, topics.notifications, 4, timeout_s=30)
        catch_up()
        user = "penalty:user:u-e"
        assert client.hget(user, "status") == b"suspended"
        assert int(client.hget(user, "until_ms")) == now - HOUR_MS + 24 * HOUR_MS
        assert client.hget("penalty:stream:live-2", "stopped") == b"1"
        assert [e[1][b"stream_id"] for e in client.xrange("penalty:commands")] == [b"live-2"]
        assert sum("suspended until" in m for m in inbox.messages) == 1
        email = next(m for m in inbox.messages if "suspended until" in m)
        link = re.search(r"appeal here: (\S+)", email).group(1)

        with pytest.raises(Exception, match="signature"):
            decision_record(link.replace("u-e", "u-x"), SECRET, "granted", "mod-1", now)
        granted = submit(stack.bootstrap, topics.decisions, decision_record(link, SECRET, "granted", "mod-1", now))
        assert granted["key_id"] == TEST_KEYS.current_id
        lift = read_committed(stack.bootstrap, topics.enforcement, 4, timeout_s=120)
        assert lift[-1]["record"]["action"] == "lift", job.tail()
        read_committed(stack.bootstrap, topics.notifications, 6, timeout_s=30)
        catch_up()
        assert client.hget(user, "status") == b"active" and client.hget(user, "until_ms") == b"0"
        assert sum("was decided" in m for m in inbox.messages) == 1
        assert sum("suspended until" in m for m in inbox.messages) == 1  # nothing sent twice
        # Malformed and unknown decisions go to the DLQ with a reason; the job keeps going. Would
        # the first incident's appeal be accepted, it would void the remaining strike: unsigned,
        # signed with a made-up secret under the current key id, or signed with a retired key, it
        # goes to the DLQ as invalid_signature; the granted decision replayed is a no-op.
        unknown = {**decision_record(link, SECRET, "denied", "mod-1", now), "incident_id": "inc_" + "0" * 24}
        first = {**decision_record(link, SECRET, "granted", "mod-1", now), "decision_id": "appeal-first",
                 "incident_id": enforcement[0]["record"]["incident_id"]}
        forged = signing.DecisionKeys(TEST_KEYS.current_id, {TEST_KEYS.current_id: b"f" * 40})
        retired = signing.DecisionKeys("test-k0", {"test-k0": b"0" * 40})
        produce(stack.bootstrap, topics.decisions, [
            b"{not a decision", signed(unknown), json.dumps(first).encode(),
            json.dumps(signing.sign(first, forged)).encode(), json.dumps(signing.sign(first, retired)).encode(),
            json.dumps(granted).encode()])
        dlq = read_committed(stack.bootstrap, topics.dlq, 5, timeout_s=60)
        catch_up()
        assert client.hget(user, "status") == b"active"
    finally:
        job.kill(signal.SIGTERM)
    audit = [a["record"] for a in read_committed(stack.bootstrap, topics.audit, 3, timeout_s=30)]
    [appeal] = [a for a in audit if a["kind"] == "appeal"]
    assert appeal["outcome"] == "granted" and appeal["detail"]["strike_voided"]
    assert appeal["ledger_before"]["strike_points"] == {"standard": 2}
    assert appeal["ledger_after"]["strike_points"] == {"standard": 1}
    assert sorted((d["record"]["reason"], d["record"]["source"]["topic"] or "-") for d in dlq) == [
        ("invalid_decision", "-"), ("invalid_decision", topics.decisions)] + [("invalid_signature", topics.decisions)] * 3
    assert any("no active strike for incident inc_000" in d["record"]["detail"] for d in dlq)
    assert sorted(d["record"]["detail"] for d in dlq if d["record"]["reason"] == "invalid_signature") == [
        "key id 'test-k0' is not accepted here (accepted: test-k2, test-k1): retired or unknown",
        "the signature does not match the record's fields (key id 'test-k2')",
        "unsigned: the record has no key_id and signature"]
    # Nothing else came of them: one lift, one appeal in the audit, the first strike still active.
    assert len(read_committed(stack.bootstrap, topics.enforcement, 4, timeout_s=10)) == 4
