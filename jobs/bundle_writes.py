"""Each user's keyed state and timer touched once per bundle, not once per record (no pyflink import).

The operator decides a bundle's records one by one, and a user often has several records in one
bundle (retries, several detectors on one violation, repeat offenders: on the bench's mix a bundle
of 2,000 records holds ~950 users). Every write of a step goes here instead of straight to Flink:
the last value of each entry, a clear, and the user's timer before and after the bundle. `flush()`
then points the keyed backend at each touched user once and writes what is left: one `put_all`,
the removes, at most one timer delete and one register. Reads go to Flink (after pointing the
backend at the user) unless this bundle already wrote the entry.

Nothing is held across calls: the operator flushes before it returns from each bundle and each
timer firing, so checkpoints (taken between calls) see every write, exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from rules.ledger import DELETED

_NO_TIMER: Any = object()  # a user's timer not yet seen in this bundle


class KeyedEntries(Protocol):
    """Flink MapState[str, str] of the backend's current key."""

    def get(self, key: str) -> str | None: ...
    def put_all(self, entries: dict[str, str]) -> None: ...
    def remove(self, key: str) -> None: ...
    def clear(self) -> None: ...


class TimerService(Protocol):
    def register_event_time_timer(self, time_ms: int) -> None: ...
    def delete_event_time_timer(self, time_ms: int) -> None: ...


class Pending:
    __slots__ = ("cleared", "entries", "timer_after", "timer_before")

    def __init__(self) -> None:
        self.cleared = False
        self.entries: dict[str, Any] = {}  # key -> text or DELETED, in write order
        self.timer_before: Any = _NO_TIMER
        self.timer_after: int | None = None


class BundleWrites:
    """The entries state (UserStore's `EntriesState`) and the timer moves of the users of one
    bundle. `user` is the user the next calls are about; `switch(user_id)` points the keyed
    backend at a user (state and timers)."""

    def __init__(self, state: KeyedEntries, switch: Callable[[str], None]):
        self.state, self.switch = state, switch
        self.user: str = ""
        self.pending: dict[str, Pending] = {}

    def _mine(self) -> Pending:
        pending = self.pending.get(self.user)
        if pending is None:
            pending = self.pending[self.user] = Pending()
        return pending

    # -- the entries state of `user`, as UserStore sees it
    def get(self, key: str) -> str | None:
        # Point the backend at the user even when the answer is pending here: UserStore may read
        # the user's older states (format 3) next, straight from Flink.
        self.switch(self.user)
        pending = self.pending.get(self.user)
        if pending is not None:
            if key in pending.entries:
                value = pending.entries[key]
                return None if value is DELETED else value
            if pending.cleared:
                return None
        return self.state.get(key)

    def put_all(self, entries: dict[str, str]) -> None:
        self._mine().entries.update(entries)

    def remove(self, key: str) -> None:
        self._mine().entries[key] = DELETED

    def clear(self) -> None:
        pending = self._mine()
        pending.cleared = True
        pending.entries.clear()

    # -- the user's one timer
    def move_timer(self, old_ms: int | None, new_ms: int | None) -> None:
        """The user's timer was at old_ms and is now wanted at new_ms (None: no timer)."""
        pending = self._mine()
        if pending.timer_before is _NO_TIMER:
            pending.timer_before = old_ms
        pending.timer_after = new_ms

    def flush(self, timers: TimerService) -> None:
        """Write every touched user's entries and timer, one user at a time."""
        for user_id, pending in self.pending.items():
            self.switch(user_id)
            state = self.state
            if pending.cleared:
                state.clear()
            puts = {}
            for key, value in pending.entries.items():
                if value is DELETED:
                    if not pending.cleared:
                        state.remove(key)
                else:
                    puts[key] = value
            if puts:
                state.put_all(puts)
            before = pending.timer_before
            if before is not _NO_TIMER and before != pending.timer_after:
                if before is not None:
                    timers.delete_event_time_timer(before)
                if pending.timer_after is not None:
                    timers.register_event_time_timer(pending.timer_after)
        self.pending.clear()
