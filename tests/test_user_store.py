"""Where the operator keeps user state (jobs/user_store.py), against plain dicts standing in for
Flink state: the one-map layout, the read cache (what it answers from memory, what it reads, never
stale) and the move of users stored in the older layout."""

from __future__ import annotations

import json
from collections import Counter

from jobs.user_store import ENTRY_PREFIX, LEDGER_KEY, LegacyStates, UserStore
from rules.ledger import CODECS, MAP_NAMES, Incident, UserState

from .conftest import T0_MS


class FakeMapState:
    """One user's MapState of strings; counts calls (each is a JVM call in the job)."""

    def __init__(self, entries: dict[str, str] | None = None):
        self.entries: dict[str, str] = dict(entries or {})
        self.calls: Counter[str] = Counter()

    def get(self, key):
        self.calls["get"] += 1
        return self.entries.get(key)

    def put_all(self, entries):
        self.calls["put_all"] += 1
        self.entries.update(entries)

    def remove(self, key):
        self.calls["remove"] += 1
        self.entries.pop(key, None)

    def items(self):
        self.calls["items"] += 1
        return list(self.entries.items())

    def clear(self):
        self.calls["clear"] += 1
        self.entries.clear()


class FakeValueState:
    def __init__(self, text: str | None = None):
        self.text, self.calls = text, Counter()

    def value(self):
        self.calls["value"] += 1
        return self.text

    def clear(self):
        self.calls["clear"] += 1
        self.text = None


def make_store(max_users: int = 10, legacy: LegacyStates | None = None):
    entries = FakeMapState()
    return UserStore(entries, max_users, 60_000, legacy), entries


def incident(n: int) -> Incident:
    return Incident(f"inc-{n}", f"s-{n}", "hate_speech", T0_MS, "review", "standard-review", (f"a-{n}",), 0.7,
                    T0_MS + 10**9, n)


def some_history() -> UserState:
    """A user with seen ids, an incident (and its slot) and queued expiries, as one step leaves it."""
    state = UserState(user_version=7).remember("seen", "a-1", T0_MS + 1_000, T0_MS + 1_000)
    state = state.remember("seen", "a-2", T0_MS + 2_000, T0_MS + 2_000)
    state = state.remember("incidents", "slot-1", incident(1), T0_MS + 5_000, queue=1)
    return state.with_(incident_slots=state.incident_slots.set("inc-1", "slot-1"), incident_seq=1)


def test_one_step_is_one_put_all_of_every_change_and_the_ledger():
    store, entries = make_store()
    cached = store.load("u-1")
    assert cached.state is None and entries.calls == {"get": 1}
    state = some_history()
    store.store(cached, state)
    assert entries.calls == {"get": 1, "put_all": 1}
    assert entries.entries[LEDGER_KEY] == state.encode()
    assert entries.entries["sa-1"] == str(T0_MS + 1_000) and entries.entries["jinc-1"] == "slot-1"
    assert CODECS["incidents"][1](entries.entries["islot-1"]) == incident(1)
    assert sum(key.startswith(ENTRY_PREFIX["expiry"]) for key in entries.entries) == 3


def test_a_new_user_is_answered_from_memory_after_the_first_ledger_read():
    store, entries = make_store()
    cached = store.load("u-1")
    store.store(cached, UserState().remember("seen", "a-1", 1_000, 1_000))
    again = store.load("u-1")
    assert again is cached
    assert "a-1" in again.state.seen and "a-2" not in again.state.seen
    assert entries.calls["get"] == 1  # complete maps: a miss is an answer


def test_a_user_with_stored_state_reads_each_entry_once_then_from_memory():
    writer, entries = make_store()
    writer.store(writer.load("u-1"), some_history())
    store = UserStore(entries, 10, 60_000)  # a new subtask instance: empty cache
    entries.calls.clear()
    cached = store.load("u-1")
    assert cached.state.seen.get("a-1") == T0_MS + 1_000 and "a-9" not in cached.state.seen
    assert cached.state.incident_by_id("inc-1") == incident(1)
    assert entries.calls == {"get": 5}  # ledger, a-1, a-9, the slot, the incident
    assert "a-1" in store.load("u-1").state.seen and entries.calls == {"get": 5}


def test_writes_and_deletes_are_seen_through_the_cache():
    store, entries = make_store()
    cached = store.load("u-1")
    store.store(cached, UserState().remember("seen", "a-1", 1_000, 1_000))
    forgotten = store.load("u-1").state.forget_due(1_000)
    store.store(cached, forgotten)
    assert entries.calls["remove"] == 2  # the id and its expiry entry
    assert list(entries.entries) == [LEDGER_KEY]
    assert "a-1" not in store.load("u-1").state.seen


