"""Per-user state of the decision core: strike ledger, open incidents, seen alert ids, standing.

One compact value per user (Flink keyed state holds `encode()`'s string), immutable: the core
returns a new UserState instead of mutating. `next_wake_ms()` is the one timer the user needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import NamedTuple

STATE_FORMAT = 2  # bump with a migration in decode() when the layout changes


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
    retain_until_ms: int  # kept this long so late alerts of it still merge


@dataclass(frozen=True)
class UserState:
    user_version: int = 0  # last user_version put on an enforcement record
    banned: bool = False
    suspended_until_ms: int = 0
    strikes: tuple[Strike, ...] = ()
    incidents: tuple[Incident, ...] = ()
    seen: dict[str, int] = field(default_factory=dict)  # alert_id -> forget at (event time ms)
    sanction_incident: str = ""  # the incident whose rung set the current ban or suspension

    def is_empty_at(self, now_ms: int) -> bool:
        return (
            not self.banned
            and self.suspended_until_ms <= now_ms
            and not self.strikes
            and not self.incidents
            and not self.seen
        )

    def next_wake_ms(self) -> int | None:
        """Earliest event time at which something in this state expires."""
        times = [s.expires_at_ms for s in self.strikes if not s.voided]
        times += [i.retain_until_ms for i in self.incidents]
        if self.seen:
            times.append(min(self.seen.values()))
        if self.suspended_until_ms and not self.banned:
            times.append(self.suspended_until_ms)
        return min(times) if times else None

    def strike_points(self, categories: tuple[str, ...], at_ms: int) -> int:
        return sum(s.points for s in self.strikes if s.category in categories and s.active_at(at_ms))

    def summary(self, at_ms: int) -> dict:
        """What the audit trail shows of the ledger (before/after a decision)."""
        points: dict[str, int] = {}
        for s in self.strikes:
            if s.active_at(at_ms):
                points[s.category] = points.get(s.category, 0) + s.points
        return {
            "status": self.status_at(at_ms),
            "suspended_until_ms": self.suspended_until_ms if self.suspended_until_ms > at_ms else None,
            "strike_points": dict(sorted(points.items())),
            "active_strikes": sorted(s.incident_id for s in self.strikes if s.active_at(at_ms)),
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
        return replace(self, **changes)

    def encode(self) -> str:
        return json.dumps(
            [
                STATE_FORMAT,
                self.user_version,
                self.banned,
                self.suspended_until_ms,
                [list(s) for s in self.strikes],
                [list(i[:6]) + [list(i.alert_ids)] + list(i[7:]) for i in self.incidents],
                self.seen,
                self.sanction_incident,
            ],
            separators=(",", ":"),
        )

    @staticmethod
    def decode(text: str | None) -> UserState | None:
        if not text:
            return None
        fields = json.loads(text)
        fmt = fields[0]
        if fmt == 1:  # format 1 had no sanction_incident
            fields = [*fields, ""]
        elif fmt != STATE_FORMAT:
            raise ValueError(f"unknown user state format {fmt}")
        _, version, banned, until, strikes, incidents, seen, sanction = fields
        return UserState(
            user_version=version,
            banned=banned,
            suspended_until_ms=until,
            strikes=tuple(Strike(*s) for s in strikes),
            incidents=tuple(
                Incident(*i[:6], tuple(i[6]), *i[7:]) for i in incidents
            ),
            seen=seen,
            sanction_incident=sanction,
        )
