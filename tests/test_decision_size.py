"""Moderator decisions get the alerts' size limit: over 64 KiB is reason `too_large`,
never parsed, in the parser, `rules simulate` and the operator (which gets the Java source's cut
payload and the original size). Pure: no JVM."""

from __future__ import annotations

import json

import orjson
import pytest

from connectors import bundles, record_schemas, signing
from connectors.alerts import MAX_PAYLOAD_BYTES, MAX_RAW_BYTES, Rejection, Source
from connectors.decisions import Decision, parse_decision
from rules.simulate import run

from .conftest import T0_MS, TEST_KEYS
from .test_operator_timers import operator_and_context  # noqa: F401 - the pure operator fixture

pytestmark = pytest.mark.faults


def decision_of_size(size: int) -> bytes:
    """A valid signed decision padded with an extra field (the schema allows extra fields) to `size` bytes."""
    doc = {"decision_id": "d-big", "kind": "review", "verdict": "confirmed", "user_id": "u-1",
           "incident_id": "inc_" + "0" * 24, "moderator_id": "mod-1", "event_time_ms": T0_MS, "padding": ""}
    doc["padding"] = "x" * (size - len(orjson.dumps(signing.sign(doc, TEST_KEYS))))
    value = orjson.dumps(signing.sign(doc, TEST_KEYS))
    assert len(value) == size
    return value


def test_a_decision_at_the_limit_is_parsed_one_byte_over_is_too_large():
    assert isinstance(parse_decision(decision_of_size(MAX_PAYLOAD_BYTES), keys=TEST_KEYS), Decision)
    over = decision_of_size(MAX_PAYLOAD_BYTES + 1)
    source = Source("decisions", 2, 17, T0_MS)
    result = parse_decision(over, source)
    assert result == Rejection("too_large", f"{MAX_PAYLOAD_BYTES + 1} bytes > limit {MAX_PAYLOAD_BYTES}",
                               over[:MAX_RAW_BYTES], MAX_PAYLOAD_BYTES + 1, source, None)


def test_the_size_the_source_reports_counts_when_the_payload_was_cut():
    cut = decision_of_size(MAX_PAYLOAD_BYTES * 3)[:MAX_RAW_BYTES]  # as the Java deserializer hands it on
    result = parse_decision(cut, size_bytes=MAX_PAYLOAD_BYTES * 3)
    assert result.reason == "too_large" and result.size_bytes == MAX_PAYLOAD_BYTES * 3 and result.raw == cut
    # A negative size is the source's "no value": judged by the payload itself.
    assert isinstance(parse_decision(decision_of_size(1000), size_bytes=-1, keys=TEST_KEYS), Decision)


def test_simulate_rejects_an_oversized_decision_as_too_large(policy):
    size = MAX_PAYLOAD_BYTES + 100
    out = [json.loads(line) for line in run(policy, [decision_of_size(size)])]
    assert out == [{"kind": "rejection", "key": None,
                    "record": {"line": 1, "reason": "too_large", "detail": f"{size} bytes > limit {MAX_PAYLOAD_BYTES}"}}]


def test_the_operator_dead_letters_a_cut_decision_with_its_original_size(operator_and_context):  # noqa: F811
    operator, ctx = operator_and_context
    size = 100 * 1024
    cut = decision_of_size(size)[:MAX_RAW_BYTES]
    # topic index 1: the decisions topic in the bundler's topic order
    bundle = bundles.pack([bundles.BundledRecord(1, 3, 42, T0_MS, size, "u-1", cut)])
    ctx.key = "shard"
    [batch] = list(operator.process_element(bundle, ctx))
    triples = [tuple(batch[i:i + 3]) for i in range(0, len(batch), 3)]
    [(_, _, value)] = [t for t in triples if t[0] == "dlq"]
    record = json.loads(value)
    record_schemas.validate("dlq", record)
    assert record["reason"] == "too_large" and record["size_bytes"] == size and record["raw_truncated"]
    assert record["source"] == {"topic": "decisions", "partition": 3, "offset": 42, "timestamp_ms": T0_MS}
    # Counted as rejected decisions by reason (the router's reason=too_large).
    assert [t for t in triples if t[0] == "count"] == [("count", "decisions_in", ""),
                                                       ("count", "decisions_rejected.too_large", "")]
    assert operator.users.load("u-1").state is None  # nothing was decided