def test_least_recently_used_users_are_evicted_and_read_back_from_state():
    store, entries = make_store(max_users=2)
    for user in ("u-1", "u-2"):
        store.load(user)
    store.load("u-1")  # u-2 is now the oldest
    store.load("u-3")
    assert list(store.users) == ["u-1", "u-3"]
    reads = entries.calls["get"]
    store.load("u-2")
    assert entries.calls["get"] == reads + 1


def test_a_cleared_user_starts_again_from_nothing_without_reads():
    store, entries = make_store()
    cached = store.load("u-1")
    store.store(cached, some_history())
    store.clear(cached)
    assert entries.entries == {} and entries.calls["clear"] == 1
    reads = entries.calls["get"]
    assert store.load("u-1").state is None
    assert cached.maps["seen"].get("a-1") is None and entries.calls["get"] == reads


def test_size_zero_keeps_nothing():
    store, entries = make_store(max_users=0)
    store.load("u-1")
    store.load("u-1")
    assert entries.calls["get"] == 2 and not store.users


def legacy_layout(state: UserState) -> LegacyStates:
    """What jobs before format 4 stored for `state`: a ledger value and four maps."""
    state = state.flush_to_dicts()
    fmt3 = state.encode().replace("[4,", "[3,", 1)
    maps = {name: FakeMapState({key: CODECS[name][0](value) for key, value in getattr(state, name).base.items()})
            for name in MAP_NAMES}
    return LegacyStates(FakeValueState(fmt3), maps)


def test_a_user_in_the_older_layout_is_moved_on_first_touch_and_decides_the_same():
    original = some_history()
    legacy = legacy_layout(original)
    store, entries = make_store(legacy=legacy)
    cached = store.load("u-1")
    assert store.migrated == 1
    assert legacy.ledger.text is None and all(not m.entries for m in legacy.maps.values())
    assert entries.calls["put_all"] == 1 and len(entries.entries) == 1 + 2 + 1 + 1 + 3
    assert cached.state.seen.get("a-2") == T0_MS + 2_000 and cached.state.incident_by_id("inc-1") == incident(1)
    assert cached.state.user_version == 7 and cached.state.queues == original.queues
    # The next step writes format 4, and a fresh instance reads it without touching the old states.
    store.store(cached, cached.state.remember("seen", "a-3", T0_MS + 3_000, T0_MS + 3_000))
    assert entries.entries[LEDGER_KEY].startswith("[4,")
    calls = legacy.ledger.calls["value"]
    fresh = UserStore(entries, 10, 60_000, legacy).load("u-1")
    assert legacy.ledger.calls["value"] == calls
    assert {key for key in ("a-1", "a-2", "a-3") if key in fresh.state.seen} == {"a-1", "a-2", "a-3"}


def test_a_format_2_ledger_in_the_older_layout_is_moved_too():
    """Format 2 held everything in the one value: it comes back with pending changes (ledger.py)."""
    incidents = [["inc-1", "s-1", "hate_speech", T0_MS, "review", "standard-review", ["a-1"], 0.7, T0_MS + 10**9]]
    ledger = json.dumps([2, 5, False, 0, [], incidents, {"a-1": T0_MS + 86_400_000}, ""])
    legacy = LegacyStates(FakeValueState(ledger), {name: FakeMapState() for name in MAP_NAMES})
    store, entries = make_store(legacy=legacy)
    cached = store.load("u-1")
    assert entries.entries == {LEDGER_KEY: ledger}
    assert "a-1" in cached.state.seen and cached.state.incident_by_id("inc-1").alert_ids == ("a-1",)
    store.store(cached, cached.state)
    assert entries.entries[LEDGER_KEY].startswith("[4,") and "sa-1" in entries.entries


def test_a_user_in_neither_layout_has_no_state():
    legacy = LegacyStates(FakeValueState(), {name: FakeMapState() for name in MAP_NAMES})
    store, entries = make_store(legacy=legacy)
    assert store.load("u-1").state is None and store.migrated == 0
    assert entries.calls == {"get": 1} and legacy.ledger.calls == {"value": 1}


def test_a_hot_users_cache_stays_bounded_and_still_answers_from_state():
    from jobs.user_store import MAX_KNOWN_ENTRIES

    store, entries = make_store()
    cached = store.load("u-1")
    for n in range(3 * MAX_KNOWN_ENTRIES):
        state = store.load("u-1").state or UserState()
        store.store(cached, state.remember("seen", f"a-{n}", T0_MS + n, T0_MS + n))
    maps = store.load("u-1").maps
    assert all(len(m.known) <= MAX_KNOWN_ENTRIES for m in maps.values())
    assert not maps["seen"].complete  # the forgotten part is read from state now
    state = store.load("u-1").state
    gets = entries.calls["get"]
    assert "a-0" in state.seen and "a-never" not in state.seen
    assert entries.calls["get"] == gets + 2  # both answers came from state
