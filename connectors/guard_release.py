"""An operator's release of a tripped detector guard (rules/guard.py): a small record of its own
on the `decisions` topic, signed like moderator decisions (connectors/signing.py, the same keys),
read by the job's guard stage and by `rules simulate`. Not a decision v1: the decision operator
never sees one.

    {"schema_version": 1, "guard_release_id": "guard-release-<24 hex>", "detector_id": "...",
     "operator_id": "...", "event_time_ms": 1764000000000, "key_id": "...", "signature": "..."}

`python -m rules release-guard` makes, signs and (with --bootstrap-servers) writes one.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import orjson

from connectors.signing import DecisionKeys, verify

MARKER = b'"guard_release_id"'  # records holding it are releases, not decisions
MAX_RELEASE_BYTES = 4096
_TEXT_FIELDS = ("guard_release_id", "detector_id", "operator_id")


class GuardRelease(NamedTuple):
    release_id: str
    detector_id: str
    operator_id: str
    event_time_ms: int


class ReleaseRefused(NamedTuple):
    reason: str  # invalid_decision | invalid_signature, as for decisions (counted and dead-lettered alike)
    detail: str


def is_release(payload: bytes) -> bool:
    return MARKER in payload


def make_release(detector_id: str, operator_id: str, now_ms: int) -> dict:
    """An unsigned release record; its id is the same for one detector, operator and time."""
    subject = f"{detector_id}\x1f{operator_id}\x1f{now_ms}"
    return {"schema_version": 1, "guard_release_id": "guard-release-" + hashlib.sha256(subject.encode()).hexdigest()[:24],
            "detector_id": detector_id, "operator_id": operator_id, "event_time_ms": now_ms}


def parse_release(value: bytes, keys: DecisionKeys | None) -> GuardRelease | ReleaseRefused:
    if len(value) > MAX_RELEASE_BYTES:
        return ReleaseRefused("invalid_decision", f"a guard release of {len(value)} bytes > {MAX_RELEASE_BYTES}")
    try:
        doc = orjson.loads(value)
    except ValueError as exc:
        return ReleaseRefused("invalid_decision", f"not a JSON guard release: {str(exc)[:160]}")
    if not isinstance(doc, dict) or doc.get("schema_version") != 1:
        return ReleaseRefused("invalid_decision", "a guard release is a JSON object with schema_version 1")
    for name in _TEXT_FIELDS:
        if not isinstance(doc.get(name), str) or not doc[name] or len(doc[name]) > 256:
            return ReleaseRefused("invalid_decision", f"guard release: {name} must be a string of 1-256 characters")
    event_time_ms = doc.get("event_time_ms")
    if type(event_time_ms) is not int or event_time_ms < 0:
        return ReleaseRefused("invalid_decision", "guard release: event_time_ms must be a whole number >= 0")
    unsigned = verify(doc, keys)
    if unsigned is not None:
        return ReleaseRefused("invalid_signature", unsigned)
    return GuardRelease(doc["guard_release_id"], doc["detector_id"], doc["operator_id"], event_time_ms)
