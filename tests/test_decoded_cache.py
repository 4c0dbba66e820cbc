"""The operator's cache of decoded heavy user states: a hit only while the stored text is exactly
what was decoded (restores and rescaling stay correct), small states are never cached."""

from __future__ import annotations

from jobs.operators import DecodedCache
from rules.ledger import UserState


def heavy(n: int, version: int = 1) -> UserState:
    return UserState(user_version=version, seen={f"alert-{i}": 10_000 + i for i in range(n)})


def test_hit_only_for_identical_text_and_small_states_pass_through():
    cache = DecodedCache(min_bytes=1024, max_entries=2)
    text = heavy(100).encode()
    first = cache.load("u1", text)
    assert first == heavy(100) and cache.load("u1", text) is first
    changed = heavy(100, version=2).encode()  # e.g. restored from an older checkpoint
    assert cache.load("u1", changed).user_version == 2
    small = UserState(user_version=3).encode()
    assert cache.load("u2", small) == UserState(user_version=3) and "u2" not in cache.by_user
    assert cache.load("u3", None) is None


def test_written_states_are_remembered_and_the_oldest_is_evicted():
    cache = DecodedCache(min_bytes=1024, max_entries=2)
    for user in ("a", "b", "c"):
        state = heavy(100)
        cache.remember(user, state.encode(), state)
    assert list(cache.by_user) == ["b", "c"]
    state = heavy(100)
    text = state.encode()
    cache.remember("b", text, state)
    assert cache.load("b", text) is state
