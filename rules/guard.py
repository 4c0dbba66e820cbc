"""The detector guard: a detector that suddenly flags far more than it used to cannot penalise
thousands of streamers before a human looks.

Pure and deterministic (no wall clock, no pyflink): the job's guard stage (jobs/guard_operator.py)
and `python -m rules simulate` call exactly this, alert by alert, in the order they process them.

Per detector, counted in one-minute buckets of event time:

- the window: the `window` (e.g. 10 minutes) ending with the latest minute the detector reached;
  it counts every valid alert of the detector (retries too) and its enforce-band alerts (those
  whose category and confidence pick an `enforce` band: the automatic penalties);
- the baseline: the `baseline` (e.g. 24 hours) of history before the window;
- the limit, for alerts and enforcements each: min(ceiling, max(floor, ratio x the detector's
  average per window over the baseline)); only the ceiling while the detector has less than a
  window plus a baseline of history (a new detector, or a new model under a new id).

An alert that takes either count over its limit trips the guard. While tripped, the detector's
enforce-band alerts go to urgent human review instead of penalising (rules/core.py), this alert
first. The guard is released once the detector has stayed under its limits for `cool_down` of
event time: checked at every alert of any detector (its window slides to that alert's minute),
or at once by an operator (`release`, which also starts its window afresh). Alerts older than the baseline behind the detector's
latest minute are not counted (they still get the detector's verdict).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import NamedTuple

from connectors.alerts import Alert
from rules import records
from rules.model import GuardConfig, GuardLimits, Policy
from rules.sections import GUARD_RULE_ID

BUCKET_MS = 60_000
ALERTS, ENFORCEMENTS = 0, 1


class Limits(NamedTuple):
    alerts: int
    enforcements: int


@dataclass
class DetectorCounts:
    """One detector's buckets and standing. `total` is the sum of every kept bucket (the window and
    the baseline), so the baseline is `total - window` without a walk over a day of buckets."""

    first_bucket: int
    latest_bucket: int
    buckets: dict[int, list[int]] = field(default_factory=dict)  # minute -> [alerts, enforcements]
    total: list[int] = field(default_factory=lambda: [0, 0])
    tripped_at_ms: int | None = None
    last_over_ms: int = 0  # event time of the latest alert that found the detector over a limit
    window: list[int] = field(default_factory=lambda: [0, 0])  # the sum of the window's buckets

    def encode_standing(self) -> str:
        """Everything but the buckets, which are stored one entry each (`encode_bucket`), so a
        step writes the minute it counted, not a day of buckets."""
        return json.dumps([self.first_bucket, self.latest_bucket, self.tripped_at_ms, self.last_over_ms],
                          separators=(",", ":"))

    def encode_bucket(self, bucket: int) -> str | None:
        """The bucket's counts, or None when it is gone."""
        slot = self.buckets.get(bucket)
        return None if slot is None else f"{slot[ALERTS]},{slot[ENFORCEMENTS]}"

    @classmethod
    def decode(cls, standing: str, buckets: dict[int, str], window: int) -> DetectorCounts:
        first, latest, tripped_at, last_over = json.loads(standing)
        counts = cls(first, latest, {}, [0, 0], tripped_at, last_over)
        for bucket, text in buckets.items():
            alerts, enforcements = map(int, text.split(","))
            counts.buckets[bucket] = [alerts, enforcements]
            counts.total[ALERTS] += alerts
            counts.total[ENFORCEMENTS] += enforcements
            if bucket > latest - window:
                counts.window[ALERTS] += alerts
                counts.window[ENFORCEMENTS] += enforcements
        return counts


class Verdict(NamedTuple):
    guarded: bool  # the alert's detector is tripped: no automatic penalty from this alert
    outputs: list[records.Output]  # trips and releases this alert caused (any detector)
    changes: list[tuple[str, bool]]  # (detector_id, tripped) for each trip and release, for the gauge


