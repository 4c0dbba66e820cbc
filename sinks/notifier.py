"""Notifier: the `notifications` topic to streamers and moderators.

    PENALTY_APPEAL_SECRET=... python -m sinks.notifier [--smtp-host H --smtp-port P --smtp-tls
        --smtp-user U (password from PENALTY_SMTP_PASSWORD)] [--appeal-base-url URL]

- in-app messages go to a per-user Redis stream `penalty:inbox:<user_id>`; moderator requests to
  `penalty:moderation:<queue>` (recipient_id `queue:<priority>`);
- email goes through SMTP (host, port, STARTTLS, credentials from configuration);
- messages name the violation, the action and its end, and carry an appeal link signed with
  HMAC-SHA256 and an expiry (secret from the environment, never logged).

Each notification is delivered once even when the notifier restarts mid-batch: its id is
recorded in Redis (`penalty:sent:<notification_id>`, kept 90 days) right after delivery (in the
same transaction for in-app messages) and skipped when seen again. Email is at-least-once: a
crash between the SMTP send and the marker sends it again, with the same Message-ID. A failed
delivery is retried with backoff, the email and in-app channels each in their own queue, so an
SMTP outage holds up email only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import smtplib
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from urllib.parse import parse_qs, urlencode, urlparse

import redis

from sinks.tokens import erased_before, token_key_or_none

log = logging.getLogger("sinks.notifier")

SENT_KEY = "penalty:sent:{}"
INBOX_KEY = "penalty:inbox:{}"
MODERATION_KEY = "penalty:moderation:{}"
SENT_TTL_S = 90 * 86_400
APPEAL_WINDOW_MS = 30 * 86_400_000


class AppealTokenError(Exception):
    """An appeal link that is forged, altered or expired."""


@dataclass(frozen=True)
class SmtpConfig:
    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False
    user: str | None = None
    password: str | None = None  # from the environment; never logged
    sender: str = "trust-and-safety@stream-penalty.invalid"


def _signature(secret: bytes, incident_id: str, user_id: str, expires_ms: int) -> str:
    mac = hmac.new(secret, f"{incident_id}\x1f{user_id}\x1f{expires_ms}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def appeal_link(base_url: str, secret: bytes, incident_id: str, user_id: str, expires_ms: int) -> str:
    query = urlencode({"incident": incident_id, "user": user_id, "expires": expires_ms,
                       "sig": _signature(secret, incident_id, user_id, expires_ms)})
    return f"{base_url}?{query}"


def verify_appeal_link(link: str, secret: bytes, now_ms: int) -> tuple[str, str]:
    """(incident_id, user_id) of a valid link; AppealTokenError otherwise."""
    params = {k: v[0] for k, v in parse_qs(urlparse(link).query).items()}
    try:
        incident_id, user_id, expires_ms, sig = params["incident"], params["user"], int(params["expires"]), params["sig"]
    except (KeyError, ValueError) as exc:
        raise AppealTokenError("the appeal link is incomplete") from exc
    if not hmac.compare_digest(sig, _signature(secret, incident_id, user_id, expires_ms)):
        raise AppealTokenError("the appeal link's signature does not match")
    if now_ms > expires_ms:
        raise AppealTokenError("the appeal link has expired")
    return incident_id, user_id


def message_id(notification_id: str, sender: str) -> str:
    """`<ntf_...@sender's domain>`: the same for every send of one notification."""
    domain = sender.rpartition("@")[2] if "@" in sender else ""
    return f"<{notification_id}@{domain or 'stream-penalty.invalid'}>"


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC") if ms else ""


def render(record: dict, appeal_url: str | None) -> tuple[str, str]:
    """(subject, body) of a notification."""
    violation = (record.get("violation_type") or "a policy violation").replace("_", " ")
    if record["topic"].startswith("detector_guard_"):
        detail = record.get("detail") or {}
        detector = detail.get("detector_id", "?")
        if record["topic"] == "detector_guard_tripped":
            body = (f"Detector {detector} went over its limits ({detail.get('enforcements')} enforce-band alerts, "
                    f"limit {detail.get('enforcement_limit')}; {detail.get('alerts')} alerts, limit "
                    f"{detail.get('alert_limit')}, in {detail.get('window_ms', 0) // 60_000} min). Its alerts "
                    "now go to urgent review instead of penalising. Runbook: docs/operations.md"
                    "#penaltydetectorguardtripped")
            return f"Detector guard tripped: {detector}", body
        return (f"Detector guard released: {detector}",
                f"Detector {detector} penalises automatically again ({detail.get('released_by')}).")
    if record["topic"] == "review_request":
        return (f"Review needed: {violation}",
                f"An incident ({record['incident_id']}) of user {record['user_id']} needs human review.")
    if record["topic"] in ("appeal_outcome", "review_outcome"):
        what = "Your appeal" if record["topic"] == "appeal_outcome" else "A moderator review"
        lifted = any(a["action"] == "lift" for a in record["actions"])
        return (f"Decision on {violation} (incident {record['incident_id']})",
                f"{what} of incident {record['incident_id']} was decided ({record['rule_id']})."
                + ("\nThe penalty was lifted and the strike removed." if lifted else ""))
    lines = []
    for action in record["actions"]:
        name, until = action["action"], action.get("until_ms")
        lines.append({
            "warning": "You received a warning.",
            "stop_stream": "Your live stream was stopped.",
            "suspend": f"Live streaming is suspended until {_when(until)}.",
            "ban": "Your account is permanently banned from live streaming.",
            "lift": "A penalty was lifted.",
        }.get(name, f"Action: {name}."))
    body = f"We detected {violation} on your stream.\n" + "\n".join(lines)
    if appeal_url:
        body += f"\n\nIf you think this is wrong, appeal here: {appeal_url}"
    return f"Community guidelines: {violation}", body


class Notifier:
    def __init__(self, client: redis.Redis, smtp: SmtpConfig, secret: bytes, appeal_base_url: str,
                 token_key: bytes | None = None):
        """token_key (PENALTY_PRIVACY_TOKEN_KEY): notifications about a user from before their
        erasure (in flight, or replayed) are dropped, not delivered."""
        self.client = client
        self.smtp = smtp
        self.secret = secret
        self.appeal_base_url = appeal_base_url
        self.token_key = token_key

    def deliver(self, record: dict) -> bool:
        """Deliver one notification; False when it was delivered before, or is about an erased user."""
        sent_key = SENT_KEY.format(record["notification_id"])
        if self.client.exists(sent_key):
            return False
        if erased_before(self.client, self.token_key, record.get("user_id") or "", record.get("event_time_ms", 0)):
            return False
        appeal = record.get("appeal")
        url = None
        if appeal:
            url = appeal_link(self.appeal_base_url, self.secret, appeal["incident_id"], appeal["user_id"],
                              record["event_time_ms"] + APPEAL_WINDOW_MS)
        subject, body = render(record, url)
        if record["channel"] == "email":
            self._email(record["notification_id"], record["recipient_id"], subject, body)
            self.client.set(sent_key, 1, ex=SENT_TTL_S)
            return True
        recipient = record["recipient_id"]
        stream = (MODERATION_KEY.format(recipient.split(":", 1)[1]) if record["recipient_role"] == "moderator"
                  else INBOX_KEY.format(recipient))
        fields = {"notification_id": record["notification_id"], "subject": subject, "body": body,
                  "incident_id": record.get("incident_id") or "", "appeal_url": url or ""}
        if record["topic"].startswith("detector_guard_"):  # queue:detector_guard, not a review to decide
            fields.update(kind="detector_guard", detector_id=(record.get("detail") or {}).get("detector_id", ""))
        elif record["recipient_role"] == "moderator":  # what the review console's queue shows and keys on
            fields.update(kind="review", user_id=record["user_id"], violation_type=record.get("violation_type") or "")
        # In-app: message and sent marker in one transaction, so a restart can never repeat it.
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(stream, fields)
            pipe.set(sent_key, 1, ex=SENT_TTL_S)
            pipe.execute()
        return True

    def _email(self, notification_id: str, user_id: str, subject: str, body: str) -> None:
        message = EmailMessage()
        # Stable, from the notification's id: if a crash between the send and the sent marker
        # makes the notifier send it again, the repeat carries the same Message-ID.
        message["Message-ID"] = message_id(notification_id, self.smtp.sender)
        message["From"] = self.smtp.sender
        message["To"] = f"{user_id}@users.stream-penalty.invalid"  # the user directory maps ids to addresses
        message["Subject"] = subject
        message.set_content(body)
        with smtplib.SMTP(self.smtp.host, self.smtp.port, timeout=10) as server:
            if self.smtp.starttls:
                server.starttls()
            if self.smtp.user:
                server.login(self.smtp.user, self.smtp.password or "")
            server.send_message(message)


@dataclass(frozen=True)
class RetryPolicy:
    """Waits between attempts of a failed delivery: first_s, doubling up to max_s."""

    first_s: float = 1.0
    max_s: float = 8.0
    max_waiting: int = 10_000  # records waiting for a retry before the notifier stops reading


def failure(exc: Exception) -> str:
    """What went wrong, for the log, without what the error may quote: SMTP refusals carry the
    recipient's address and the server's text, Redis errors the command's arguments."""
    code = getattr(exc, "smtp_code", None) or getattr(exc, "errno", None)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = sorted({str(c) for c, _ in exc.recipients.values()})
        return f"SMTPRecipientsRefused {','.join(codes)}"
    return type(exc).__name__ + (f" {code}" if code else "")


