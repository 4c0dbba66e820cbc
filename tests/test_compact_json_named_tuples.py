"""compact_json.encoder(named_tuples=True), the state's encoder: NamedTuples come out as the arrays
of their fields, byte for byte what copying each into a list first wrote (rules/ledger.py did)."""

from __future__ import annotations

import json
from typing import NamedTuple

from hypothesis import given
from hypothesis import strategies as st

from rules import compact_json
from rules.ledger import ExpiryQueue, Incident, Strike, UserState

encode = compact_json.encoder(named_tuples=True)
plain = compact_json.encoder()


class Pair(NamedTuple):
    name: str
    value: object


texts = st.text(max_size=12)
ints = st.integers(-(2**63), 2**63 - 1)


@given(st.lists(st.tuples(texts, st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=False), texts,
                                           st.lists(ints, max_size=3).map(tuple)))))
def test_named_tuples_are_their_fields(pairs):
    value = [Pair(*pair) for pair in pairs]
    as_lists = [[pair.name, list(pair.value) if isinstance(pair.value, tuple) else pair.value] for pair in value]
    assert encode(value) == plain(as_lists)


@given(ints, st.booleans(), st.lists(st.tuples(texts, ints), max_size=4))
def test_ledger_value_as_before(version, banned, strikes):
    state = UserState(user_version=version, banned=banned,
                      strikes=tuple(Strike(f"inc_{name}", "cat", name, 1, at, at + 5, "r") for name, at in strikes),
                      queues=(ExpiryQueue(1, 3, 7), ExpiryQueue()))
    before = plain([4, state.user_version, state.banned, state.suspended_until_ms,
                    [list(s) for s in state.strikes], state.sanction_incident, state.incident_seq,
                    [list(q) for q in state.queues]])
    assert state.encode() == before


def test_incident_as_before():
    incident = Incident("inc_1", "s-1", "spam", 5, "review", "r-1", ("a-1", "a-2"), 0.75, 9, 2)
    assert encode(incident) == plain([*incident[:6], list(incident.alert_ids), *incident[7:]])
    assert json.loads(encode(incident)) == [*incident[:6], ["a-1", "a-2"], *incident[7:]]


def test_what_orjson_refuses_still_falls_back():
    big = 2**70  # past 64 bits: the standard library writes it
    assert encode([Pair("x", big)]) == f'[["x",{big}]]'