class DetectorGuard:
    """Every detector's counts. `dirty` collects, per detector whose standing changed since the
    owner last wrote it (the job's state), the buckets that changed or went."""

    def __init__(self, policy: Policy, config: GuardConfig):
        self.policy = policy
        self.config = config
        self.window = config.window_ms // BUCKET_MS
        self.baseline = config.baseline_ms // BUCKET_MS
        self.detectors: dict[str, DetectorCounts] = {}
        self.tripped: set[str] = set()
        self.dirty: dict[str, set[int]] = {}
        self._limits: dict[str, GuardLimits] = {}
        # Per violation type: the lowest confidence an enforce band starts at (bands are monotonic,
        # so every higher confidence enforces too); None: the type never enforces.
        self._enforce_from: dict[str, float | None] = {}
        for category in policy.categories:
            lowest = [b.min_confidence for b in category.bands if b.decision == "enforce"]
            for violation_type in category.types:
                self._enforce_from[violation_type] = min(lowest) if lowest else None

    @classmethod
    def of(cls, policy: Policy) -> DetectorGuard | None:
        return cls(policy, policy.detector_guard) if policy.detector_guard is not None else None

    # ------------------------------------------------------ the job's state
    # One string map: "s<detector>" -> its standing, "b<minute>\x1f<detector>" -> a bucket's counts.

    def take_writes(self) -> tuple[dict[str, str], list[str]]:
        """What changed since the last call, as map entries to put and keys to remove."""
        puts: dict[str, str] = {}
        removes: list[str] = []
        for detector_id, buckets in self.dirty.items():
            counts = self.detectors[detector_id]
            puts["s" + detector_id] = counts.encode_standing()
            for bucket in buckets:
                key = f"b{bucket}\x1f{detector_id}"
                text = counts.encode_bucket(bucket)
                if text is None:
                    removes.append(key)
                else:
                    puts[key] = text
        self.dirty.clear()
        return puts, removes

    def load_entries(self, entries) -> None:
        """Every detector from the map `take_writes` wrote (after a restore)."""
        standings: dict[str, str] = {}
        buckets: dict[str, dict[int, str]] = {}
        for key, value in entries:
            if key.startswith("s"):
                standings[key[1:]] = value
            else:
                bucket, _, detector_id = key[1:].partition("\x1f")
                buckets.setdefault(detector_id, {})[int(bucket)] = value
        for detector_id, standing in standings.items():
            counts = DetectorCounts.decode(standing, buckets.get(detector_id, {}), self.window)
            self.detectors[detector_id] = counts
            if counts.tripped_at_ms is not None:
                self.tripped.add(detector_id)

    # ---------------------------------------------------------------- alerts
    def on_alert(self, alert: Alert) -> Verdict:
        detector_id, t = alert.detector_id, alert.event_time_ms
        bucket = t // BUCKET_MS
        counts = self.detectors.get(detector_id)
        if counts is None:
            counts = self.detectors[detector_id] = DetectorCounts(bucket, bucket)
        self._advance(detector_id, counts, bucket)
        threshold = self._enforce_from.get(alert.violation_type)
        enforces = threshold is not None and alert.confidence >= threshold
        dirty = self.dirty.get(detector_id)
        if dirty is None:
            dirty = self.dirty[detector_id] = set()
        if bucket > counts.latest_bucket - self.window - self.baseline:
            dirty.add(bucket)
            slot = counts.buckets.get(bucket)
            if slot is None:
                slot = counts.buckets[bucket] = [0, 0]
            in_window = bucket > counts.latest_bucket - self.window
            slot[ALERTS] += 1
            counts.total[ALERTS] += 1
            if in_window:
                counts.window[ALERTS] += 1
            if enforces:
                slot[ENFORCEMENTS] += 1
                counts.total[ENFORCEMENTS] += 1
                if in_window:
                    counts.window[ENFORCEMENTS] += 1
        outputs: list[records.Output] = []
        changes: list[tuple[str, bool]] = []
        window, limits = self._window(counts), self.limits(detector_id, counts)
        over = window[ALERTS] > limits.alerts or window[ENFORCEMENTS] > limits.enforcements
        if over:
            counts.last_over_ms = max(counts.last_over_ms, t)
            if counts.tripped_at_ms is None:
                counts.tripped_at_ms = t
                self.tripped.add(detector_id)
                outputs += self._change(detector_id, "tripped", f"alert:{alert.alert_id}", t,
                                        {"alert_id": alert.alert_id, **self._figures(window, limits, counts)})
                changes.append((detector_id, True))
        if self.tripped:
            for other in sorted(self.tripped):
                if (other != detector_id or not over) and self._cooled(other, t):
                    outputs += self._release(other, t, f"cool_down:{alert.alert_id}", "cool_down")
                    changes.append((other, False))
        return Verdict(counts.tripped_at_ms is not None, outputs, changes)

    def _cooled(self, detector_id: str, t: int) -> bool:
        counts = self.detectors[detector_id]
        if t < counts.last_over_ms + self.config.cool_down_ms:
            return False
        self._advance(detector_id, counts, t // BUCKET_MS)  # time passed for it too, alerts or not
        window, limits = self._window(counts), self.limits(detector_id, counts)
        return window[ALERTS] <= limits.alerts and window[ENFORCEMENTS] <= limits.enforcements

    def release(self, detector_id: str, time_ms: int, operator_id: str) -> list[records.Output]:
        """An operator releases a tripped detector at once (nothing if it is not tripped). Its window
        is counted again from the release (what it sent before is what the operator judged; the
        baseline keeps none of it), so it trips again only on new evidence: over a limit with
        alerts after the release."""
        if detector_id not in self.tripped:
            return []
        counts = self.detectors[detector_id]
        self._advance(detector_id, counts, time_ms // BUCKET_MS)
        counts.last_over_ms = max(counts.last_over_ms, time_ms)
        outputs = self._release(detector_id, time_ms, f"operator:{operator_id}:{time_ms}", f"operator:{operator_id}")
        dirty = self.dirty[detector_id]
        for bucket in range(counts.latest_bucket - self.window + 1, counts.latest_bucket + 1):
            slot = counts.buckets.pop(bucket, None)
            if slot is not None:
                counts.total[ALERTS] -= slot[ALERTS]
                counts.total[ENFORCEMENTS] -= slot[ENFORCEMENTS]
                dirty.add(bucket)
        counts.window = [0, 0]
        return outputs

    def _release(self, detector_id: str, t: int, cause: str, by: str) -> list[records.Output]:
        counts = self.detectors[detector_id]
        detail = {"released_by": by, "tripped_at_ms": counts.tripped_at_ms,
                  **self._figures(self._window(counts), self.limits(detector_id, counts), counts)}
        counts.tripped_at_ms = None
        self.tripped.discard(detector_id)
        self.dirty.setdefault(detector_id, set())
        return self._change(detector_id, "released", cause, t, detail)

    # ----------------------------------------------------------------- counts
    def _advance(self, detector_id: str, counts: DetectorCounts, bucket: int) -> None:
        """Slide the detector's latest minute to `bucket` and forget the buckets that fall out of
        the baseline."""
        if bucket <= counts.latest_bucket:
            return
        # The buckets that leave the window (at most a window of them, looked up one by one).
        window, buckets = counts.window, counts.buckets
        for left in range(counts.latest_bucket - self.window + 1, min(bucket - self.window, counts.latest_bucket) + 1):
            slot = buckets.get(left)
            if slot is not None:
                window[ALERTS] -= slot[ALERTS]
                window[ENFORCEMENTS] -= slot[ENFORCEMENTS]
        counts.latest_bucket = bucket
        oldest = bucket - self.window - self.baseline
        stale = [b for b in counts.buckets if b <= oldest]
        # (Found by a walk over the buckets: once per minute a detector reaches, not per alert.)
        self.dirty.setdefault(detector_id, set()).update(stale)
        for b in stale:
            slot = counts.buckets.pop(b)
            counts.total[ALERTS] -= slot[ALERTS]
            counts.total[ENFORCEMENTS] -= slot[ENFORCEMENTS]

    def _window(self, counts: DetectorCounts) -> list[int]:
        return counts.window

    def limits(self, detector_id: str, counts: DetectorCounts) -> Limits:
        config = self._limits.get(detector_id)
        if config is None:
            config = self._limits[detector_id] = self.config.limits_for(detector_id)
        if counts.latest_bucket - counts.first_bucket + 1 < self.window + self.baseline:
            return Limits(config.alerts_ceiling, config.enforcements_ceiling)  # no full baseline yet
        window = self._window(counts)
        base = (counts.total[ALERTS] - window[ALERTS], counts.total[ENFORCEMENTS] - window[ENFORCEMENTS])
        scale = config.ratio * self.window / self.baseline  # ratio x (per window = baseline count x W / B)
        return Limits(min(config.alerts_ceiling, max(config.alerts_floor, int(base[ALERTS] * scale))),
                      min(config.enforcements_ceiling, max(config.enforcements_floor, int(base[ENFORCEMENTS] * scale))))

    def _figures(self, window: list[int], limits: Limits, counts: DetectorCounts) -> dict:
        return {"window_ms": self.config.window_ms, "window_end_ms": (counts.latest_bucket + 1) * BUCKET_MS,
                "alerts": window[ALERTS], "alert_limit": limits.alerts,
                "enforcements": window[ENFORCEMENTS], "enforcement_limit": limits.enforcements}

    def _change(self, detector_id: str, outcome: str, cause: str, t: int, detail: dict) -> list[records.Output]:
        return records.guard_change(detector_id=detector_id, outcome=outcome, cause=f"{detector_id}:{cause}",
                                    event_time_ms=t, rule_id=GUARD_RULE_ID, policy_name=self.policy.name,
                                    policy_version=self.policy.version, detail=detail)
