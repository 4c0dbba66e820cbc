"""Moderator decisions v1 (appeal outcomes, review verdicts): bytes in, a Decision or a
Rejection (reason invalid_decision) out, never an exception. Schema:
connectors/schemas/decision-v1.json."""

from __future__ import annotations

from typing import NamedTuple

import fastjsonschema
import orjson

from connectors.alerts import NO_SOURCE, Rejection, Source
from connectors.record_schemas import load

_validate = fastjsonschema.compile(load("decision-v1.json"))


class Decision(NamedTuple):
    decision_id: str
    kind: str  # appeal | review
    verdict: str  # appeal: granted | denied; review: confirmed | rejected
    user_id: str
    incident_id: str
    moderator_id: str
    event_time_ms: int


def parse_decision(value: bytes | None, source: Source = NO_SOURCE) -> Decision | Rejection:
    raw = bytes(value or b"")[:4096]
    try:
        doc = orjson.loads(bytes(value or b""))  # strict like alerts (connectors/alerts.py)
        _validate(doc)
    except fastjsonschema.JsonSchemaValueException as exc:
        user = doc.get("user_id") if isinstance(doc, dict) and isinstance(doc.get("user_id"), str) else None
        return Rejection("invalid_decision", f"{exc.message.replace('data.', '')}", raw, len(raw), source, user)
    except ValueError as exc:  # orjson.JSONDecodeError is one
        return Rejection("invalid_decision", f"not a JSON decision: {str(exc)[:160]}", raw, len(raw), source)
    return Decision(doc["decision_id"], doc["kind"], doc["verdict"], doc["user_id"], doc["incident_id"],
                    doc["moderator_id"], int(doc["event_time_ms"]))
