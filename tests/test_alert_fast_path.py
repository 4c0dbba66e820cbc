"""The hand-written fast path of alert validation (connectors/alerts.py `_plain_alert`) must
never change a result: every document, valid or broken in any field, gets exactly the same
parse_alert answer (Alert, or Rejection with the same reason and detail) with and without it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors import alerts
from connectors.alerts import Source, parse_alert

SOURCE = Source("alerts", 0, 42, 1_700_000_000_000)

VALID = {
    "alert_id": "a-1", "stream_id": "s-1", "user_id": "u-1", "detector_id": "d-1",
    "violation_type": "hate_speech", "confidence": 0.93, "event_time_ms": 1_699_999_999_000,
    "model_version": "m-3", "evidence": {"clip_ms": [1, 2]}, "schema_version": 1,
}

# Values near every edge the schema draws, of every JSON type (bool among the numbers: JSON Schema
# says it is none).
EDGE_VALUES = [
    None, True, False, 0, 1, -1, 0.0, 1.0, -0.0, 0.5, 1.0000001, -1e-9, 5.0, 2, 1e300,
    253402300799999, 253402300800000, 253402300799999.0, 2**63, -(2**63), 2**64,
    "", "a", "x" * 200, "x" * 201, "ab_9", "Ab", "a-b", "a\n", "\na", "é", "a" * 64, "a" * 65, "9a",
    [], [1], {}, {"k": "v"},
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=210),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
field_values = st.sampled_from(EDGE_VALUES) | json_values
field_names = st.sampled_from(sorted(VALID)) | st.text(max_size=8)


@st.composite
def documents(draw):
    if draw(st.integers(0, 19)) == 0:  # now and then not an object at all
        return draw(field_values)
    doc = dict(VALID)
    for _ in range(draw(st.integers(0, 3))):
        name = draw(field_names)
        if draw(st.booleans()):
            doc.pop(name, None)
        else:
            doc[name] = draw(field_values)
    return doc


def both_ways(payload: bytes):
    fast = parse_alert(payload, SOURCE)
    alerts._FAST_PATH_ON = False  # not monkeypatch: hypothesis runs many examples per fixture
    try:
        slow = parse_alert(payload, SOURCE)
    finally:
        alerts._FAST_PATH_ON = True
    return fast, slow


@settings(max_examples=3000, deadline=None)
@given(doc=documents())
def test_fast_path_changes_no_result(doc):
    payload = json.dumps(doc).encode("utf-8")  # the standard library writes ints of any size
    fast, slow = both_ways(payload)
    assert fast == slow
    assert type(fast) is type(slow)


@pytest.mark.parametrize("name", sorted(VALID))
@pytest.mark.parametrize("value", EDGE_VALUES, ids=repr)
def test_every_edge_value_in_every_field(name, value):
    payload = json.dumps({**VALID, name: value}).encode("utf-8")
    fast, slow = both_ways(payload)
    assert fast == slow


def test_fast_path_is_on_for_the_shipped_schema():
    # If the schema file changes, the fast path switches off (correct, but slow): update it.
    assert alerts._FAST_PATH_ON
    assert alerts._plain_alert(dict(VALID)) is not None
