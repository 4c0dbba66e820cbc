"""A person's erasure (a decision of kind erasure, written by `python -m sinks.privacy erase`): the
job forgets the user's keyed state, their ledger, seen ids, incidents and pending reviews.

A ban or suspension in force can be kept (the record's keep_ban, the default): then the state
holds nothing but that flag, the user version (so the applier keeps ordering this user's
records) and no id, incident or strike. The keyed state stays under the user id, which is what
lets the ban apply to the same account; docs/privacy.md says why that is kept.

No output record: the erasure command writes the audit entry, without personal data; a record
from here would carry the user id again.
"""

from __future__ import annotations

from connectors.decisions import Decision
from rules.ledger import UserState


def erase(state: UserState | None, decision: Decision) -> tuple[UserState | None, list[str]]:
    """What is left of the user (None: nothing; else a state that replaces all they had) and the
    events to count."""
    t = decision.event_time_ms
    suspended_until_ms = state.suspended_until_ms if state is not None and state.suspended_until_ms > t else 0
    if state is None or not decision.keep_ban or not (state.banned or suspended_until_ms):
        return None, ["erasures"]
    bare = UserState(user_version=state.user_version, banned=state.banned, suspended_until_ms=suspended_until_ms)
    return bare, ["erasures", "erasures_ban_kept"]
