"""Where the keyed operator keeps each user's state, with a read cache in front (no pyflink import).

Layout (state format 4): one Flink MapState of strings per user, "user-entries", holds the
ledger under `LEDGER_KEY` and every entry of the core's four maps (rules/ledger.py) under a
one-letter prefix per map. A step's changes are written with one `put_all` (one call into the
JVM, one RocksDB write batch) plus one `remove` per forgotten entry, instead of one call per
entry and map; and a checkpoint's synchronous snapshot flushes one column family of user state
instead of five.

Jobs before this layout (format 3) kept the ledger in a ValueState "user-state" and the maps in
four MapStates "user-<map>". A user still stored that way is moved into "user-entries" the first
time the operator touches them (an alert, a decision or their timer), and the old states are
cleared: a restore from an older savepoint needs nothing else.

The read cache: each read of Flink keyed state from Python is a call into the JVM and, with
RocksDB, a lookup. Recently active users (repeat offenders, retries, several detectors on one
violation) keep their decoded ledger and the entries read or written so far in memory; every
change is still written to Flink state in the same step, so checkpoints hold exactly what they
would without the cache. That is only correct because this operator instance is the only writer
of its keys' state: a restore or rescale builds new operator instances, with empty caches. A user
first seen without stored state has maps that are *complete* in the cache (every entry written
since is in `known`), so a miss there is an answer, not a lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol

from rules.ledger import CODECS, DELETED, MAP_NAMES, Layered, UserState

ENTRIES_STATE = "user-entries"
LEDGER_KEY = "L"
# One letter per map; the ledger's key is a letter no map uses, so keys never collide.
ENTRY_PREFIX = {"seen": "s", "incidents": "i", "incident_slots": "j", "expiry": "e"}
LEGACY_LEDGER_STATE = "user-state"
LEGACY_MAP_STATES = {name: f"user-{name}" for name in MAP_NAMES}


class EntriesState(Protocol):
    """Flink MapState[str, str] of the current key, as the operator sees it."""

    def get(self, key: str) -> str | None: ...
    def put_all(self, entries: dict[str, str]) -> None: ...
    def remove(self, key: str) -> None: ...
    def clear(self) -> None: ...


class LegacyMap(Protocol):
    def items(self) -> Iterable[tuple[str, str]]: ...
    def clear(self) -> None: ...


class LegacyLedger(Protocol):
    def value(self) -> str | None: ...
    def clear(self) -> None: ...


class LegacyStates(NamedTuple):
    """The format-3 states of the current key: the ledger value and the four maps by name."""

    ledger: LegacyLedger
    maps: dict[str, LegacyMap]


class PrefixedView:
    """One of the core's maps inside the entries state (read side)."""

    __slots__ = ("prefix", "state")

    def __init__(self, state: EntriesState, prefix: str):
        self.state, self.prefix = state, prefix

    def get(self, key: str) -> str | None:
        return self.state.get(self.prefix + key)


# Entries one map of one cached user keeps in memory. Deciding an alert looks up its id in `seen`
# and up to three incident slots, so those maps are kept (for a user first seen in this subtask,
# completely: a miss is an answer). A repeat offender's maps grow with its history, so past this
# bound a map forgets what it knew and reads from state again (one lookup per miss). The expiry
# queue is only read when its entries come due (the timer), so it is never kept: a hot user's
# cache would otherwise hold two entries per alert that no alert reads.
MAX_KNOWN_ENTRIES = 20_000
UNCACHED_MAPS = ("expiry",)
_UNKNOWN: Any = object()  # CachedMap.known has no entry for the key


class CachedMap:
    """One map of one user: entries known in memory, the rest read from state on demand (decoded
    with the map's codec) unless the map is complete. A map that does not `keep` reads through
    every time and remembers nothing."""

    __slots__ = ("complete", "decode", "keep", "known", "state")

    def __init__(self, state: PrefixedView, decode: Callable[[str], Any], complete: bool, keep: bool = True):
        self.state, self.decode, self.keep = state, decode, keep
        self.complete = complete and keep
        self.known: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        # Most lookups miss (a new alert id, an empty incident slot): a lookup with a default
        # costs a fraction of a KeyError raised and caught.
        value = self.known.get(key, _UNKNOWN)
        if value is not _UNKNOWN:  # a value, or None: known to be absent
            return value
        if self.complete:
            return None
        text = self.state.get(key)
        value = None if text is None else self.decode(text)
        if self.keep:
            self.known[key] = value
            if len(self.known) > MAX_KNOWN_ENTRIES:
                self.forget()
        return value

    def forget(self) -> None:
        """Drop what is known; from now on every miss is read from state."""
        self.known = {}
        self.complete = False

    def written(self, key: str, value: Any) -> None:
        self.written_all({key: value})

    def written_all(self, changes: dict[str, Any]) -> None:
        """Entries just written (value or DELETED), in order."""
        if not self.keep:
            return
        known, complete = self.known, self.complete
        for key, value in changes.items():
            if value is not DELETED:
                known[key] = value
            elif complete:
                known.pop(key, None)  # complete: absent is an answer
            else:
                known[key] = None
        if len(known) > MAX_KNOWN_ENTRIES:
            self.forget()


