"""Output records of the decision core, with deterministic ids.

Every id is a hash of the inputs that caused the record, so a replay or a retry produces the
same id and downstream consumers can dedupe. The shapes are published as JSON Schema files in
connectors/schemas/ (one per kind) and carry `schema_version`.
"""

from __future__ import annotations

import base64
from hashlib import sha256
from typing import Any, NamedTuple

SCHEMA_VERSION = 1
KINDS = ("enforcement", "notification", "review", "audit", "dlq")


class Output(NamedTuple):
    kind: str  # one of KINDS: which topic it goes to
    key: str | None  # Kafka key: the user id where known
    record: dict[str, Any]


def stable_id(prefix: str, *parts: object) -> str:
    try:
        # Nearly always every part is already a str: join them as they are.
        text = "\x1f".join(parts)
    except TypeError:  # a None or a number among them: written as str() writes it, as always
        text = "\x1f".join(map(str, parts))
    return prefix + "_" + sha256(text.encode()).hexdigest()[:24]


def incident_id(user_id: str, stream_id: str, violation_type: str, first_alert_id: str) -> str:
    return stable_id("inc", user_id, stream_id, violation_type, first_alert_id)


def enforcement(
    *, user_id: str, stream_id: str | None, action: str, until_ms: int | None, incident_id: str | None,
    violation_type: str | None, rule_id: str, policy_name: str, policy_version: str, user_version: int,
    event_time_ms: int, active_strikes: int, cause: str,
) -> Output:
    record = {
        "schema_version": SCHEMA_VERSION,
        "penalty_id": stable_id("pen", user_id, incident_id, action, rule_id, cause),
        "user_id": user_id,
        "stream_id": stream_id,
        "action": action,
        "until_ms": until_ms,
        "incident_id": incident_id,
        "violation_type": violation_type,
        "rule_id": rule_id,
        "rule_set": policy_name,
        "rule_set_version": policy_version,
        "user_version": user_version,
        "event_time_ms": event_time_ms,
        "active_strikes": active_strikes,
        "cause": cause,
    }
    return Output("enforcement", user_id, record)


def notification(
    *, user_id: str, recipient_role: str, recipient_id: str, channel: str, topic: str,
    incident_id: str | None, violation_type: str | None, actions: list[dict[str, Any]],
    penalty_ids: list[str], appealable: bool, event_time_ms: int, rule_id: str,
) -> Output:
    record = {
        "schema_version": SCHEMA_VERSION,
        "notification_id": stable_id("ntf", user_id, incident_id, recipient_role, channel, topic, *penalty_ids),
        "user_id": user_id,
        "recipient_role": recipient_role,
        "recipient_id": recipient_id,
        "channel": channel,
        "topic": topic,
        "incident_id": incident_id,
        "violation_type": violation_type,
        "actions": actions,
        "penalty_ids": penalty_ids,
        # The notifier turns this into a signed, expiring link (the job holds no signing secret).
        "appeal": {"incident_id": incident_id, "user_id": user_id} if appealable else None,
        "rule_id": rule_id,
        "event_time_ms": event_time_ms,
    }
    return Output("notification", user_id, record)


def review(
    *, user_id: str, stream_id: str, incident_id: str, violation_type: str, priority: str,
    alert_ids: list[str], max_confidence: float, evidence: list[dict[str, Any]], rule_id: str,
    policy_version: str, actions_taken: list[str], event_time_ms: int, reason: str | None = None,
) -> Output:
    record = {
        "schema_version": SCHEMA_VERSION,
        "review_id": stable_id("rev", incident_id, rule_id),
        "user_id": user_id,
        "stream_id": stream_id,
        "incident_id": incident_id,
        "violation_type": violation_type,
        "priority": priority,
        "alert_ids": alert_ids,
        "max_confidence": max_confidence,
        "evidence": evidence,
        "rule_id": rule_id,
        "rule_set_version": policy_version,
        "actions_taken": actions_taken,
        "event_time_ms": event_time_ms,
    }
    if reason is not None:  # why a review instead of the band's decision (only "detector_guard" so far)
        record["reason"] = reason
    return Output("review", user_id, record)


def audit(
    *, kind: str, user_id: str, cause: str, event_time_ms: int, outcome: str, rule_id: str | None,
    policy_name: str, policy_version: str, incident_id: str | None = None,
    alert_ids: list[str] | None = None, ledger_before: dict | None = None,
    ledger_after: dict | None = None, detail: dict[str, Any] | None = None,
) -> Output:
    record = {
        "schema_version": SCHEMA_VERSION,
        "audit_id": stable_id("aud", user_id, kind, cause, outcome),
        "kind": kind,
        "user_id": user_id,
        "incident_id": incident_id,
        "alert_ids": alert_ids or [],
        "outcome": outcome,
        "rule_id": rule_id,
        "rule_set": policy_name,
        "rule_set_version": policy_version,
        "ledger_before": ledger_before,
        "ledger_after": ledger_after,
        "detail": detail or {},
        "event_time_ms": event_time_ms,
    }
    return Output("audit", user_id, record)


def guard_change(
    *, detector_id: str, outcome: str, cause: str, event_time_ms: int, rule_id: str, policy_name: str,
    policy_version: str, detail: dict[str, Any],
) -> list[Output]:
    """A detector guard tripped or released (outcome "tripped" / "released"): an audit record of
    kind detector_guard and a notice to the moderators' queue `detector_guard`. No user is
    concerned: user_id is "" and the records have no Kafka key."""
    detail = {"detector_id": detector_id, **detail}
    out = audit(kind="detector_guard", user_id="", cause=cause, event_time_ms=event_time_ms, outcome=outcome,
                rule_id=rule_id, policy_name=policy_name, policy_version=policy_version, detail=detail)
    notice = {
        "schema_version": SCHEMA_VERSION,
        "notification_id": stable_id("ntf", "detector_guard", detector_id, outcome, cause),
        "user_id": "",
        "recipient_role": "moderator",
        "recipient_id": "queue:detector_guard",
        "channel": "in_app",
        "topic": f"detector_guard_{outcome}",
        "incident_id": None,
        "violation_type": None,
        "actions": [],
        "penalty_ids": [],
        "appeal": None,
        "rule_id": rule_id,
        "event_time_ms": event_time_ms,
        "detail": detail,
    }
    return [out._replace(key=None), Output("notification", None, notice)]


def dead_letter(
    *, reason: str, detail: str, raw: bytes, size_bytes: int, topic: str | None, partition: int | None,
    offset: int | None, timestamp_ms: int | None, user_id: str | None,
) -> Output:
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    record = {
        "schema_version": SCHEMA_VERSION,
        "dlq_id": stable_id("dlq", topic, partition, offset, reason, text if offset is None else ""),
        "reason": reason,
        "detail": detail,
        "raw": text,
        "raw_encoding": encoding,
        "raw_truncated": size_bytes > len(raw),
        "size_bytes": size_bytes,
        "source": {"topic": topic, "partition": partition, "offset": offset, "timestamp_ms": timestamp_ms},
        "user_id": user_id,
    }
    return Output("dlq", user_id, record)
