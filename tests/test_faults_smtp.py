"""SMTP outage, on the real stack: a real broker and Redis (the `stack`
fixture) and aiosmtpd as the mail server. The server is down for 20 s while notifications arrive,
with the notifier's real retry schedule (1 s doubling to 8 s). In-app messages keep flowing during
the outage; after it every email arrives exactly once, counted by Message-ID at the server."""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
from collections import Counter

import pytest
import redis

from devtools.localstack import create_topics, free_port
from jobs.config import Topics
from rules.simulate import run as simulate
from sinks.notifier import (
    INBOX_KEY,
    MODERATION_KEY,
    SENT_KEY,
    Notifier,
    RetryPolicy,
    SmtpConfig,
    message_id,
    run,
)

from .conftest import T0_MS, alert_bytes
from .stack_helpers import produce

SECRET = b"test-secret-not-for-production"
OUTAGE_S = 20.0


class MailServer:
    """aiosmtpd on a fixed port that can be stopped and started again, keeping what it received."""

    def __init__(self):
        self.port = free_port()
        self.message_ids: list[str] = []
        self.controller = None

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.message_ids.append(message["Message-ID"])
        return "250 OK"

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
        self.controller = None


@pytest.fixture
def mail_server():
    server = MailServer()
    server.start()
    yield server
    if server.controller is not None:
        server.stop()


def notifications(policy, phase: str, users: int) -> list[dict]:
    """Per user one enforced copyright alert (streamer: in-app + email) and one hate-speech alert
    for review (moderators: in-app)."""
    alerts = []
    for i in range(users):
        user = f"smtp-{phase}-{i}"
        alerts += [alert_bytes(alert_id=f"{user}-a", user_id=user, stream_id=f"{user}-s1", violation_type="copyright",
                               event_time_ms=T0_MS + i),
                   alert_bytes(alert_id=f"{user}-b", user_id=user, stream_id=f"{user}-s2", violation_type="hate_speech",
                               confidence=0.7, event_time_ms=T0_MS + i)]
    return [json.loads(x)["record"] for x in simulate(policy, alerts) if '"kind":"notification"' in x]


def in_app_delivered(client: redis.Redis, records: list[dict]) -> Counter:
    """notification_id -> how many times it is in its in-app stream."""
    streams = {MODERATION_KEY.format(r["recipient_id"].split(":", 1)[1]) if r["recipient_role"] == "moderator"
               else INBOX_KEY.format(r["recipient_id"]) for r in records if r["channel"] == "in_app"}
    ids = {r["notification_id"] for r in records}
    # The moderation queues are shared with the suite's other tests, and some of their entries are
    # not notifications (a streamer's appeal from the console carries no notification_id).
    return Counter(nid for stream in streams for _, fields in client.xrange(stream)
                   if (nid := fields.get(b"notification_id", b"").decode()) in ids)


def wait_for(condition, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.mark.faults
@pytest.mark.stack
def test_smtp_down_20s_every_email_arrives_once_and_in_app_is_not_held_up(stack, mail_server, policy):
    client = redis.Redis.from_url(stack.redis_url)
    topics = Topics().prefixed("smtp-fault-")
    create_topics(stack.bootstrap, topics.partitions())
    before, during, after = (notifications(policy, phase, 4) for phase in ("before", "during", "after"))
    records = before + during + after
    emails = {r["notification_id"] for r in records if r["channel"] == "email"}
    assert len(emails) == 12 and len(records) - len(emails) == 24 and len({r["notification_id"] for r in records}) == 36

    smtp = SmtpConfig("127.0.0.1", mail_server.port)
    notifier = Notifier(client, smtp, SECRET, "https://appeals.example.test/appeal")
    stop, counts = threading.Event(), {}
    worker = threading.Thread(target=lambda: counts.update(
        run(stack.bootstrap, notifier, topics.notifications, "smtp-fault", stop=stop.is_set, retry=RetryPolicy())))
    worker.start()
    try:
        def send(batch):
            produce(stack.bootstrap, topics.notifications, [json.dumps(r).encode() for r in batch], key_field="user_id")

        def sent(batch) -> bool:
            return all(client.exists(SENT_KEY.format(r["notification_id"])) for r in batch)

        send(before)
        # Down only once the notifier is idle (every sent marker written, so no SMTP session is open):
        # a server that dies mid-session is the at-least-once case, not this one.
        wait_for(lambda: sent(before), 60, "the first emails")
        mail_server.stop()
        down_at = time.monotonic()
        for i in range(0, len(during), 4):  # notifications keep arriving through the outage
            send(during[i:i + 4])
            time.sleep(3)
        in_app_during = [r for r in during if r["channel"] == "in_app"]
        wait_for(lambda: sum(in_app_delivered(client, in_app_during).values()) == len(in_app_during),
                 max(1.0, OUTAGE_S - (time.monotonic() - down_at) - 1), "in-app messages during the outage")
        assert mail_server.controller is None and len(mail_server.message_ids) == 4  # only the first emails so far
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        mail_server.start()
        up_at = time.monotonic()
        send(after)
        recovery_s = wait_for(lambda: sent(records), 60, "every email after the outage")
    finally:
        stop.set()
        worker.join(timeout=30)
    received = Counter(mail_server.message_ids)
    assert received == Counter({message_id(nid, smtp.sender): 1 for nid in emails})  # each exactly once
    assert in_app_delivered(client, records) == Counter({r["notification_id"]: 1 for r in records
                                                         if r["channel"] == "in_app"})
    assert counts["delivered"] == len(records) and counts["repeated"] == 0 and counts["failed"] >= 4
    assert recovery_s <= RetryPolicy().max_s + 5  # the next retry after the server is back
    print(f"smtp outage {up_at - down_at:.1f} s: {len(records)} notifications in ({len(emails)} emails), "
          f"0 lost, 0 duplicated, {counts['failed']} failed attempts, every email sent {recovery_s:.1f} s after the "
          "server returned")

    # Everything was committed: the same group reads nothing again; a new group (offsets lost) sends nothing twice.
    assert run(stack.bootstrap, notifier, topics.notifications, "smtp-fault", idle_exit_s=3) == {
        "delivered": 0, "repeated": 0, "failed": 0}
    assert run(stack.bootstrap, notifier, topics.notifications, "smtp-fault-replay", idle_exit_s=3) == {
        "delivered": 0, "repeated": len(records), "failed": 0}
    assert Counter(mail_server.message_ids) == received


@pytest.mark.faults
def test_the_message_id_is_stable_and_names_the_notification():
    assert message_id("ntf_0123456789abcdef01234567", "ts@example.test") == "<ntf_0123456789abcdef01234567@example.test>"
    assert message_id("ntf_1", "no-domain") == "<ntf_1@stream-penalty.invalid>"
