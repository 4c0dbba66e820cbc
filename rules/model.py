"""The rule model: a validated policy as frozen dataclasses, and the vocabulary registry.

Nothing here reads files (see loader.py) or touches Flink. A Policy answers three questions
for the decision core: which category a violation type is in, which band a confidence falls in,
and which ladder rung a strike count reaches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Decisions in rank order: a later alert of one incident may only move an incident up this list.
DECISIONS = ("dismiss", "review", "enforce")
DECISION_RANK = {name: rank for rank, name in enumerate(DECISIONS)}
PRIORITIES = ("low", "normal", "high", "urgent")


@dataclass(frozen=True)
class ActionSpec:
    name: str
    param: str | None  # name of the one parameter, or None
    description: str
    on_review: bool  # may be used on a review band (applied before the moderator decides)


ACTIONS: dict[str, ActionSpec] = {
    spec.name: spec
    for spec in (
        ActionSpec("warning", None, "notify the streamer; the strike is recorded", False),
        ActionSpec("stop_stream", None, "end the live stream the violation happened on", True),
        ActionSpec("suspend", "duration", "no live streaming until event time + duration; "
                   "an existing suspension is only ever extended", False),
        ActionSpec("ban", None, "permanent ban; later violations only produce audit records", False),
    )
}
# `lift` is produced by appeals and review verdicts, never by a rule.
ENFORCEMENT_ACTIONS = ("warning", "stop_stream", "suspend", "ban", "lift")


@dataclass(frozen=True)
class Action:
    kind: str
    duration_ms: int | None = None

    def describe(self) -> str:
        return self.kind if self.duration_ms is None else f"{self.kind} {format_duration(self.duration_ms)}"


@dataclass(frozen=True)
class Band:
    id: str
    min_confidence: float
    decision: str
    priority: str = "normal"
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True)
class Rung:
    id: str
    min_strikes: int
    max_strikes: int | None  # None: open-ended, "N+"
    actions: tuple[Action, ...]

    def covers(self, strikes: int) -> bool:
        return strikes >= self.min_strikes and (self.max_strikes is None or strikes <= self.max_strikes)


@dataclass(frozen=True)
class Category:
    name: str
    types: tuple[str, ...]
    strike_expiry_ms: int
    points: int
    bands: tuple[Band, ...]  # highest min_confidence first, the last one at 0.0
    ladder: tuple[Rung, ...]
    counts_strikes_of: tuple[str, ...]  # categories whose active strikes this ladder counts

    def band_for(self, confidence: float) -> Band:
        for band in self.bands:
            if confidence >= band.min_confidence:
                return band
        return self.bands[-1]  # unreachable for a validated policy (last band is 0.0)

    def rung_for(self, strikes: int) -> Rung:
        for rung in self.ladder:
            if rung.covers(strikes):
                return rung
        return self.ladder[-1]


@dataclass(frozen=True)
class GuardLimits:
    """How much one detector may cause in a guard window (rules/guard.py): for alerts and for
    enforcements each, at most min(ceiling, max(floor, ratio x its average per window over the
    baseline)); only the ceiling while the detector has less than a full baseline of history."""
    ratio: float
    alerts_floor: int
    alerts_ceiling: int
    enforcements_floor: int
    enforcements_ceiling: int


@dataclass(frozen=True)
class GuardConfig:
    window_ms: int  # the sliding window the counts are over (whole minutes)
    baseline_ms: int  # the history before the window the average comes from (whole minutes)
    cool_down_ms: int  # how long a tripped detector must stay under its limits to be released
    default: GuardLimits
    detectors: tuple[tuple[str, GuardLimits], ...] = ()  # per detector id, instead of the default

    def limits_for(self, detector_id: str) -> GuardLimits:
        for name, limits in self.detectors:
            if name == detector_id:
                return limits
        return self.default


@dataclass(frozen=True)
class Policy:
    name: str
    version: str  # content hash of the YAML file: "sha256:<12 hex>"
    source: str  # file name it was loaded from
    categories: tuple[Category, ...]
    unknown_types: Band
    description: str = ""
    detector_guard: GuardConfig | None = None  # None: no guard
    _by_type: dict[str, Category] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self._by_type:
            for category in self.categories:
                for violation_type in category.types:
                    self._by_type[violation_type] = category

    def category_for(self, violation_type: str) -> Category | None:
        return self._by_type.get(violation_type)

    def category(self, name: str) -> Category | None:
        for category in self.categories:
            if category.name == name:
                return category
        return None


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(text: object) -> int | None:
    """'90d' / '24h' / '30m' / '15s' / '500ms' -> milliseconds; None if not a duration."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    for unit in ("ms", "s", "m", "h", "d"):
        if text.endswith(unit):
            number = text[: -len(unit)]
            if number.isdigit() and int(number) > 0:
                if unit == "s" and number.endswith("m"):
                    continue
                return int(number) * _UNITS_MS[unit]
    return None


def format_duration(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms % _UNITS_MS[unit] == 0:
            return f"{ms // _UNITS_MS[unit]}{unit}"
    return f"{ms}ms"
