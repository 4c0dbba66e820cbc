"""Alert v1 parsing: every rejection reason, and the parser never raises."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.alerts import (
    MAX_PAYLOAD_BYTES,
    MAX_RAW_BYTES,
    REASONS,
    Alert,
    Rejection,
    Source,
    parse_alert,
)
from rules import compact_json
from rules.core import CoreConfig, PenaltyCore
from rules.loader import load_policy

from .conftest import DEFAULT_RULES, T0_MS, alert_bytes, alert_doc


def test_valid_alert_with_optional_and_unknown_fields():
    doc = alert_doc(model_version="v3", evidence={"clip_start_ms": 10})
    doc["something_new"] = {"ignored": True}
    result = parse_alert(json.dumps(doc).encode())
    assert isinstance(result, Alert)
    assert result.model_version == "v3" and result.evidence == {"clip_start_ms": 10}
    assert result.event_time_ms == T0_MS and result.confidence == 0.95


def test_schema_version_defaults_to_1_and_1_is_accepted():
    doc = alert_doc()
    doc.pop("schema_version")
    assert isinstance(parse_alert(json.dumps(doc).encode()), Alert)


@pytest.mark.parametrize("payload, reason, detail_part", [
    (b"", "empty", "no value"),
    (None, "empty", "no value"),
    (b"\xff\xfe{}", "not_utf8", "byte 0"),
    (b"{not json", "not_json", ""),
    (b'{"confidence": NaN}', "not_json", ""),
    # A lone surrogate escape is JSON grammar but not Unicode text: an id made of it could not be
    # hashed (UTF-8), so deciding it would raise inside the job.
    (alert_bytes().replace(b'"u-1"', b'"u-\\ud800"'), "not_json", "surrogate"),
    (alert_bytes().replace(b'"a-1"', b'"a-\\udfff-x"'), "not_json", "surrogate"),
    (json.dumps({**alert_doc(), "evidence": {"x": 1}}).encode().replace(b'"x": 1', b'"x": 1e400'), "not_json",
     "infinity"),
    (json.dumps({**alert_doc(), "schema_version": 2}).encode(), "unsupported_schema_version", "2"),
    (json.dumps({k: v for k, v in alert_doc().items() if k != "user_id"}).encode(), "schema", "user_id"),
    (alert_bytes(confidence=1.5), "schema", "confidence"),
    (alert_bytes(event_time_ms=-1), "schema", "event_time_ms"),
    (alert_bytes(violation_type="Hate Speech"), "schema", "violation_type"),
    (json.dumps({**alert_doc(), "event_time_ms": "yesterday"}).encode(), "schema", "event_time_ms"),
    (b"[1, 2]", "schema", ""),
])
def test_rejection_reasons(payload, reason, detail_part):
    result = parse_alert(payload)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert detail_part in result.detail


def test_schema_rejection_names_field_and_problem():
    result = parse_alert(alert_bytes(confidence=1.5))
    assert result.detail.startswith("confidence: ")
    assert result.user_id == "u-1"  # kept so the DLQ record can be keyed by user


def test_too_large_is_rejected_without_parsing_and_raw_is_bounded():
    payload = b'{"alert_id": "' + b"x" * (MAX_PAYLOAD_BYTES + 10) + b'"'  # not even valid JSON
    result = parse_alert(payload)
    assert result.reason == "too_large"
    assert len(result.raw) == MAX_RAW_BYTES and result.size_bytes == len(payload)


def test_size_reported_by_the_source_counts_when_payload_was_cut():
    # The Java deserializer cuts oversized payloads before they reach Python.
    result = parse_alert(b'{"alert_id": "x"', size_bytes=MAX_PAYLOAD_BYTES * 3)
    assert result.reason == "too_large" and result.size_bytes == MAX_PAYLOAD_BYTES * 3


def test_event_time_far_after_produce_time_is_rejected():
    source = Source("alerts", 1, 42, T0_MS)
    result = parse_alert(alert_bytes(event_time_ms=T0_MS + 3_600_000), source)
    assert result.reason == "event_time_in_future"
    assert result.source == source
    ok = parse_alert(alert_bytes(event_time_ms=T0_MS + 60_000), source)
    assert isinstance(ok, Alert)


def test_every_reason_is_in_the_vocabulary():
    assert {"empty", "not_utf8", "not_json", "schema", "too_large", "unsupported_schema_version",
            "event_time_in_future", "too_late"} <= set(REASONS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
alert_like = st.fixed_dictionaries(
    {},
    optional={
        "alert_id": st.text(max_size=5) | st.integers(), "stream_id": st.text(max_size=5),
        "user_id": st.text(max_size=5) | st.none(), "detector_id": st.text(max_size=5),
        "violation_type": st.sampled_from(["spam", "nudity", "x y", ""]) | st.integers(),
        "confidence": st.floats(allow_nan=False) | st.text(max_size=3),
        "event_time_ms": st.integers() | st.floats(allow_nan=False),
        "schema_version": st.integers(0, 3), "evidence": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(payload):
    result = parse_alert(payload)
    assert isinstance(result, (Alert, Rejection))
    if isinstance(result, Rejection):
        assert result.reason in REASONS


@settings(max_examples=400, deadline=None)
@given(alert_like | json_values)
def test_arbitrary_documents_are_an_alert_or_a_rejection(doc):
    result = parse_alert(json.dumps(doc).encode())
    assert isinstance(result, (Alert, Rejection))
    if isinstance(result, Alert):
        assert 0 <= result.confidence <= 1 and isinstance(result.event_time_ms, int)
    else:
        assert result.reason in REASONS


# Hypothesis's text never holds lone surrogates: mix them in.
any_text = st.lists(st.characters() | st.integers(0xD800, 0xDFFF).map(chr), max_size=6).map("".join)
CORE = PenaltyCore(load_policy(DEFAULT_RULES), CoreConfig())


@settings(max_examples=300, deadline=None)
@given(any_text, any_text, any_text, any_text, st.dictionaries(any_text, any_text | st.floats(), max_size=2))
def test_every_accepted_alert_can_be_decided(alert_id, user_id, stream_id, detector_id, evidence):
    # json.dumps writes lone surrogates as \\udxxx escapes and non-finite floats as NaN/Infinity.
    doc = alert_doc(alert_id=alert_id, user_id=user_id, stream_id=stream_id, detector_id=detector_id,
                    evidence=evidence)
    result = parse_alert(json.dumps(doc).encode())
    if isinstance(result, Alert):
        step = CORE.on_alert(None, result, None)
        for output in step.outputs:
            compact_json.encoder(True)(output.record)
