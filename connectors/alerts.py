"""Alert v1 parsing and validation: bytes in, an Alert or a Rejection out, never an exception.

Pure Python (no pyflink), so the same code runs in the Flink job, in `python -m rules simulate`
and in tests. Validation is the published JSON Schema (connectors/schemas/alert-v1.json),
compiled once with fastjsonschema. JSON text is read with orjson: faster than the standard
library, and strict where the standard library is lenient in ways that would crash the job later
(a lone UTF-16 surrogate escape such as "\\ud800" becomes a Python string that cannot be encoded
as UTF-8, so hashing an id made of it would raise; numbers that overflow to infinity).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any, NamedTuple

import fastjsonschema
import orjson

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_RAW_BYTES = 4 * 1024  # how much of a rejected payload travels to the DLQ
MAX_FUTURE_SKEW_MS = 5 * 60 * 1000  # event time may run ahead of the produce time by this much

# The fixed vocabulary of rejection reasons (the `reason` field of DLQ records).
REASONS = (
    "empty",  # null or zero-length value
    "too_large",  # payload over MAX_PAYLOAD_BYTES, rejected without parsing
    "not_utf8",  # bytes that are not UTF-8 text
    "not_json",  # not one JSON document (NaN/Infinity, numbers past a double, lone surrogate escapes)
    "schema",  # valid JSON that breaks alert v1; detail names field and problem
    "unsupported_schema_version",  # schema_version other than 1
    "event_time_in_future",  # event_time_ms later than the record's produce time + skew
    "too_late",  # older than the dedupe horizon behind the watermark (decided in the job)
    "invalid_decision",  # a moderator decision that is malformed or names nothing known
    "invalid_signature",  # a decision (or guard release) no accepted key signed (connectors/signing.py)
)


def _load_schema() -> dict[str, Any]:
    text = resources.files("connectors").joinpath("schemas/alert-v1.json").read_text("utf-8")
    return json.loads(text)


ALERT_SCHEMA = _load_schema()
_validate = fastjsonschema.compile(ALERT_SCHEMA)

# What _plain_alert() below checks by hand, as it reads in the schema file (descriptions left
# out). If the file changes, the fast path turns itself off rather than judge by stale rules.
_FAST_PATH_SCHEMA = {
    "type": "object",
    "required": ["alert_id", "stream_id", "user_id", "detector_id", "violation_type", "confidence",
                 "event_time_ms"],
    "properties": {
        "alert_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "stream_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "user_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "detector_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "violation_type": {"type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "event_time_ms": {"type": "integer", "minimum": 0, "maximum": 253402300799999},
        "model_version": {"type": "string", "maxLength": 200},
        "evidence": {"type": "object"},
        "schema_version": {"type": "integer", "const": 1, "default": 1},
    },
    "additionalProperties": True,
}


def _without_descriptions(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_descriptions(v) for k, v in schema.items()
                if k not in ("$schema", "$id", "title", "description")}
    return schema


_FAST_PATH_ON = _without_descriptions(ALERT_SCHEMA) == _FAST_PATH_SCHEMA
# The schema's pattern as fastjsonschema compiles it ("$" read as end of text, "\\Z").
_VIOLATION_TYPE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z").match
_MAX_EVENT_TIME_MS = 253402300799999


def _plain_alert(doc: Any) -> Alert | None:
    """The Alert of a document the schema certainly accepts, in the shape producers send: exact
    types as orjson returns them (str, int, float, dict), nothing the validator would coerce or
    judge subtly (an event_time_ms of 5.0, a null model_version, a bool anywhere). None for
    anything else, valid or not: that goes to the compiled validator, so every rejection and its
    detail is the validator's. Each field is read once, checked and put in the Alert: about a
    fifth of the validator's cost on the common shape."""
    if type(doc) is not dict or not _FAST_PATH_ON:
        return None
    get = doc.get
    alert_id, stream_id, user_id, detector_id = get("alert_id"), get("stream_id"), get("user_id"), get("detector_id")
    # A chain of `is`: all four are exactly str (a missing field is None, not str).
    if not (type(alert_id) is type(stream_id) is type(user_id) is type(detector_id) is str
            and 0 < len(alert_id) <= 200 and 0 < len(stream_id) <= 200
            and 0 < len(user_id) <= 200 and 0 < len(detector_id) <= 200):
        return None
    violation_type = get("violation_type")
    if type(violation_type) is not str or _VIOLATION_TYPE(violation_type) is None:
        return None
    confidence = get("confidence")  # exact float or int: a bool is not a JSON number
    if (type(confidence) is not float and type(confidence) is not int) or not 0 <= confidence <= 1:
        return None
    event_time_ms = get("event_time_ms")
    if type(event_time_ms) is not int or not 0 <= event_time_ms <= _MAX_EVENT_TIME_MS:
        return None
    # Optional fields: absent is fine, null is the validator's to judge.
    model_version = get("model_version")
    if model_version is None:
        if "model_version" in doc:
            return None
    elif type(model_version) is not str or len(model_version) > 200:
        return None
    evidence = get("evidence")
    if type(evidence) is not dict and (evidence is not None or "evidence" in doc):
        return None
    schema_version = get("schema_version", 1)
    if type(schema_version) is not int or schema_version != 1:
        return None
    return Alert(alert_id, stream_id, user_id, detector_id, violation_type, float(confidence), event_time_ms,
                 model_version, evidence if evidence else None)


