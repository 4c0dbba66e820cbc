"""The decision core: one user's state + one alert (or one timer) -> new state + output records.

Pure and deterministic: no wall clock, no I/O, no pyflink. The Flink operator
(jobs/operators.py) and `python -m rules simulate` both call exactly this.

Semantics, in order, for an alert:
1. too late: an alert older than the dedupe horizon behind the watermark cannot be deduplicated
   any more, so it goes to the DLQ (reason too_late) instead of risking a second strike;
2. exact dedupe: an alert_id seen within the horizon is a retry and is dropped (counted);
3. incident merge: an alert for the same (stream, violation type) within the incident window
   of an incident's first alert joins that incident; it may only upgrade the decision
   (dismiss -> review -> enforce), never add a second strike;
4. decision: category by type, band by confidence, ladder rung by active strike points
   (this strike included) at the alert's event time.

Seen ids and incidents are forgotten by the user's timer, oldest queued first: never before they
are due, sometimes a little after (an entry waits behind an earlier-queued one due later). Alerts
cannot tell: an alert that could still match a forgotten id or incident is past the too_late
gate (its event time + horizon <= watermark). Each step reads and writes a few entries, however
long the user's history (rules/ledger.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from connectors.alerts import Alert
from connectors.decisions import Decision
from rules import records
from rules.erasure import erase
from rules.ledger import (
    DEDUPE_QUEUE,
    REVIEW_QUEUE,
    Incident,
    Strike,
    UserState,
    active_points,
    incident_slot,
    incident_slot_prefix,
)
from rules.model import DECISION_RANK, Action, Band, Category, Policy
from rules.prepared import PreparedRules
from rules.sections import GUARD_RULE_ID

DAY_MS = 86_400_000


@dataclass(frozen=True)
class CoreConfig:
    dedupe_horizon_ms: int = DAY_MS  # also the allowed lateness
    incident_window_ms: int = 60_000
    review_retention_ms: int = 7 * DAY_MS  # how long an incident awaiting review stays decidable


class Step(NamedTuple):
    state: UserState | None  # None: the user has nothing left; clear the keyed state
    outputs: list[records.Output]
    events: list[str]  # what happened, for metrics: "duplicate", "merged", "action.ban", ...
    replaces: bool = False  # state is all that is left: clear the keyed state, then store it


def next_user_version(last_version: int, time_ms: int) -> int:
    # Scaled event time keeps versions increasing even after a user's state was cleared and
    # rebuilt; the +1 keeps them strictly increasing within one state.
    return max(last_version + 1, time_ms * 1000)


class PenaltyCore:
    def __init__(self, policy: Policy, config: CoreConfig = CoreConfig()):
        self.policy = policy
        self.config = config
        self.prepared = PreparedRules(policy)  # the actions' descriptions and events, per rule
        self.guard_bands = {category.name: guard_band(category) for category in policy.categories}

    # ----------------------------------------------------------------- alerts
    def on_alert(self, state: UserState | None, alert: Alert, watermark_ms: int | None = None,
                 guarded: bool = False) -> Step:
        """`guarded`: the alert's detector is over its limits (rules/guard.py), so an enforce band
        becomes the category's guard band: urgent review, no strike, a stream stop only where the
        first strike would ban."""
        t = alert.event_time_ms
        horizon = self.config.dedupe_horizon_ms
        if watermark_ms is not None and t + horizon <= watermark_ms:
            raw = records_json(alert)
            out = records.dead_letter(
                reason="too_late",
                detail=f"event_time_ms {t} is {watermark_ms - t} ms behind the watermark "
                f"(limit {horizon} ms): it can no longer be deduplicated safely; replay it by hand",
                raw=raw, size_bytes=len(raw),
                topic=None, partition=None, offset=None, timestamp_ms=None, user_id=alert.user_id,
            )
            return Step(state, [out], ["too_late"])
        current = state or UserState.empty()
        # Fields read more than once, read once: each read of a NamedTuple's field is a lookup.
        alert_id, violation_type, confidence = alert.alert_id, alert.violation_type, alert.confidence
        if alert_id in current.seen:
            return Step(state, [], ["duplicate"])
        # The id is remembered with the rest of the step's changes, which are collected (`changes`:
        # field -> new value) and copied into the state once, at the end of the step: looking for
        # the incident does not read `seen`, deciding reads only the ledger's standing and strikes.
        seen = ("seen", alert_id, t + horizon, t + horizon, DEDUPE_QUEUE)

        category = self.policy.category_for(violation_type)
        band = category.band_for(confidence) if category else self.policy.unknown_types
        if guarded and band.decision == "enforce":
            band = self.guard_bands[category.name]
        incident, slot = self._open_incident(current, alert)
        if incident is None:
            stream_id, decision = alert.stream_id, band.decision
            incident_id = records.incident_id(alert.user_id, stream_id, violation_type, alert_id)
            retain_until_ms = t + self.config.incident_window_ms + max(
                horizon, self.config.review_retention_ms if decision == "review" else 0)
            incident = Incident(
                incident_id=incident_id,
                stream_id=stream_id,
                violation_type=violation_type,
                start_ms=t,
                decision=decision,
                rule_id=band.id,
                alert_ids=(alert_id,),
                max_confidence=confidence,
                retain_until_ms=retain_until_ms,
                seq=current.incident_seq,
            )
            queue = REVIEW_QUEUE if decision == "review" else DEDUPE_QUEUE
            changes = current.remembered(
                (seen, ("incidents", slot, incident, retain_until_ms, queue)),
                incident_slots=current.incident_slots.set(incident_id, slot),
                incident_seq=current.incident_seq + 1,
            )
            return self._decide(current, changes, alert, incident, category, band, cause="alert")

        merged = incident._replace(
            alert_ids=incident.alert_ids + (alert_id,),
            max_confidence=max(incident.max_confidence, confidence),
        )
        if DECISION_RANK[band.decision] <= DECISION_RANK[incident.decision]:
            current = current.remember(*seen, incidents=current.incidents.set(slot, merged))
            out = records.audit(
                kind="merge", user_id=alert.user_id, cause=alert_id, event_time_ms=t,
                outcome="merged", rule_id=incident.rule_id, policy_name=self.policy.name,
                policy_version=self.policy.version, incident_id=incident.incident_id,
                alert_ids=list(merged.alert_ids),
                detail={"detector_id": alert.detector_id, "confidence": confidence,
                        "incident_decision": incident.decision},
            )
            return Step(current, [out], ["merged"])
        upgraded = merged._replace(decision=band.decision, rule_id=band.id)
        changes = current.remembered((seen,), incidents=current.incidents.set(slot, upgraded))
        step = self._decide(current, changes, alert, upgraded, category, band, cause="upgrade")
        return Step(step.state, step.outputs, ["merged", "upgraded"] + step.events)

    def _open_incident(self, state: UserState, alert: Alert) -> tuple[Incident | None, str]:
        """The first-created incident of this stream and type whose first alert is less than a
        window away, and its slot; or None and the slot of a new incident starting at the alert.
        At most three slots to look at, however many incidents the user has."""
        window = self.config.incident_window_ms
        t = alert.event_time_ms
        # incident_slot() of t - window, t and t + window: (t ± window) // window is
        # t // window ± 1, so the three share one prefix.
        prefix = incident_slot_prefix(alert.stream_id, alert.violation_type)
        number = t // window
        own = prefix + str(number)
        found, found_slot = None, own
        incidents = state.incidents
        for slot in (prefix + str(number - 1), own, prefix + str(number + 1)):
            incident = incidents.get(slot)
            if incident is not None and abs(t - incident.start_ms) < window and (
                found is None or incident.seq < found.seq
            ):
                found, found_slot = incident, slot
        # (An incident's slot is always incident_slot() of its own start, as _slot() says: the
        # slot it was found in is the one to write it back to.)
        return found, found_slot

    def _slot(self, incident: Incident) -> str:
        return incident_slot(incident.stream_id, incident.violation_type, incident.start_ms,
                             self.config.incident_window_ms)

    def _replace_incident(self, state: UserState, incident: Incident) -> UserState:
        return state.with_(incidents=state.incidents.set(self._slot(incident), incident))

    def _decide(self, state: UserState, changes: dict[str, Any], alert: Alert, incident: Incident,
                category: Category | None, band: Band, cause: str) -> Step:
        """`changes`: what the step changed so far (its id and incident), not yet in `state`; the
        decision adds its own and returns the state copied once with all of them. (Deciding reads
        only standing and strikes, which `changes` never holds.)"""
        t = alert.event_time_ms
        before = state.summary(t)
        common = {"user_id": alert.user_id, "event_time_ms": t, "policy_name": self.policy.name,
                  "policy_version": self.policy.version, "incident_id": incident.incident_id,
                  "alert_ids": list(incident.alert_ids)}
        cause_id = f"{cause}:{alert.alert_id}"
        if band.decision == "dismiss":
            out = records.audit(kind="dismissal", cause=cause_id, outcome="dismissed", rule_id=band.id,
                                ledger_before=before, ledger_after=before,
                                detail={"confidence": alert.confidence}, **common)
            return Step(state.with_(**changes), [out], ["dismissed", f"rule.{band.id}"])
        if state.banned:
            out = records.audit(kind="decision", cause=cause_id, outcome="suppressed_banned", rule_id=band.id,
                                ledger_before=before, ledger_after=before,
                                detail={"decision": band.decision, "confidence": alert.confidence}, **common)
            return Step(state.with_(**changes), [out], ["suppressed_banned", f"rule.{band.id}"])
        if band.decision == "review":
            return self._review(state, changes, alert, incident, band, before, cause_id, common)
        assert category is not None  # unknown types never enforce (checked by the loader)
        return self._enforce(state, changes, alert, incident, category, band, before, cause_id, common)

    def _review(self, state, changes, alert, incident, band, before, cause_id, common) -> Step:
        outputs: list[records.Output] = []
        prepared = self.prepared.of(band)
        ledger = (state.strikes, state.banned, state.suspended_until_ms)  # what summary() reads
        standing, enforcement = self._sanctions(state, alert, incident, band.actions, band.id, 0, cause_id)
        state = state.with_(**changes, **standing)  # the step's one copy
        outputs += enforcement
        outputs.append(records.review(
            user_id=alert.user_id, stream_id=alert.stream_id, incident_id=incident.incident_id,
            violation_type=alert.violation_type, priority=band.priority, alert_ids=list(incident.alert_ids),
            max_confidence=incident.max_confidence,
            evidence=[{"alert_id": alert.alert_id, "detector_id": alert.detector_id,
                       "confidence": alert.confidence, "model_version": alert.model_version,
                       "evidence": alert.evidence}],
            rule_id=band.id, policy_version=self.policy.version,
            actions_taken=list(prepared.described), event_time_ms=alert.event_time_ms,
            reason=GUARD_RULE_ID if band.id == GUARD_RULE_ID else None,
        ))
        outputs.append(records.notification(
            user_id=alert.user_id, recipient_role="moderator", recipient_id=f"queue:{band.priority}",
            channel="in_app", topic="review_request", incident_id=incident.incident_id,
            violation_type=alert.violation_type, actions=[], penalty_ids=[], appealable=False,
            event_time_ms=alert.event_time_ms, rule_id=band.id,
        ))
        outputs += self._streamer_notifications(alert, incident, enforcement, band.id, appealable=False)
        # Review bands only stop streams: the ledger the audit shows is nearly always unchanged,
        # and then the same summary serves as after (as dismissals do; the same JSON either way).
        unchanged = ledger[0] is state.strikes and ledger[1:] == (state.banned, state.suspended_until_ms)
        after = before if unchanged else state.summary(alert.event_time_ms)
        detail = {"priority": band.priority, "confidence": alert.confidence, "actions": list(prepared.described)}
        if band.id == GUARD_RULE_ID:
            detail.update(reason=GUARD_RULE_ID, detector_id=alert.detector_id)
        outputs.append(records.audit(kind="decision", cause=cause_id, outcome="review", rule_id=band.id,
                                     ledger_before=before, ledger_after=after, detail=detail, **common))
        return Step(state, outputs, ["review", *prepared.events])

    def _enforce(self, state, changes, alert, incident, category, band, before, cause_id, common) -> Step:
        t = alert.event_time_ms
        strike = Strike(incident.incident_id, category.name, alert.violation_type, category.points, t,
                        t + category.strike_expiry_ms, band.id)
        strikes = state.strikes + (strike,)
        points = active_points(strikes, category.counts_strikes_of, t)
        rung = category.rung_for(points)
        prepared = self.prepared.of(rung)
        standing, enforcement = self._sanctions(state, alert, incident, rung.actions, rung.id, points, cause_id)
        state = state.with_(strikes=strikes, **changes, **standing)  # the step's one copy
        outputs = list(enforcement)
        outputs += self._streamer_notifications(alert, incident, enforcement, rung.id, appealable=True)
        after = state.summary(t)
        outputs.append(records.audit(kind="decision", cause=cause_id, outcome="enforced", rule_id=rung.id,
                                     ledger_before=before, ledger_after=after,
                                     detail={"band": band.id, "confidence": alert.confidence,
                                             "strike_points": points,
                                             "strike_expires_at_ms": strike.expires_at_ms,
                                             "actions": list(prepared.described)},
                                     **common))
        return Step(state, outputs, ["enforced", *prepared.events])

    def _sanctions(self, state: UserState, alert: Alert, incident: Incident, actions: tuple[Action, ...],
                   rule_id: str, points: int, cause_id: str) -> tuple[dict[str, Any], list[records.Output]]:
        """The enforcement records of a rule's actions, and the standing they change (fields of
        the state: user_version, banned, suspended_until_ms, sanction_incident), for the caller to
        copy into the state with the rest of its step's changes."""
        t, user_id, stream_id, violation_type = alert.event_time_ms, alert.user_id, alert.stream_id, alert.violation_type
        incident_id = incident.incident_id
        outputs = []
        version, suspended_until_ms, standing = state.user_version, state.suspended_until_ms, {}
        for action in actions:
            until_ms = None
            version = next_user_version(version, t)
            if action.kind == "suspend":
                # A suspension only ever extends to the later end.
                until_ms = suspended_until_ms = max(suspended_until_ms, t + (action.duration_ms or 0))
                standing.update(suspended_until_ms=until_ms, sanction_incident=incident_id)
            elif action.kind == "ban":
                standing.update(banned=True, sanction_incident=incident_id)
            outputs.append(records.enforcement(
                user_id=user_id, stream_id=stream_id, action=action.kind, until_ms=until_ms,
                incident_id=incident_id, violation_type=violation_type, rule_id=rule_id,
                policy_name=self.policy.name, policy_version=self.policy.version, user_version=version,
                event_time_ms=t, active_strikes=points, cause=cause_id,
            ))
        if actions:
            standing["user_version"] = version
        return standing, outputs

    def _streamer_notifications(self, alert, incident, enforcement, rule_id, appealable) -> list[records.Output]:
        if not enforcement:
            return []
        actions = [{"action": o.record["action"], "until_ms": o.record["until_ms"]} for o in enforcement]
        penalty_ids = [o.record["penalty_id"] for o in enforcement]
        user_id, incident_id, violation_type, t = (alert.user_id, incident.incident_id, alert.violation_type,
                                                   alert.event_time_ms)
        return [
            records.notification(
                user_id=user_id, recipient_role="streamer", recipient_id=user_id, channel=channel,
                topic="penalty", incident_id=incident_id, violation_type=violation_type,
                actions=actions, penalty_ids=penalty_ids, appealable=appealable,
                event_time_ms=t, rule_id=rule_id,
            )
            for channel in ("in_app", "email")
        ]

    # -------------------------------------------------------------- decisions
    def on_decision(self, state: UserState | None, decision: Decision) -> Step:
        """An appeal outcome or review verdict from a moderator.

        A granted appeal or a rejected review voids the incident's strike (kept, marked voided)
        and lifts the ban or suspension that incident caused; a confirmed review applies the
        ladder as if the incident had been enforced automatically; a denied appeal is recorded.
        A decision naming nothing this user has is rejected to the DLQ, never guessed at.
        """
        if decision.kind == "erasure":  # rules/erasure.py: forget the user, a ban in force aside
            left, events = erase(state, decision)
            return Step(left, [], events, replaces=left is not None)
        t = decision.event_time_ms
        cause = f"{decision.kind}:{decision.decision_id}"
        current = state or UserState.empty()
        strike = next((s for s in current.strikes if s.incident_id == decision.incident_id), None)
        incident = current.incident_by_id(decision.incident_id)

        def reject(detail: str) -> Step:
            fields = decision._asdict()
            del fields["keep_ban"]  # erasures only, never rejected here
            raw = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
            out = records.dead_letter(reason="invalid_decision", detail=detail, raw=raw, size_bytes=len(raw),
                                      topic=None, partition=None, offset=None, timestamp_ms=None,
                                      user_id=decision.user_id)
            return Step(state, [out], ["invalid_decision"])

        if decision.decision_id in current.seen:
            return Step(state, [], ["duplicate_decision"])
        if decision.kind == "review" and decision.verdict == "confirmed":
            if incident is None or incident.decision != "review":
                return reject(f"incident {decision.incident_id} of user {decision.user_id} is not awaiting review")
            category = self.policy.category_for(incident.violation_type)
            if category is None:
                return reject(f"violation type {incident.violation_type!r} has no ladder in rule set "
                              f"{self.policy.name}; confirm it under a known type")
            current = self._remember(current, decision)
            upgraded = incident._replace(decision="enforce", rule_id=f"{category.name}-review-confirmed")
            current = self._replace_incident(current, upgraded)
            alert = Alert(alert_id=decision.decision_id, stream_id=incident.stream_id, user_id=decision.user_id,
                          detector_id=f"moderator:{decision.moderator_id}", violation_type=incident.violation_type,
                          confidence=incident.max_confidence, event_time_ms=incident.start_ms)
            band = Band(id=upgraded.rule_id, min_confidence=0.0, decision="enforce")
            before = current.summary(incident.start_ms)
            common = {"user_id": alert.user_id, "event_time_ms": incident.start_ms,
                      "policy_name": self.policy.name, "policy_version": self.policy.version,
                      "incident_id": incident.incident_id, "alert_ids": list(incident.alert_ids)}
            step = self._enforce(current, {}, alert, upgraded, category, band, before, cause, common)
            return Step(step.state, step.outputs, ["review_confirmed"] + step.events)
        voids = (decision.kind, decision.verdict) in (("appeal", "granted"), ("review", "rejected"))
        if decision.kind == "appeal" and (strike is None or strike.voided):
            return reject(f"user {decision.user_id} has no active strike for incident {decision.incident_id}")
        if decision.kind == "review" and incident is None and strike is None:
            return reject(f"incident {decision.incident_id} of user {decision.user_id} is unknown or expired")
        current = self._remember(current, decision)
        before = current.summary(t)
        outputs: list[records.Output] = []
        events = [f"{decision.kind}_{decision.verdict}"]
        if voids:
            if strike is not None and not strike.voided:
                current = current.with_(strikes=tuple(s._replace(voided=True) if s is strike else s
                                                      for s in current.strikes))
            if incident is not None:
                current = self._replace_incident(current, incident._replace(decision="dismiss"))
            if current.sanction_incident == decision.incident_id and (current.banned or current.suspended_until_ms > t):
                # The penalty came from this incident: lift it (a ban or suspension from another
                # incident stands).
                current = current.with_(banned=False, suspended_until_ms=0, sanction_incident="")
                version = next_user_version(current.user_version, t)
                current = current.with_(user_version=version)
                outputs.append(records.enforcement(
                    user_id=decision.user_id, stream_id=incident.stream_id if incident else None, action="lift",
                    until_ms=None, incident_id=decision.incident_id,
                    violation_type=(incident or strike).violation_type, rule_id=cause,
                    policy_name=self.policy.name, policy_version=self.policy.version, user_version=version,
                    event_time_ms=t, active_strikes=sum(current.summary(t)["strike_points"].values()), cause=cause,
                ))
                events.append("action.lift")
        lift = [{"action": o.record["action"], "until_ms": None} for o in outputs]
        for channel in ("in_app", "email"):
            outputs.append(records.notification(
                user_id=decision.user_id, recipient_role="streamer", recipient_id=decision.user_id, channel=channel,
                topic="appeal_outcome" if decision.kind == "appeal" else "review_outcome",
                incident_id=decision.incident_id, violation_type=(incident or strike).violation_type,
                actions=lift, penalty_ids=[o.record["penalty_id"] for o in outputs if o.kind == "enforcement"],
                appealable=False, event_time_ms=t, rule_id=cause,
            ))
        outputs.append(records.audit(
            kind="appeal" if decision.kind == "appeal" else "review_verdict", user_id=decision.user_id,
            cause=cause, event_time_ms=t, outcome=decision.verdict, rule_id=None, policy_name=self.policy.name,
            policy_version=self.policy.version, incident_id=decision.incident_id,
            ledger_before=before, ledger_after=current.summary(t),
            detail={"moderator_id": decision.moderator_id, "strike_voided": voids and strike is not None},
        ))
        return Step(current, outputs, events)

    def _remember(self, state: UserState, decision: Decision) -> UserState:
        # Decision ids share the dedupe memory with alert ids: a redelivered decision is a no-op.
        forget_ms = decision.event_time_ms + self.config.dedupe_horizon_ms
        return state.remember("seen", decision.decision_id, forget_ms, forget_ms)

    # ----------------------------------------------------------------- timers
    def on_timer(self, state: UserState | None, user_id: str, now_ms: int) -> Step:
        """Expire what is due at event time `now_ms` (the watermark passed it)."""
        if state is None:
            return Step(None, [], [])
        outputs: list[records.Output] = []
        events: list[str] = []
        kept = [strike for strike in state.strikes if strike.expires_at_ms > now_ms]
        current = state
        # In expiry order (categories expire after different times, so creation order is not it):
        # each audit's ledger is the one of its own expiry, whether one firing covers one strike
        # or, after a watermark jump, several.
        due = sorted((s for s in state.strikes if s.expires_at_ms <= now_ms), key=lambda s: s.expires_at_ms)
        for strike in due:
            if strike.voided:
                continue
            before = current.strike_summary(strike.expires_at_ms - 1)  # the last instant it counted
            current = current.with_(strikes=tuple(s for s in current.strikes if s is not strike))
            outputs.append(records.audit(
                kind="strike_expired", user_id=user_id, cause=strike.incident_id,
                event_time_ms=strike.expires_at_ms, outcome="expired", rule_id=strike.rule_id,
                policy_name=self.policy.name, policy_version=self.policy.version,
                incident_id=strike.incident_id, ledger_before=before,
                ledger_after=current.strike_summary(strike.expires_at_ms),
                detail={"category": strike.category, "violation_type": strike.violation_type,
                        "strike_event_time_ms": strike.event_time_ms},
            ))
            events.append("strike_expired")
        current = current.with_(strikes=tuple(kept)).forget_due(now_ms)
        if current.suspended_until_ms and current.suspended_until_ms <= now_ms and not current.banned:
            current = current.with_(suspended_until_ms=0)
        return Step(None if current.is_empty_at(now_ms) else current, outputs, events)


def guard_band(category: Category) -> Band:
    """What an enforce-band alert of a tripped detector gets: urgent review, no strike. Where the
    category's first strike bans (severe types), the stream still stops at once (a stop is
    reversible, a ban is not)."""
    first = category.rung_for(category.points) if category.ladder else None
    severe = first is not None and any(action.kind == "ban" for action in first.actions)
    return Band(GUARD_RULE_ID, 0.0, "review", "urgent", (Action("stop_stream"),) if severe else ())


def records_json(alert: Alert) -> bytes:
    return json.dumps(alert.to_json_dict(), separators=(",", ":"), sort_keys=True).encode("utf-8")
