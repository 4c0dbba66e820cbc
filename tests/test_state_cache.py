"""The operator's read cache of user state (jobs/state_cache.py) against plain dicts standing in
for Flink state: what it answers from memory, what it reads, and that it never answers stale."""

from __future__ import annotations

from jobs.state_cache import UserStateCache
from rules.ledger import CODECS, DELETED, MAP_NAMES, UserState


class CountingMap:
    """A user's MapState of strings; counts reads (each is a JVM call in the job)."""

    def __init__(self):
        self.entries: dict[str, str] = {}
        self.reads = 0

    def get(self, key):
        self.reads += 1
        return self.entries.get(key)


def make_cache(max_users: int):
    maps = {name: CountingMap() for name in MAP_NAMES}
    ledger = {"text": None, "reads": 0}

    def read_ledger():
        ledger["reads"] += 1
        return ledger["text"]

    cache = UserStateCache(max_users, maps, {name: CODECS[name][1] for name in MAP_NAMES}, 60_000)
    return cache, maps, ledger, read_ledger


def write_step(cache, cached, maps, ledger, state: UserState) -> None:
    """What the operator's _apply does: write every change through, then keep the state."""
    def write(name, key, value):
        if value is DELETED:
            maps[name].entries.pop(key, None)
        else:
            maps[name].entries[key] = CODECS[name][0](value)
        cached.maps[name].written(key, value)

    state.flush(write)
    ledger["text"] = state.encode()
    cache.stored(cached, state)


def test_a_new_user_is_answered_from_memory_after_the_first_ledger_read():
    cache, maps, ledger, read_ledger = make_cache(10)
    cached = cache.load("u-1", read_ledger)
    assert cached.state is None and ledger["reads"] == 1
    state = UserState().remember("seen", "a-1", 1_000, 1_000)
    write_step(cache, cached, maps, ledger, state)

    again = cache.load("u-1", read_ledger)
    assert again is cached and ledger["reads"] == 1
    assert "a-1" in again.state.seen and "a-2" not in again.state.seen
    assert sum(m.reads for m in maps.values()) == 0  # complete maps: a miss is an answer
    assert maps["seen"].entries == {"a-1": "1000"}


def test_a_user_with_stored_state_reads_each_entry_once_then_from_memory():
    cache, maps, ledger, read_ledger = make_cache(10)
    maps["seen"].entries["a-1"] = "1000"
    ledger["text"] = UserState().remember("seen", "a-1", 1_000, 1_000).encode()
    cached = cache.load("u-1", read_ledger)
    assert "a-1" in cached.state.seen and "a-9" not in cached.state.seen
    assert maps["seen"].reads == 2
    assert "a-1" in cached.state.seen and "a-9" not in cached.state.seen
    assert maps["seen"].reads == 2


def test_writes_and_deletes_are_seen_through_the_cache():
    cache, maps, ledger, read_ledger = make_cache(10)
    cached = cache.load("u-1", read_ledger)
    state = UserState().remember("seen", "a-1", 1_000, 1_000)
    write_step(cache, cached, maps, ledger, state)
    forgotten = cache.load("u-1", read_ledger).state.forget_due(1_000)
    write_step(cache, cached, maps, ledger, forgotten)
    assert maps["seen"].entries == {}
    assert "a-1" not in cache.load("u-1", read_ledger).state.seen


def test_least_recently_used_users_are_evicted_and_read_back_from_state():
    cache, _maps, ledger, read_ledger = make_cache(2)
    for user in ("u-1", "u-2"):
        cache.load(user, read_ledger)
    cache.load("u-1", read_ledger)  # u-2 is now the oldest
    cache.load("u-3", read_ledger)
    assert list(cache.users) == ["u-1", "u-3"]
    reads = ledger["reads"]
    cache.load("u-2", read_ledger)
    assert ledger["reads"] == reads + 1


def test_a_cleared_user_starts_again_from_nothing_without_reads():
    cache, maps, ledger, read_ledger = make_cache(10)
    maps["seen"].entries["a-1"] = "1000"
    ledger["text"] = UserState().remember("seen", "a-1", 1_000, 1_000).encode()
    cached = cache.load("u-1", read_ledger)
    cache.cleared(cached)
    assert cache.load("u-1", read_ledger).state is None
    assert cached.maps["seen"].get("a-1") is None and maps["seen"].reads == 0


def test_size_zero_keeps_nothing():
    cache, _maps, ledger, read_ledger = make_cache(0)
    cache.load("u-1", read_ledger)
    cache.load("u-1", read_ledger)
    assert ledger["reads"] == 2 and not cache.users