class _Lane:
    """The records of one channel (email, or in-app) that wait for a retry, in arrival order.

    While one waits, later records of the same channel queue behind it: order is kept, and an SMTP
    outage costs one connection attempt per wait, not one per email. The other lane goes on, so
    in-app messages are not held up by a mail server that is down."""

    def __init__(self, retry: RetryPolicy):
        self.retry = retry
        self.waiting: deque[tuple[tuple[str, int], int, dict]] = deque()  # ((topic, partition), offset, record)
        self.wait_s = 0.0
        self.next_try = 0.0

    def failed(self, record: dict, exc: Exception, counts: dict) -> None:
        self.wait_s = min(self.retry.max_s, self.wait_s * 2) if self.wait_s else self.retry.first_s
        self.next_try = time.monotonic() + self.wait_s
        counts["failed"] += 1
        log.warning("delivery of %s failed (%s); retrying in %.0f s, %d waiting", record["notification_id"],
                    failure(exc), self.wait_s, len(self.waiting))

    def offer(self, notifier: Notifier, where: tuple[str, int], offset: int, record: dict, counts: dict) -> None:
        self.waiting.append((where, offset, record))
        if len(self.waiting) == 1:
            self.drain(notifier, counts)

    def drain(self, notifier: Notifier, counts: dict) -> None:
        """Deliver from the head while it goes through; on a failure wait (backoff) before the next try."""
        if time.monotonic() < self.next_try:
            return
        while self.waiting:
            record = self.waiting[0][2]
            try:
                counts["delivered" if notifier.deliver(record) else "repeated"] += 1
            except (OSError, smtplib.SMTPException, redis.RedisError) as exc:
                self.failed(record, exc, counts)
                return
            self.waiting.popleft()
            self.wait_s = 0.0


