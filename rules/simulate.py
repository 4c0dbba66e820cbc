"""Run the decision core over a batch of alerts the way the job does, without Flink.

By default alerts are processed in event-time order (ties keep input order); before each alert,
every user's timer due before its event time fires, as the job's watermark would fire it. With
order="input" they are processed as they arrive, the way the job sees one partition: the
watermark is the highest event time so far minus the allowed out-of-orderness, timers fire as it
passes them, and alerts older than the dedupe horizon behind it are rejected as too_late. At the end of input the pending timers fire too (the job does the same when a bounded
source ends), unless drain is off. The output is deterministic for the same input.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Iterator

from connectors.alerts import MAX_RAW_BYTES, NO_SOURCE, Alert, Rejection, parse_alert
from connectors.decisions import Decision, parse_decision
from connectors.guard_release import (
    GuardRelease,
    ReleaseRefused,
    is_release,
    parse_release,
)
from connectors.signing import DecisionKeys
from rules import shadow
from rules.core import CoreConfig, PenaltyCore, Step
from rules.guard import DetectorGuard
from rules.ledger import UserState
from rules.model import Policy

DEFAULT_CONFIG = CoreConfig()  # frozen: one shared default


def core_config(dedupe_horizon_ms: int | None = None, incident_window_ms: int | None = None) -> CoreConfig:
    default = CoreConfig()
    return CoreConfig(
        dedupe_horizon_ms=default.dedupe_horizon_ms if dedupe_horizon_ms is None else dedupe_horizon_ms,
        incident_window_ms=default.incident_window_ms if incident_window_ms is None else incident_window_ms,
    )


def _parse_line(line: bytes, decision_keys: DecisionKeys | None, guard: bool = True):
    """An alert, a moderator decision (lines with a decision_id, signed by one of `decision_keys`,
    as the job requires), an operator's guard release (signed alike; with `guard` only: without a
    guard in the policy the job has no guard stage, and a release is a bad decision), or a
    rejection."""
    if guard and is_release(line):
        release = parse_release(line, decision_keys)
        if isinstance(release, ReleaseRefused):
            return Rejection(release.reason, release.detail, line[:MAX_RAW_BYTES], len(line), NO_SOURCE)
        return release
    if b'"decision_id"' in line:
        decision = parse_decision(line, keys=decision_keys)
        if not isinstance(decision, Rejection) or decision.reason == "invalid_signature":
            return decision
    return parse_alert(line)


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


class Simulator:
    """Per-user states plus one pending timer per user, like the keyed operator."""

    def __init__(self, policy: Policy, config: CoreConfig = DEFAULT_CONFIG, shadow_policy: Policy | None = None):
        self.core = PenaltyCore(policy, config)
        self.shadow = PenaltyCore(shadow_policy, config) if shadow_policy is not None else None
        self.guard = DetectorGuard.of(policy)  # the job's guard stage, ahead of the user's state
        self.states: dict[str, UserState] = {}
        self.timers: dict[str, int] = {}  # user -> wake time (the one live timer)
        self.queue: list[tuple[int, str]] = []  # heap of (wake, user); stale entries skipped
        self.events: dict[str, int] = {}

    def _apply(self, user_id: str, step: Step) -> list:
        if step.state is None:
            self.states.pop(user_id, None)
        else:
            # Like the operator: write this step's map changes, go on from a clean view.
            self.states[user_id] = step.state.flush_to_dicts()
        wake = step.state.next_wake_ms() if step.state is not None else None
        if wake is None:
            self.timers.pop(user_id, None)
        elif self.timers.get(user_id) != wake:
            self.timers[user_id] = wake
            heapq.heappush(self.queue, (wake, user_id))
        for event in step.events:
            self.events[event] = self.events.get(event, 0) + 1
        return step.outputs

    def advance_to(self, time_ms: int) -> list:
        """Fire every timer due at or before time_ms, earliest first."""
        outputs = []
        while self.queue and self.queue[0][0] <= time_ms:
            wake, user_id = heapq.heappop(self.queue)
            if self.timers.get(user_id) != wake:
                continue  # moved or deleted since
            del self.timers[user_id]
            outputs += self._apply(user_id, self.core.on_timer(self.states.get(user_id), user_id, wake))
        return outputs

    def on_alert(self, alert: Alert, watermark_ms: int | None = None) -> list:
        """Event-time order when watermark_ms is None; else arrival order under that watermark."""
        outputs = self.advance_to(alert.event_time_ms - 1 if watermark_ms is None else watermark_ms)
        guarded = False
        if self.guard is not None:
            verdict = self.guard.on_alert(alert)
            guarded = verdict.guarded
            outputs += verdict.outputs
            for _, tripped in verdict.changes:
                event = "detector_guard.tripped" if tripped else "detector_guard.released"
                self.events[event] = self.events.get(event, 0) + 1
        before = self.states.get(alert.user_id)
        step = self.core.on_alert(before, alert, watermark_ms, guarded)
        shadow_outputs = []
        if self.shadow is not None:  # from the state before, so before the live step is written
            audit, event = shadow.compare(self.shadow, self.core.policy.version, before, alert, watermark_ms, step)
            if audit is not None:
                shadow_outputs.append(audit)
                self.events[event] = self.events.get(event, 0) + 1
        return outputs + self._apply(alert.user_id, step) + shadow_outputs

    def on_decision(self, decision: Decision) -> list:
        outputs = self.advance_to(decision.event_time_ms - 1)
        step = self.core.on_decision(self.states.get(decision.user_id), decision)
        return outputs + self._apply(decision.user_id, step)

    def on_release(self, release: GuardRelease) -> list:
        """An operator releases a detector's guard (the job's guard stage applies it in arrival order)."""
        outputs = self.advance_to(release.event_time_ms - 1)
        if self.guard is None:
            return outputs
        return outputs + self.guard.release(release.detector_id, release.event_time_ms, release.operator_id)

    def drain(self) -> list:
        return self.advance_to(2**63 - 1)


def run(policy: Policy, lines: Iterable[bytes], config: CoreConfig = DEFAULT_CONFIG,
        drain: bool = True, order: str = "event_time", max_out_of_orderness_ms: int = 5_000,
        shadow_policy: Policy | None = None, decision_keys: DecisionKeys | None = None) -> Iterator[str]:
    """Yield one JSON line per output record; rejected input lines come first, as records of
    kind "rejection" with the line number. Decision lines count only when signed by one of
    `decision_keys` (the job's PENALTY_DECISION_KEYS)."""
    alerts: list[tuple[int, int, Alert | Decision]] = []  # decisions too
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed = _parse_line(line.rstrip(b"\r\n"), decision_keys, policy.detector_guard is not None)
        if isinstance(parsed, Rejection):
            yield dumps({"kind": "rejection", "key": parsed.user_id,
                         "record": {"line": number, "reason": parsed.reason, "detail": parsed.detail}})
            continue
        alerts.append((parsed.event_time_ms, number, parsed))
    sim = Simulator(policy, config, shadow_policy)
    if order == "event_time":
        alerts.sort(key=lambda item: (item[0], item[1]))
    watermark_ms = None
    highest_ms = None
    for _, _, alert in alerts:
        if order == "input":
            # Like the job's bounded out-of-orderness watermark, it lags one alert behind.
            if highest_ms is not None:
                watermark_ms = highest_ms - max_out_of_orderness_ms - 1
            highest_ms = alert.event_time_ms if highest_ms is None else max(highest_ms, alert.event_time_ms)
        if isinstance(alert, GuardRelease):
            outputs = sim.on_release(alert)
        elif isinstance(alert, Decision):
            outputs = sim.on_decision(alert)
        else:
            outputs = sim.on_alert(alert, watermark_ms)
        for output in outputs:
            yield dumps(output._asdict())
    if drain:
        for output in sim.drain():
            yield dumps(output._asdict())
