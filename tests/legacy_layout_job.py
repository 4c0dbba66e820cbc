"""The penalty job storing user state the way jobs before state format 4 did, for the upgrade test
(tests/test_stack_state_migration.py): the ledger in a ValueState "user-state" (format 3) and the
four maps in MapStates "user-<map>", an entry per call. Everything else is the current job.

    python tests/legacy_layout_job.py [penalty_job flags]

Run as a script: cloudpickle ships the classes below by value to the TaskManager's Python.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs import penalty_job, pipeline
from jobs.operators import PenaltyFunction
from jobs.user_store import (
    LEGACY_LEDGER_STATE,
    LEGACY_MAP_STATES,
    CachedMap,
    CachedUser,
)
from rules import ledger


class LegacyUsers:
    """Format-3 storage with the current store's interface (load, store, clear); no cache. Writes go
    to Flink at once, under the user's key (`switch` points the keyed backend at it)."""

    def __init__(self, ledger_state, maps: dict, incident_window_ms: int, switch):
        self.ledger, self.maps, self.incident_window_ms = ledger_state, maps, incident_window_ms
        self.switch, self.user_id = switch, None

    def load(self, user_id: str) -> CachedUser:
        self.switch(user_id)
        self.user_id = user_id
        text = self.ledger.value()
        maps = {name: CachedMap(self.maps[name], ledger.CODECS[name][1], complete=not text) for name in ledger.MAP_NAMES}
        return CachedUser(ledger.UserState.decode(text, maps, self.incident_window_ms), maps)

    def store(self, cached: CachedUser, state: ledger.UserState) -> None:
        self.switch(self.user_id)

        def write(name, key, value):
            if value is ledger.DELETED:
                self.maps[name].remove(key)
            else:
                self.maps[name].put(key, ledger.CODECS[name][0](value))
            cached.maps[name].written(key, value)

        state.flush(write)
        text = state.encode()
        self.ledger.update("[3," + text[text.index(",") + 1:])
        cached.state = state.with_(**{name: ledger.Layered(cached.maps[name]) for name in ledger.MAP_NAMES})

    def clear(self, cached: CachedUser) -> None:
        self.switch(self.user_id)
        self.ledger.clear()
        for state in self.maps.values():
            state.clear()
        cached.state = None


class LegacyLayoutFunction(PenaltyFunction):
    def open(self, runtime_context):
        from pyflink.common import Types
        from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

        super().open(runtime_context)
        ledger_state = runtime_context.get_state(ValueStateDescriptor(LEGACY_LEDGER_STATE, Types.STRING()))
        maps = {name: runtime_context.get_map_state(MapStateDescriptor(state, Types.STRING(), Types.STRING()))
                for name, state in LEGACY_MAP_STATES.items()}
        self.users = LegacyUsers(ledger_state, maps, self.core_config.incident_window_ms, self.keys.switch)
        print("operator storing the format-3 layout", flush=True)  # the test checks the operator ran


if __name__ == "__main__":
    pipeline.PenaltyFunction = LegacyLayoutFunction
    sys.exit(penalty_job.main())