# How each map of a user is cached, in MAP_NAMES order: (name, decode, keep), looked up once.
_MAP_SPECS = tuple((name, CODECS[name][1], name not in UNCACHED_MAPS) for name in MAP_NAMES)


def new_maps(views: dict[str, PrefixedView], complete: bool) -> dict[str, CachedMap]:
    """The cached maps of one user, nothing known yet (complete: the user has no stored state)."""
    return {name: CachedMap(views[name], decode, complete, keep) for name, decode, keep in _MAP_SPECS}


class CachedUser:
    """A user's state as stored, its maps, and its timer (`wake`, the stored state's next_wake_ms,
    kept so that a step asks the state once, not once before and once after)."""

    __slots__ = ("maps", "state", "views", "wake")

    def __init__(self, state: UserState | None, maps: dict[str, CachedMap]):
        self.state, self.maps = state, maps
        self.wake = state.next_wake_ms() if state is not None else None
        self.views = clean_views(maps)


def clean_views(maps: dict[str, CachedMap]) -> dict[str, Layered]:
    """A view with no changes over each map, made once per user instead of once per step: a
    Layered never changes (set and delete return new ones), so every step can start from these."""
    return {name: Layered(cached_map) for name, cached_map in maps.items()}


# What store() needs of each map, in MAP_NAMES order: (name, key prefix, value encoder, whether
# the cache keeps its entries).
_MAP_WRITES = tuple((name, ENTRY_PREFIX[name], CODECS[name][0], name not in UNCACHED_MAPS) for name in MAP_NAMES)


class UserStore:
    """The users of one operator subtask. `load`, `store` and `clear` act on the user whose keyed
    state `entries` (and `legacy`) currently point at: the operator calls them for the current key
    only. The cache keeps at most `max_users` users, least recently used out first (0: nothing is
    kept, every load reads state)."""

    def __init__(self, entries: EntriesState, max_users: int, incident_window_ms: int,
                 legacy: LegacyStates | None = None):
        self.entries, self.max_users, self.incident_window_ms = entries, max_users, incident_window_ms
        self.legacy = legacy
        self.views = {name: PrefixedView(entries, ENTRY_PREFIX[name]) for name in MAP_NAMES}
        self.users: OrderedDict[str, CachedUser] = OrderedDict()
        self.hits = self.misses = self.migrated = 0

    def load(self, user_id: str) -> CachedUser:
        cached = self.users.get(user_id)
        if cached is not None:
            self.users.move_to_end(user_id)
            self.hits += 1
            return cached
        self.misses += 1
        text = self.entries.get(LEDGER_KEY)
        if text is None and self.legacy is not None:
            text = self._move_legacy()
        maps = new_maps(self.views, complete=not text)
        cached = CachedUser(UserState.decode(text, maps, self.incident_window_ms), maps)
        if self.max_users > 0:
            self.users[user_id] = cached
            if len(self.users) > self.max_users:
                self.users.popitem(last=False)
        return cached

    def store(self, cached: CachedUser, state: UserState) -> None:
        """Write the step's changes and the ledger, then keep `state` as a clean view over the
        cached maps: every map becomes the user's view with no changes (a map the step did not
        change is the same entries either way; a step that started from no state built its maps
        over empty dicts, which never see the writes)."""
        maps, puts = cached.maps, {}
        # The loop of UserState.flush inlined: ~4 entries per alert, each a call less.
        for name, prefix, encode, keep in _MAP_WRITES:
            changes = getattr(state, name).changes
            if changes:
                for key, value in changes.items():
                    if value is DELETED:
                        self.entries.remove(prefix + key)
                    else:
                        puts[prefix + key] = encode(value)
                if keep:  # (an uncached map has nothing to learn)
                    maps[name].written_all(changes)
        puts[LEDGER_KEY] = state.encode()
        self.entries.put_all(puts)
        cached.state = state.with_(**cached.views)

    def clear(self, cached: CachedUser) -> None:
        """The user has nothing left: delete their state; the cache knows there is none."""
        self.entries.clear()
        cached.state = None
        cached.maps = new_maps(self.views, complete=True)
        cached.views = clean_views(cached.maps)

    def _move_legacy(self) -> str | None:
        """A format-3 user: copy the ledger and every map entry, as stored, into the entries state
        and clear the old states. Returns the ledger text (None: no such user)."""
        text = self.legacy.ledger.value()
        if not text:
            return None
        moved = {LEDGER_KEY: text}
        for name, old in self.legacy.maps.items():
            prefix = ENTRY_PREFIX[name]
            moved.update((prefix + key, value) for key, value in old.items())
            old.clear()
        self.legacy.ledger.clear()
        self.entries.put_all(moved)
        self.migrated += 1
        return text


def apply_step(users: UserStore, cached: CachedUser, step) -> tuple[int | None, int | None]:
    """Keep what a core step (rules.core.Step) left of the user: store its state, or clear the user
    when nothing is left. Returns the user's timer before and after the step (None: no timer): the
    one timer per user moves when they differ."""
    old_wake, state = cached.wake, step.state
    if state is cached.state:  # a retry, nothing changed
        return old_wake, old_wake
    if state is None or step.replaces:
        users.clear(cached)
    if state is None:
        new_wake = None
    else:
        users.store(cached, state)
        new_wake = state.next_wake_ms()
    cached.wake = new_wake
    return old_wake, new_wake