class Alert(NamedTuple):
    alert_id: str
    stream_id: str
    user_id: str
    detector_id: str
    violation_type: str
    confidence: float
    event_time_ms: int
    model_version: str | None = None
    evidence: dict[str, Any] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self._asdict().items() if v is not None}
        out["schema_version"] = 1
        return out


class Source(NamedTuple):
    """Where a record came from; all None for alerts that did not come from Kafka."""

    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    timestamp_ms: int | None = None


NO_SOURCE = Source()


class Rejection(NamedTuple):
    reason: str
    detail: str
    raw: bytes
    size_bytes: int
    source: Source = NO_SOURCE
    user_id: str | None = None  # when known: lets the DLQ be keyed and searched by user


def _field_of(exc: fastjsonschema.JsonSchemaValueException, doc: Any) -> str:
    path = [str(p) for p in (exc.path or [])[1:]]
    if exc.rule == "required" and isinstance(exc.rule_definition, list) and isinstance(doc, dict):
        missing = [f for f in exc.rule_definition if f not in doc]
        return ",".join(path + missing) if len(missing) > 1 else ".".join(path + missing)
    return ".".join(path) or "(document)"


def _problem_of(exc: fastjsonschema.JsonSchemaValueException) -> str:
    rule = exc.rule
    if rule == "required":
        return "missing"
    if rule == "type":
        return f"must be {exc.rule_definition}"
    if rule in ("minimum", "maximum"):
        return f"out of range ({rule} {exc.rule_definition})"
    if rule in ("minLength", "maxLength"):
        return f"bad length ({rule} {exc.rule_definition})"
    if rule == "pattern":
        return f"does not match {exc.rule_definition}"
    return exc.message.replace("data.", "").replace("data ", "")


