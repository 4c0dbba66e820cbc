"""Moderator decisions v1 (appeal outcomes, review verdicts, erasures): bytes in, a Decision or a
Rejection out, never an exception: reason too_large over the alerts' limit (64 KiB, not parsed),
invalid_signature for a well-formed decision that no accepted key signed (connectors/signing.py),
invalid_decision for anything else wrong. Schema: connectors/schemas/decision-v1.json."""

from __future__ import annotations

from typing import NamedTuple

import fastjsonschema
import orjson

from connectors.alerts import (
    MAX_PAYLOAD_BYTES,
    MAX_RAW_BYTES,
    NO_SOURCE,
    Rejection,
    Source,
)
from connectors.record_schemas import load
from connectors.signing import DecisionKeys, verify

_validate = fastjsonschema.compile(load("decision-v1.json"))


class Decision(NamedTuple):
    decision_id: str
    kind: str  # appeal | review | erasure
    verdict: str  # appeal: granted | denied; review: confirmed | rejected; erasure: erased
    user_id: str
    incident_id: str  # erasure: "erasure"
    moderator_id: str  # erasure: the operator who ran it
    event_time_ms: int
    keep_ban: bool = True  # erasure only: a ban or suspension in force stays (rules/erasure.py)


def parse_decision(value: bytes | None, source: Source = NO_SOURCE, size_bytes: int | None = None,
                   max_payload_bytes: int = MAX_PAYLOAD_BYTES, keys: DecisionKeys | None = None) -> Decision | Rejection:
    """`size_bytes` is the original size when `value` was already cut short upstream (the Java
    source cuts every record over the limit, decisions as alerts). `keys` are the accepted signing
    keys: with none, every decision is rejected as invalid_signature (and the detail says so)."""
    value = bytes(value or b"")
    raw = value[:MAX_RAW_BYTES]
    size = len(value) if size_bytes is None or size_bytes < 0 else size_bytes
    if size > max_payload_bytes:  # as alerts: never parsed, so a huge document costs nothing
        return Rejection("too_large", f"{size} bytes > limit {max_payload_bytes}", raw, size, source)
    try:
        doc = orjson.loads(value)  # strict like alerts (connectors/alerts.py)
        _validate(doc)
    except fastjsonschema.JsonSchemaValueException as exc:
        user = doc.get("user_id") if isinstance(doc, dict) and isinstance(doc.get("user_id"), str) else None
        return Rejection("invalid_decision", f"{exc.message.replace('data.', '')}", raw, len(raw), source, user)
    except ValueError as exc:  # orjson.JSONDecodeError is one
        return Rejection("invalid_decision", f"not a JSON decision: {str(exc)[:160]}", raw, len(raw), source)
    unsigned = verify(doc, keys)
    if unsigned is not None:
        return Rejection("invalid_signature", unsigned, raw, len(raw), source, doc["user_id"])
    return Decision(doc["decision_id"], doc["kind"], doc["verdict"], doc["user_id"], doc["incident_id"],
                    doc["moderator_id"], int(doc["event_time_ms"]), doc.get("keep_ban", True))
