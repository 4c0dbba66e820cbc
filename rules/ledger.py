"""Per-user state of the decision core: strike ledger, open incidents, seen alert ids, standing.

The state of one user is split so that deciding one alert costs the same whatever the user's
history (a repeat offender can have tens of thousands of alert ids inside the dedupe horizon):

- the ledger (`UserState` minus its maps): standing, strikes, counters; small, one value,
  `encode()`/`decode()` to compact JSON;
- four maps, read and written one entry at a time (`Layered`, rules/layered.py): `seen` alert and decision
  ids, `incidents` by slot, `incident_slots` (incident id -> slot) and `expiry`, two FIFO queues
  that say which entry to forget when.

Immutable from the core's point of view: a step returns a new UserState whose maps carry that
step's changes on top of the same base; the owner of the base (the Flink operator, or
`rules.simulate`) writes the changes through and starts the next step from a clean view.
`next_wake_ms()` is the one timer the user needs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import orjson

from rules import compact_json
from rules.layered import (  # the maps of the state; DELETED re-exported
    DELETED,
    Layered,
    MapBase,
)

# Bump with a migration when the layout changes. 4: the ledger fields of 3, stored with the maps'
# entries in one keyed map (jobs/user_store.py moves format-3 users over; 3 kept them apart).
STATE_FORMAT = 4
MAP_NAMES = ("seen", "incidents", "incident_slots", "expiry")
# Expiry queues: ids and incidents kept for the dedupe horizon, and incidents awaiting review (kept
# for the review retention, much longer: in one FIFO they would hold back everything behind them).
DEDUPE_QUEUE, REVIEW_QUEUE = 0, 1
class Strike(NamedTuple):
    incident_id: str
    category: str
    violation_type: str
    points: int
    event_time_ms: int
    expires_at_ms: int
    rule_id: str
    voided: bool = False

    def active_at(self, time_ms: int) -> bool:
        return not self.voided and self.event_time_ms <= time_ms < self.expires_at_ms


class Incident(NamedTuple):
    """One violation on one stream, however many detectors and retries reported it."""

    incident_id: str
    stream_id: str
    violation_type: str
    start_ms: int  # event time of the first alert
    decision: str  # the strongest decision so far: dismiss | review | enforce
    rule_id: str
    alert_ids: tuple[str, ...]
    max_confidence: float
    retain_until_ms: int  # kept at least this long so late alerts of it still merge
    seq: int = 0  # creation order among the user's incidents: the first match wins


class ExpiryQueue(NamedTuple):
    """Positions of one FIFO of `expiry` entries, and when its head is due."""

    head: int = 0
    tail: int = 0
    head_due_ms: int | None = None


class StrikeFacts(NamedTuple):
    """What every step asks of a user's strikes, worked out once per strikes tuple: the ledger is
    encoded and the next wake looked for on every step, but the strikes (a repeat offender has
    several) change only on enforcements, verdicts and expiries."""

    strikes: tuple[Strike, ...]  # the tuple these facts are of (compared by identity)
    earliest_expiry_ms: int | None  # of the strikes not voided
    json: orjson.Fragment | None  # the strikes as the ledger writes them; None: orjson cannot

    @staticmethod
    def of(strikes: tuple[Strike, ...]) -> StrikeFacts:
        earliest = None
        for s in strikes:
            if not s.voided and (earliest is None or s.expires_at_ms < earliest):
                earliest = s.expires_at_ms
        try:
            json_ = orjson.Fragment(orjson.dumps(strikes, list))
        except TypeError:
            json_ = None
        return StrikeFacts(strikes, earliest, json_)


def _grown(q: ExpiryQueue, due_ms: int) -> ExpiryQueue:
    """The queue with one more entry at its tail; an empty queue is next due when that entry is."""
    return ExpiryQueue(q.head, q.tail + 1, q.head_due_ms if q.head < q.tail else due_ms)


# State is encoded on every step: one encoder, built once. It writes the NamedTuples of the state
# (Strike, ExpiryQueue, Incident) as arrays of their fields, the layout they are stored in.
_compact = compact_json.encoder(named_tuples=True)


def _decode_incident(text: str) -> Incident:
    i = json.loads(text)
    return Incident(*i[:6], tuple(i[6]), *i[7:])


# How each map's values are stored (keys are strings as they are): (encode, decode).
CODECS = {
    "seen": (str, int),
    "incidents": (_compact, _decode_incident),  # an Incident as an array; alert_ids, a tuple, too
    "incident_slots": (str, str),
    "expiry": (_compact, lambda text: tuple(json.loads(text))),
}


def active_points(strikes: tuple[Strike, ...], categories: tuple[str, ...], at_ms: int) -> int:
    """Points of the strikes of `categories` active at at_ms: of a strikes tuple not yet in a state
    (an enforcement counts its own new strike before it copies the state)."""
    # Strike.active_at inlined: this runs on every enforced alert, over every strike.
    return sum(s.points for s in strikes
               if s.category in categories and not s.voided and s.event_time_ms <= at_ms < s.expires_at_ms)


def incident_slot(stream_id: str, violation_type: str, start_ms: int, window_ms: int) -> str:
    """Where an incident lives in `incidents`. Two incidents of one stream and type start at
    least a window apart (the later one would have joined the earlier), so a window-wide slot
    holds at most one, and an alert at t can only join the incidents of slots t-1, t, t+1."""
    return f"{stream_id}\x1f{violation_type}\x1f{start_ms // window_ms}"


def incident_slot_prefix(stream_id: str, violation_type: str) -> str:
    """incident_slot() is this + str(start_ms // window_ms): for looking at neighbouring slots."""
    return f"{stream_id}\x1f{violation_type}\x1f"


@dataclass(frozen=True)
class UserState:
    user_version: int = 0  # last user_version put on an enforcement record
    banned: bool = False
    suspended_until_ms: int = 0
    strikes: tuple[Strike, ...] = ()
    sanction_incident: str = ""  # the incident whose rung set the current ban or suspension
    incident_seq: int = 0  # incidents created so far
    queues: tuple[ExpiryQueue, ExpiryQueue] = (ExpiryQueue(), ExpiryQueue())
    seen: Layered = field(default_factory=Layered)  # alert/decision id -> forget at (event time ms)
    incidents: Layered = field(default_factory=Layered)  # incident_slot() -> Incident
    incident_slots: Layered = field(default_factory=Layered)  # incident id -> slot
    expiry: Layered = field(default_factory=Layered)  # "queue:position" -> (map, key, due_ms)

    # ------------------------------------------------------------------ maps
    def remember(self, map_name: str, key: str, value: Any, due_ms: int, queue: int = DEDUPE_QUEUE,
                 **also: Any) -> UserState:
        """Store key -> value in one map and queue its removal at (or after) due_ms; `also`: other
        fields to change in the same copy (a step makes one copy, not one per change)."""
        q = self.queues[queue]
        dedupe, review = self.queues
        grown = _grown(q, due_ms)
        also[map_name] = getattr(self, map_name).set(key, value)
        also["expiry"] = self.expiry.set(f"{queue}:{q.tail}", (map_name, key, due_ms))
        also["queues"] = (grown, review) if queue == DEDUPE_QUEUE else (dedupe, grown)
        return self.with_(**also)

    def remember_all(self, entries: tuple[tuple[str, str, Any, int, int], ...], **also: Any) -> UserState:
        """remember() of each (map_name, key, value, due_ms, queue) in order, in one copy (a new
        incident and its alert's id: one copy of the state and of the expiry changes, not two)."""
        return self.with_(**self.remembered(entries, **also))

    def remembered(self, entries: tuple[tuple[str, str, Any, int, int], ...], **also: Any) -> dict[str, Any]:
        """The fields remember_all() changes (with `also`), not yet copied into a state: for a step
        that has more to change and copies the state once at its end (rules/core.py)."""
        dedupe, review = self.queues
        expiry = self.expiry.changes.copy()
        touched: dict[str, Layered] = {}
        for map_name, key, value, due_ms, queue in entries:
            if queue == DEDUPE_QUEUE:
                q = dedupe
                dedupe = _grown(q, due_ms)
            else:
                q = review
                review = _grown(q, due_ms)
            expiry[f"{queue}:{q.tail}"] = (map_name, key, due_ms)
            touched[map_name] = (touched.get(map_name) or getattr(self, map_name)).set(key, value)
        also.update(touched)
        also["expiry"] = Layered(self.expiry.base, expiry)
        also["queues"] = (dedupe, review)
        return also

    def forget_due(self, now_ms: int) -> UserState:
        """Drop the queued entries due at or before now_ms, oldest first. An entry behind a later
        one waits for it: entries are kept at least until they are due, sometimes a bit longer
        (harmless: an alert that old is too late for dedupe anyway, see rules/core.py)."""
        state = self
        for number, q in enumerate(self.queues):
            head, changed = q.head, False
            maps = {name: getattr(state, name) for name in MAP_NAMES}
            due = q.head_due_ms
            while head < q.tail and due is not None and due <= now_ms:
                slot = f"{number}:{head}"
                entry = maps["expiry"].get(slot)
                if entry is None:  # cannot happen unless the maps were edited by hand: skip it
                    head += 1
                    nxt = maps["expiry"].get(f"{number}:{head}") if head < q.tail else None
                    due = nxt[2] if nxt is not None else None
                    continue
                map_name, key, _ = entry
                if map_name == "incidents":
                    incident = maps["incidents"].get(key)
                    if incident is not None:
                        maps["incident_slots"] = maps["incident_slots"].delete(incident.incident_id)
                maps[map_name] = maps[map_name].delete(key)
                maps["expiry"] = maps["expiry"].delete(slot)
                head += 1
                nxt = maps["expiry"].get(f"{number}:{head}") if head < q.tail else None
                due = nxt[2] if nxt is not None else None
                changed = True
            if changed:
                queues = list(state.queues)
                queues[number] = ExpiryQueue(head, q.tail, due) if head < q.tail else ExpiryQueue(head, head)
                state = state.with_(queues=tuple(queues), **maps)
        return state

    def incident_by_id(self, incident_id: str) -> Incident | None:
        slot = self.incident_slots.get(incident_id)
        return self.incidents.get(slot) if slot is not None else None

    def all_incidents(self) -> list[Incident]:
        """Every incident in creation order (dict-based maps only: tests, simulate)."""
        return sorted(self.incidents.as_dict().values(), key=lambda i: i.seq)

    def pending(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(map_name, {key: value or DELETED}) of every map this state changed, in MAP_NAMES order
        and each map's changes in the order they were made: what an owner of the bases writes."""
        for name in MAP_NAMES:
            changes = getattr(self, name).changes
            if changes:
                yield name, changes

    def flush(self, write: Callable[[str, str, Any], None]) -> UserState:
        """Hand every pending map change to write(map_name, key, value or DELETED), in order;
        returns the same state seen as written (a clean view over the same bases)."""
        for name, changes in self.pending():
            for key, value in changes.items():
                write(name, key, value)
        return self.with_(**{name: Layered(getattr(self, name).base) for name in MAP_NAMES})

    def flush_to_dicts(self) -> UserState:
        """flush() into dict bases (simulate): the bases are the user's stored maps."""
        def write(name: str, key: str, value: Any) -> None:
            base = getattr(self, name).base
            if value is DELETED:
                base.pop(key, None)
            else:
                base[key] = value
        return self.flush(write)

    # ------------------------------------------------------------- standing
    @staticmethod
    def empty() -> UserState:
        """UserState(), made as a copy of one empty state with maps of its own: the generated
        __init__ of a frozen dataclass sets each field through object.__setattr__, and every
        alert of a user new to the operator starts from an empty state."""
        return _EMPTY.with_(seen=Layered(), incidents=Layered(), incident_slots=Layered(), expiry=Layered())

    def is_empty_at(self, now_ms: int) -> bool:
        return (
            not self.banned
            and self.suspended_until_ms <= now_ms
            and not self.strikes
            and all(q.head == q.tail for q in self.queues)
        )

    def next_wake_ms(self) -> int | None:
        """Earliest event time at which something in this state expires."""
        wake = self._strike_facts().earliest_expiry_ms
        for q in self.queues:
            due = q.head_due_ms
            if q.head < q.tail and due is not None and (wake is None or due < wake):
                wake = due
        until = self.suspended_until_ms
        if until and not self.banned and (wake is None or until < wake):
            wake = until
        return wake

    def _strike_facts(self) -> StrikeFacts:
        """StrikeFacts of this state's strikes. Kept beside the tuple they were worked out from:
        copies of the state (with_) carry them along until a step replaces the tuple."""
        facts = self.__dict__.get("_facts")
        if facts is None or facts.strikes is not self.strikes:
            facts = StrikeFacts.of(self.strikes)
            self.__dict__["_facts"] = facts
        return facts

    def strike_points(self, categories: tuple[str, ...], at_ms: int) -> int:
        return active_points(self.strikes, categories, at_ms)

    def summary(self, at_ms: int) -> dict:
        """What the audit trail shows of the ledger (before/after a decision)."""
        points: dict[str, int] = {}
        active: list[str] = []
        for s in self.strikes:  # one pass, Strike.active_at inlined (twice per decision)
            if not s.voided and s.event_time_ms <= at_ms < s.expires_at_ms:
                category = s.category
                points[category] = points.get(category, 0) + s.points
                active.append(s.incident_id)
        active.sort()
        until = self.suspended_until_ms
        return {
            # status_at() inlined
            "status": "banned" if self.banned else "suspended" if until > at_ms else "active",
            "suspended_until_ms": until if until > at_ms else None,
            "strike_points": dict(sorted(points.items())) if len(points) > 1 else points,
            "active_strikes": active,
        }

    def strike_summary(self, at_ms: int) -> dict:
        """The strike part of summary(): exact at any event time, whatever arrived since (a
        timer may fire after alerts with later event times changed status or suspension)."""
        full = self.summary(at_ms)
        return {"strike_points": full["strike_points"], "active_strikes": full["active_strikes"]}

    def status_at(self, at_ms: int) -> str:
        if self.banned:
            return "banned"
        return "suspended" if self.suspended_until_ms > at_ms else "active"

    def with_(self, **changes) -> UserState:
        """A copy with some fields changed. dataclasses.replace re-runs __init__ and costs ~3 us;
        a step makes several copies, so copy the fields directly (names still checked)."""
        if not _USER_STATE_FIELDS.issuperset(changes):
            raise TypeError(f"UserState has no field(s) {sorted(changes.keys() - _USER_STATE_FIELDS)}")
        new = object.__new__(UserState)
        fields = new.__dict__
        fields.update(self.__dict__)
        fields.update(changes)
        return new

    # ----------------------------------------------------------- encoding
    def encode(self) -> str:
        """The ledger value (the maps are written entry by entry, see CODECS)."""
        strikes = self._strike_facts().json
        try:
            if strikes is not None:
                return orjson.dumps([STATE_FORMAT, self.user_version, self.banned, self.suspended_until_ms,
                                     strikes, self.sanction_incident, self.incident_seq, self.queues], list).decode()
        except TypeError:
            pass
        # What orjson cannot write: the whole value as _compact writes it.
        return _compact([STATE_FORMAT, self.user_version, self.banned, self.suspended_until_ms,
                         self.strikes, self.sanction_incident, self.incident_seq, self.queues])

    @staticmethod
    def decode(text: str | None, bases: dict[str, MapBase] | None = None,
               incident_window_ms: int = 60_000) -> UserState | None:
        """The ledger value read back over the user's stored maps (`bases`, by MAP_NAMES).
        Formats 1 and 2 held everything in the one value: they come back with their ids and
        incidents as pending changes, so the first write moves them into the maps."""
        if not text:
            return None
        fields = json.loads(text)
        fmt = fields[0]
        maps = {name: Layered((bases or {}).get(name)) for name in MAP_NAMES}
        if fmt in (3, STATE_FORMAT):
            _, version, banned, until, strikes, sanction, seq, queues = fields
            return UserState(
                user_version=version, banned=banned, suspended_until_ms=until,
                strikes=tuple(Strike(*s) for s in strikes), sanction_incident=sanction, incident_seq=seq,
                queues=tuple(ExpiryQueue(*q) for q in queues), **maps,
            )
        if fmt == 1:  # format 1 had no sanction_incident
            fields = [*fields, ""]
        elif fmt != 2:
            raise ValueError(f"unknown user state format {fmt}")
        _, version, banned, until, strikes, incidents, seen, sanction = fields
        state = UserState(user_version=version, banned=banned, suspended_until_ms=until,
                          strikes=tuple(Strike(*s) for s in strikes), sanction_incident=sanction, **maps)
        for alert_id, forget_ms in seen.items():
            state = state.remember("seen", alert_id, forget_ms, forget_ms)
        for number, i in enumerate(incidents):
            incident = Incident(*i[:6], tuple(i[6]), *i[7:9], number)
            slot = incident_slot(incident.stream_id, incident.violation_type, incident.start_ms, incident_window_ms)
            queue = REVIEW_QUEUE if incident.decision == "review" else DEDUPE_QUEUE
            state = state.remember("incidents", slot, incident, incident.retain_until_ms, queue)
            state = state.with_(incident_slots=state.incident_slots.set(incident.incident_id, slot))
        return state.with_(incident_seq=len(incidents))


_USER_STATE_FIELDS = frozenset(f.name for f in fields(UserState))
_EMPTY = UserState()  # what empty() copies; never handed out (its maps' bases are its own)