def _not_json(value: bytes, message: str, raw: bytes, size: int, source: Source) -> Rejection:
    """Why orjson refused `value`: bytes that are not UTF-8 are told apart from text that is not
    JSON (NaN and Infinity included, and lone surrogate escapes, which are not Unicode text)."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("not_utf8", f"invalid UTF-8 at byte {exc.start}", raw, size, source)
    return Rejection("not_json", message[:200], raw, size, source)


def parse_alert(
    value: bytes | None,
    source: Source = NO_SOURCE,
    size_bytes: int | None = None,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    max_future_skew_ms: int = MAX_FUTURE_SKEW_MS,
) -> Alert | Rejection:
    """Judge one Kafka record value. `size_bytes` is the original size when `value` was
    already cut short upstream (the Java source cuts oversized payloads)."""
    try:
        return _parse(value, source, size_bytes, max_payload_bytes, max_future_skew_ms)
    except Exception as exc:  # noqa: BLE001 - a record must never stop the job
        raw = bytes(value or b"")[:MAX_RAW_BYTES] if isinstance(value, (bytes, bytearray)) else b""
        return Rejection("not_json", f"unparseable: {type(exc).__name__}", raw, len(raw), source)


# Evidence travels on into review records as JSON: orjson writes at most 254 levels and the
# standard library's encoder then overflows Python's stack, so a deeper (but tiny, ~6 KB)
# document would crash the operator on every replay. Extra fields are ignored, but the JVM's key
# extractor (Jackson, at most 1,000 levels) gives up on a document deeper than it reads, while
# orjson reads 1,024: the job would reject what `rules simulate` decides. So no field of an alert
# may nest deeper than this; no detector needs more than a few levels.
MAX_EVIDENCE_DEPTH = 64


def _depth(value: Any) -> int:
    """Nesting levels of a JSON value (1 for an empty object), without recursion."""
    deepest, level = 0, [(value, 1)]
    while level:
        node, depth = level.pop()
        deepest = max(deepest, depth)
        if depth > MAX_EVIDENCE_DEPTH:
            return depth
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        level.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _invalid(doc: Any, raw: bytes, size: int, source: Source) -> Rejection | None:
    """The validator's judgement of a document the fast path did not vouch for: None if valid."""
    user_id = doc.get("user_id") if isinstance(doc, dict) else None
    user_id = user_id if isinstance(user_id, str) and user_id else None
    if isinstance(doc, dict) and "schema_version" in doc and doc["schema_version"] != 1:
        return Rejection(
            "unsupported_schema_version",
            f"schema_version {doc['schema_version']!r}; this job reads version 1",
            raw, size, source, user_id,
        )
    try:
        _validate(doc)
    except fastjsonschema.JsonSchemaValueException as exc:
        return Rejection("schema", f"{_field_of(exc, doc)}: {_problem_of(exc)}", raw, size, source, user_id)
    return None


def _parse(value, source, size_bytes, max_payload_bytes, max_future_skew_ms):
    if value is None or len(value) == 0:
        return Rejection("empty", "record has no value", b"", 0, source)
    value = bytes(value)
    size = len(value) if size_bytes is None or size_bytes < 0 else size_bytes
    if size > max_payload_bytes:
        return Rejection(
            "too_large", f"{size} bytes > limit {max_payload_bytes}", value[:MAX_RAW_BYTES], size, source
        )
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return _not_json(value, str(exc), value[:MAX_RAW_BYTES], size, source)
    alert = _plain_alert(doc)  # nearly every alert: checked and read in one pass
    if alert is not None:
        user_id, event_time_ms = alert.user_id, alert.event_time_ms
    else:
        rejection = _invalid(doc, value[:MAX_RAW_BYTES], size, source)
        if rejection is not None:
            return rejection
        user_id, event_time_ms = doc["user_id"], int(doc["event_time_ms"])
    if (source.timestamp_ms is not None and source.timestamp_ms >= 0
            and event_time_ms > source.timestamp_ms + max_future_skew_ms):
            return Rejection(
                "event_time_in_future",
                f"event_time_ms {event_time_ms} is {event_time_ms - source.timestamp_ms} ms after "
                f"the record was produced (limit {max_future_skew_ms} ms)",
                value[:MAX_RAW_BYTES], size, source, user_id,
            )
    if value.count(b"{") + value.count(b"[") > MAX_EVIDENCE_DEPTH:  # cheap: few documents get past it
        for field, item in doc.items():
            if isinstance(item, (dict, list)) and _depth(item) > MAX_EVIDENCE_DEPTH:
                return Rejection("schema", f"{field}: nested deeper than {MAX_EVIDENCE_DEPTH} levels",
                                 value[:MAX_RAW_BYTES], size, source, user_id)
    if alert is None:  # valid by the validator's judgement
        evidence = doc.get("evidence")
        # Positional: the field order of Alert (keywords cost a little on every alert).
        alert = Alert(doc["alert_id"], doc["stream_id"], doc["user_id"], doc["detector_id"], doc["violation_type"],
                      float(doc["confidence"]), event_time_ms, doc.get("model_version"), evidence if evidence else None)
    return alert
