"""rules.compact_json writes exactly what json.dumps writes with the job's options."""

from __future__ import annotations

import json

import pytest

from jobs.generator import AlertGenerator
from rules import compact_json
from rules.simulate import run

from .conftest import T0_MS

VALUES = [
    None, True, False, 0, -7, 10**30, 0.1, 1e-7, 1.5e300, float("nan"), float("inf"), float("-inf"),
    "", "plain", 'quote " and \\ backslash', "tab\tnewline\n\x00\x1f", "é ünïcode 日本 \U0001f600",
    [], {}, (), [1, "a", None], (1, (2, [3])), {"b": 1, "a": {"d": [], "c": {}}}, {"z": 1, "é": 2, "A": 3},
    {"nested": [{"k": 0.25, "j": None}, ["x", {"y": True}]]},
]


@pytest.mark.parametrize("sort_keys", [False, True])
@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_same_text_as_json_dumps(value, sort_keys):
    expected = json.dumps(value, separators=(",", ":"), sort_keys=sort_keys)
    assert compact_json.encoder(sort_keys)(value) == expected


def test_same_text_for_every_record_the_core_produces(policy):
    lines = list(AlertGenerator(seed=11, users=100, start_ms=T0_MS, step_ms=600_000).payloads(2000))
    records = [json.loads(line)["record"] for line in run(policy, lines, order="input")]
    encode = compact_json.encoder(sort_keys=True)
    assert len(records) > 1000
    for record in records:
        assert encode(record) == json.dumps(record, separators=(",", ":"), sort_keys=True)


@pytest.mark.parametrize("value", [object(), {1j: 1}, b"bytes", {1, 2}], ids=repr)
def test_what_json_dumps_refuses_raises_type_error(value):
    with pytest.raises(TypeError):
        compact_json.encoder()(value)


def test_integer_keys_become_strings_as_in_json_dumps():
    assert compact_json.encoder(True)({2: "b", 1: "a"}) == json.dumps({2: "b", 1: "a"}, separators=(",", ":"),
                                                                        sort_keys=True)
