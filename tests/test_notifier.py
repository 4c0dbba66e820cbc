"""Notifier with a real SMTP server (aiosmtpd), real Redis and a real broker."""

from __future__ import annotations

import email
import email.policy
import json
import re

import pytest
import redis

from devtools.localstack import create_topics, free_port
from jobs.config import Topics
from rules.simulate import run as simulate
from sinks.notifier import (
    AppealTokenError,
    Notifier,
    SmtpConfig,
    appeal_link,
    run,
    verify_appeal_link,
)

from .conftest import DAY_MS, T0_MS, alert_bytes
from .stack_helpers import produce

SECRET = b"test-secret-not-for-production"
BASE = "https://appeals.example.test/appeal"


def test_appeal_links_are_signed_and_expire():
    link = appeal_link(BASE, SECRET, "inc_1", "u-1", T0_MS + DAY_MS)
    assert verify_appeal_link(link, SECRET, T0_MS) == ("inc_1", "u-1")
    with pytest.raises(AppealTokenError, match="expired"):
        verify_appeal_link(link, SECRET, T0_MS + DAY_MS + 1)
    with pytest.raises(AppealTokenError, match="signature"):
        verify_appeal_link(link.replace("u-1", "u-2"), SECRET, T0_MS)
    with pytest.raises(AppealTokenError, match="signature"):
        verify_appeal_link(link, b"another secret", T0_MS)
    with pytest.raises(AppealTokenError, match="incomplete"):
        verify_appeal_link(BASE + "?incident=inc_1", SECRET, T0_MS)


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.messages.append(message["Subject"] + "\n" + message.get_content())
            return "250 OK"

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


@pytest.mark.stack
def test_notifications_reach_smtp_and_inbox_once_with_valid_appeal_links(stack, smtp_server, policy):
    controller, inbox = smtp_server
    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    topics = Topics().prefixed("notify-")
    create_topics(stack.bootstrap, topics.partitions())
    alerts = [alert_bytes(alert_id="n1", user_id="u-n", stream_id="s1", violation_type="copyright"),
              alert_bytes(alert_id="n2", user_id="u-n", stream_id="s2", violation_type="copyright",
                          event_time_ms=T0_MS + 3_600_000),
              alert_bytes(alert_id="n3", user_id="u-r", stream_id="s3", violation_type="terrorism", confidence=0.8)]
    records = [json.loads(x)["record"] for x in simulate(policy, alerts) if '"kind":"notification"' in x]
    produce(stack.bootstrap, topics.notifications, [json.dumps(r).encode() for r in records], key_field="user_id")
    notifier = Notifier(client, SmtpConfig("127.0.0.1", controller.port), SECRET, BASE)
    first = run(stack.bootstrap, notifier, topics.notifications, "notifier-a", idle_exit_s=3)
    emails = [r for r in records if r["channel"] == "email"]
    assert first["delivered"] == len(records) and len(inbox.messages) == len(emails) == 3
    suspension = [m for m in inbox.messages if "suspended until" in m]
    assert len(suspension) == 1 and "copyright" in suspension[0]
    link = re.search(r"appeal here: (\S+)", suspension[0]).group(1)
    incident, user = verify_appeal_link(link, SECRET, T0_MS + DAY_MS)
    assert user == "u-n" and incident.startswith("inc_")
    assert client.xlen("penalty:inbox:u-n") == 2
    moderation = client.xrange("penalty:moderation:urgent")
    assert len(moderation) == 1 and b"needs human review" in moderation[0][1][b"body"]
    # A replay of the whole topic (a restart that lost its offsets) sends nothing twice.
    again = run(stack.bootstrap, notifier, topics.notifications, "notifier-b", idle_exit_s=3)
    assert again == {"delivered": 0, "repeated": len(records), "failed": 0}
    assert len(inbox.messages) == 3 and client.xlen("penalty:inbox:u-n") == 2
    assert SECRET.decode() not in json.dumps(first) and all(SECRET.decode() not in m for m in inbox.messages)
