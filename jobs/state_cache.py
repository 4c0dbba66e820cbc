"""A write-through read cache of users' state for the keyed operator (no pyflink import).

Each read of Flink keyed state from Python is a call into the JVM and, with RocksDB, a lookup:
the profile put ledger and map reads at a sixth of the operator's time. Recently active users
(repeat offenders, retries, several detectors on one violation) keep their decoded ledger and
the map entries read or written so far in memory; every change is still written to Flink state
in the same step, so checkpoints hold exactly what they held without the cache.

The cache is only correct because this operator instance is the only writer of its keys' state:
a restore or rescale builds new operator instances, with empty caches. A user first seen without
any stored state has maps that are *complete* in the cache (every entry written since is in
`known`), so a miss there is an answer, not a lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from rules.ledger import DELETED, MAP_NAMES, Layered, UserState


class MapState(Protocol):
    """Flink MapState of strings as the operator sees it (for the current key)."""

    def get(self, key: str) -> str | None: ...


class CachedMap:
    """One keyed map of one user: entries known in memory, the rest read from state on demand
    (decoded with the map's codec) unless the map is complete."""

    __slots__ = ("complete", "decode", "known", "state")

    def __init__(self, state: MapState, decode: Callable[[str], Any], complete: bool):
        self.state, self.decode, self.complete = state, decode, complete
        self.known: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        try:
            return self.known[key]
        except KeyError:
            pass
        if self.complete:
            return None
        text = self.state.get(key)
        value = None if text is None else self.decode(text)
        self.known[key] = value
        return value

    def written(self, key: str, value: Any) -> None:
        self.known[key] = None if value is DELETED else value


class CachedUser:
    __slots__ = ("maps", "state")

    def __init__(self, state: UserState | None, maps: dict[str, CachedMap]):
        self.state, self.maps = state, maps


class UserStateCache:
    """Least-recently-used users of one subtask, at most `max_users` (0: nothing is kept, every
    load reads state). `load` must be called with the user whose state the MapStates and
    `read_ledger` currently point at: the operator calls it for the current key only."""

    def __init__(self, max_users: int, maps: dict[str, MapState], decoders: dict[str, Callable[[str], Any]],
                 incident_window_ms: int):
        self.max_users = max_users
        self.maps, self.decoders = maps, decoders
        self.incident_window_ms = incident_window_ms
        self.users: OrderedDict[str, CachedUser] = OrderedDict()
        self.hits = self.misses = 0

    def load(self, user_id: str, read_ledger: Callable[[], str | None]) -> CachedUser:
        cached = self.users.get(user_id)
        if cached is not None:
            self.users.move_to_end(user_id)
            self.hits += 1
            return cached
        self.misses += 1
        text = read_ledger()
        maps = {name: CachedMap(self.maps[name], self.decoders[name], complete=not text) for name in MAP_NAMES}
        cached = CachedUser(UserState.decode(text, maps, self.incident_window_ms), maps)
        if self.max_users > 0:
            self.users[user_id] = cached
            if len(self.users) > self.max_users:
                self.users.popitem(last=False)
        return cached

    @staticmethod
    def stored(cached: CachedUser, state: UserState) -> None:
        """`state` was written to Flink state (its changes went through CachedMap.written): keep it
        as a clean view over the cached maps. (A step that started from no state built its maps
        over empty dicts, which never see the writes.)"""
        cached.state = state.with_(**{name: Layered(cached.maps[name]) for name in MAP_NAMES})

    @staticmethod
    def cleared(cached: CachedUser) -> None:
        """The user's state was deleted: nothing is stored any more."""
        cached.state = None
        for name, cached_map in cached.maps.items():
            cached.maps[name] = CachedMap(cached_map.state, cached_map.decode, complete=True)