def run(bootstrap: str, notifier: Notifier, topic: str = "notifications", group_id: str = "notifier",
        stop=lambda: False, idle_exit_s: float | None = None, retry: RetryPolicy = RetryPolicy()) -> dict:
    """Consume and deliver until stop() (or idle_exit_s without records and nothing waiting).

    A failed delivery is retried until it goes through: a notification is never dropped. Offsets
    are committed per partition up to the first record still waiting, so a restart redelivers
    what was not sent (records sent already are skipped by their sent marker)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "group.instance.id": f"{group_id}-1",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    counts = {"delivered": 0, "repeated": 0, "failed": 0}
    lanes = {"email": _Lane(retry), "in_app": _Lane(retry)}
    read_to: dict[tuple[str, int], int] = {}  # next offset to read, per partition
    committed: dict[tuple[str, int], int] = {}
    paused = False
    last = time.monotonic()
    try:
        while not stop():
            waiting = sum(len(lane.waiting) for lane in lanes.values())
            if (waiting >= retry.max_waiting) != paused:  # bound the memory an outage can take
                paused = not paused
                (consumer.pause if paused else consumer.resume)(consumer.assignment())
            batch = [m for m in consumer.consume(200, timeout=0.2 if waiting else 0.5) if not m.error()]
            for lane in lanes.values():
                lane.drain(notifier, counts)
            if batch:
                last = time.monotonic()
            elif not waiting and idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                break
            for msg in batch:
                where = (msg.topic(), msg.partition())
                record = json.loads(msg.value())
                lanes["email" if record["channel"] == "email" else "in_app"].offer(
                    notifier, where, msg.offset(), record, counts)
                read_to[where] = msg.offset() + 1
            commit_to = dict(read_to)
            for lane in lanes.values():
                for where, offset, _ in lane.waiting:
                    commit_to[where] = min(commit_to[where], offset)
            changed = [TopicPartition(t, p, o) for (t, p), o in commit_to.items() if committed.get((t, p)) != o]
            if changed:
                consumer.commit(offsets=changed, asynchronous=False)
                committed.update(commit_to)
    finally:
        consumer.close()
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinks.notifier", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:19092")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:16379/0")
    parser.add_argument("--topic", default="notifications")
    parser.add_argument("--smtp-host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=25)
    parser.add_argument("--smtp-tls", action="store_true", help="STARTTLS")
    parser.add_argument("--smtp-user")
    parser.add_argument("--appeal-base-url", default="https://appeals.stream-penalty.invalid/appeal")
    parser.add_argument("--idle-exit-s", type=float, default=None)
    args = parser.parse_args(argv)
    secret = os.environ.get("PENALTY_APPEAL_SECRET")
    if not secret:
        print("notifier: set PENALTY_APPEAL_SECRET (the key that signs appeal links)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    smtp = SmtpConfig(args.smtp_host, args.smtp_port, args.smtp_tls, args.smtp_user,
                      os.environ.get("PENALTY_SMTP_PASSWORD"))
    notifier = Notifier(redis.Redis.from_url(args.redis_url), smtp, secret.encode(), args.appeal_base_url,
                        token_key_or_none())
    print(json.dumps(run(args.bootstrap_servers, notifier, args.topic, idle_exit_s=args.idle_exit_s)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
