"""Signed decisions (connectors/signing.py): key configuration, signing, and what the parser says
about unsigned, forged, tampered and retired-key records. Pure: no JVM."""

from __future__ import annotations

import json

import pytest

from connectors import record_schemas, signing
from connectors.alerts import Rejection
from connectors.decisions import Decision, parse_decision
from rules.records import dead_letter

from .conftest import T0_MS, TEST_KEYS

GOOD = {"schema_version": 1, "decision_id": "d-1", "kind": "appeal", "verdict": "granted", "user_id": "u-1",
        "incident_id": "inc_" + "a" * 24, "moderator_id": "m-1", "event_time_ms": T0_MS, "note": "satire"}


def reason_and_detail(value: bytes, keys=TEST_KEYS) -> tuple[str, str]:
    result = parse_decision(value, keys=keys)
    assert isinstance(result, Rejection)
    return result.reason, result.detail


def test_the_first_key_signs_and_every_listed_key_verifies():
    record = signing.sign(GOOD, TEST_KEYS)
    assert record["key_id"] == "test-k2" and len(record["signature"]) == 64
    assert isinstance(parse_decision(json.dumps(record).encode(), keys=TEST_KEYS), Decision)
    # A decision signed before the rotation (the previous key, now second) is still accepted.
    previous = signing.DecisionKeys("test-k1", TEST_KEYS.secrets)
    assert isinstance(parse_decision(json.dumps(signing.sign(GOOD, previous)).encode(), keys=TEST_KEYS), Decision)
    # Field order and JSON spacing do not matter: the MAC is over the canonical form.
    reordered = json.dumps(dict(reversed(list(record.items()))), indent=2).encode()
    assert isinstance(parse_decision(reordered, keys=TEST_KEYS), Decision)


def test_unsigned_forged_tampered_and_retired_decisions_are_invalid_signature():
    record = signing.sign(GOOD, TEST_KEYS)
    assert reason_and_detail(json.dumps(GOOD).encode()) == (
        "invalid_signature", "unsigned: the record has no key_id and signature")
    forged = signing.DecisionKeys("test-k2", {"test-k2": b"x" * 40})
    assert reason_and_detail(json.dumps(signing.sign(GOOD, forged)).encode()) == (
        "invalid_signature", "the signature does not match the record's fields (key id 'test-k2')")
    for field, value in (("verdict", "denied"), ("user_id", "u-2"), ("note", "other"), ("key_id", "test-k1"),
                         ("extra", 1)):
        reason, _ = reason_and_detail(json.dumps({**record, field: value}).encode())
        assert reason == "invalid_signature", field
    retired = signing.DecisionKeys("test-k0", {"test-k0": b"0" * 40})
    assert reason_and_detail(json.dumps(signing.sign(GOOD, retired)).encode()) == (
        "invalid_signature", "key id 'test-k0' is not accepted here (accepted: test-k2, test-k1): retired or unknown")
    assert reason_and_detail(json.dumps(record).encode(), keys=None)[1].endswith("set PENALTY_DECISION_KEYS")
    # The rejection keeps the user id, for the DLQ record (dlq v1); a schema error stays invalid_decision.
    rejection = parse_decision(json.dumps(GOOD).encode(), keys=TEST_KEYS)
    assert rejection.user_id == "u-1"
    record_schemas.validate("dlq", dead_letter(
        reason=rejection.reason, detail=rejection.detail, raw=rejection.raw, size_bytes=rejection.size_bytes,
        topic="decisions", partition=0, offset=7, timestamp_ms=T0_MS, user_id=rejection.user_id).record)
    assert reason_and_detail(json.dumps({**record, "signature": "not hex"}).encode())[0] == "invalid_decision"


@pytest.mark.parametrize("text, message", [
    ("k1", "each entry is <key id>=<secret>"),
    ("bad id=" + "s" * 40, "each entry is <key id>=<secret>"),
    ("k1=short", "has 5 characters; use at least 32"),
    ("k1=" + "a" * 40 + ",k1=" + "b" * 40, "key id 'k1' is listed twice"),
])
def test_bad_key_configuration_says_what_to_fix(text, message):
    with pytest.raises(signing.SigningError, match=message):
        signing.parse_keys(text)


def test_keys_from_the_environment():
    assert signing.keys_from_env({}) is None and signing.keys_from_env({signing.KEYS_ENV: " "}) is None
    keys = signing.keys_from_env({signing.KEYS_ENV: "a=" + "1" * 32 + ", b=" + "2" * 32})
    assert keys.current_id == "a" and list(keys.secrets) == ["a", "b"]
