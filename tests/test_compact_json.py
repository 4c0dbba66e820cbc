"""rules.compact_json writes compact JSON: the same value json.loads reads back, and the same
text json.dumps writes with the job's options except where its docstring says."""

from __future__ import annotations

import json

import pytest

from devtools.generator import AlertGenerator
from rules import compact_json
from rules.simulate import run

from .conftest import T0_MS

# Values whose text is exactly json.dumps's.
SAME_TEXT = [
    None, True, False, 0, -7, 2**63 - 1, -(2**63), 10**30, 0.1, 1.5e300, 0.25, -0.0,
    "", "plain", 'quote " and \\ backslash', "tab\tnewline\n\x00\x1f",
    [], {}, (), [1, "a", None], (1, (2, [3])), {"b": 1, "a": {"d": [], "c": {}}}, {"z": 1, "A": 3},
    {"nested": [{"k": 0.25, "j": None}, ["x", {"y": True}]]},
]
# Values whose text differs from json.dumps's but reads back as the same value.
SAME_VALUE = ["é ünïcode 日本 \U0001f600", {"z": 1, "é": 2, "A": 3}, 1e-7, 1e16, "del \x7f"]


def dumps(value, sort_keys):
    return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys)


@pytest.mark.parametrize("sort_keys", [False, True])
@pytest.mark.parametrize("value", SAME_TEXT, ids=repr)
def test_same_text_as_json_dumps(value, sort_keys):
    assert compact_json.encoder(sort_keys)(value) == dumps(value, sort_keys)


@pytest.mark.parametrize("sort_keys", [False, True])
@pytest.mark.parametrize("value", SAME_VALUE, ids=repr)
def test_same_value_as_json_dumps(value, sort_keys):
    text = compact_json.encoder(sort_keys)(value)
    assert json.loads(text) == json.loads(dumps(value, sort_keys))


def test_text_outside_ascii_is_utf8_not_escaped():
    assert compact_json.encoder()({"name": "é日\U0001f600"}) == '{"name":"é日\U0001f600"}'


def test_keys_sorted_by_code_point_as_json_dumps():
    value = {"b": 1, "a": 2, "B": 3, "é": 4, "aa": 5}
    assert list(json.loads(compact_json.encoder(True)(value))) == ["B", "a", "aa", "b", "é"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=repr)
def test_non_finite_floats_become_null(value):
    # JSON has no NaN or infinity; json.dumps writes tokens no strict reader accepts.
    assert compact_json.encoder()({"x": value}) == '{"x":null}'


@pytest.mark.parametrize("value", [{2: "b", 1: "a"}, 2**64, -(2**63) - 1, {"big": 10**40}, "lone \ud800"], ids=repr)
def test_what_orjson_refuses_is_written_as_json_dumps_writes_it(value):
    assert compact_json.encoder(True)(value) == dumps(value, True)


def test_same_text_for_every_record_the_core_produces(policy):
    lines = list(AlertGenerator(seed=11, users=100, start_ms=T0_MS, step_ms=600_000).payloads(2000))
    records = [json.loads(line)["record"] for line in run(policy, lines, order="input")]
    encode = compact_json.encoder(sort_keys=True)
    assert len(records) > 1000
    for record in records:
        assert encode(record) == dumps(record, True)


@pytest.mark.parametrize("value", [object(), {1j: 1}, b"bytes", {1, 2}], ids=repr)
def test_what_json_dumps_refuses_raises_type_error(value):
    with pytest.raises(TypeError):
        compact_json.encoder()(value)
