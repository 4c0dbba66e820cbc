"""Appeals and review verdicts in the pure core: void strikes, lift penalties, confirm reviews."""

from __future__ import annotations

import json

from connectors import record_schemas
from connectors.alerts import Rejection
from connectors.decisions import Decision, parse_decision
from rules.ledger import UserState
from rules.simulate import run

from .conftest import DAY_MS, HOUR_MS, T0_MS, TEST_KEYS, alert_bytes, make_alert, signed


def decide(kind, verdict, incident_id, user_id="u-1", decision_id="d-1", at_ms=T0_MS + DAY_MS) -> Decision:
    return Decision(decision_id, kind, verdict, user_id, incident_id, "mod-7", at_ms)


def enforced(core, n, vtype="hate_speech"):
    state, steps = None, []
    for i in range(n):
        step = core.on_alert(state, make_alert(alert_id=f"a-{i}", stream_id=f"s-{i}", violation_type=vtype,
                                               event_time_ms=T0_MS + i * HOUR_MS))
        state = step.state
        steps.append(step)
    return state, steps


def check_schemas(step):
    for out in step.outputs:
        record_schemas.validate(out.kind, out.record)


def test_granted_appeal_voids_the_strike_and_lifts_the_suspension_it_caused(core):
    state, steps = enforced(core, 2)
    incident = state.strikes[1].incident_id
    assert state.suspended_until_ms == T0_MS + HOUR_MS + DAY_MS and state.sanction_incident == incident
    step = core.on_decision(state, decide("appeal", "granted", incident, at_ms=T0_MS + 2 * HOUR_MS))
    check_schemas(step)
    [lift] = [o.record for o in step.outputs if o.kind == "enforcement"]
    assert lift["action"] == "lift" and lift["user_version"] > max(
        o.record["user_version"] for s in steps for o in s.outputs if o.kind == "enforcement")
    assert step.state.suspended_until_ms == 0 and step.state.strikes[1].voided  # kept, marked voided
    [audit] = [o.record for o in step.outputs if o.kind == "audit"]
    assert audit["kind"] == "appeal" and audit["outcome"] == "granted"
    assert audit["ledger_before"]["strike_points"] == {"standard": 2}
    assert audit["ledger_after"]["strike_points"] == {"standard": 1} and audit["ledger_after"]["status"] == "active"
    notes = [o.record for o in step.outputs if o.kind == "notification"]
    assert {n["channel"] for n in notes} == {"in_app", "email"} and notes[0]["topic"] == "appeal_outcome"
    # The voided strike no longer counts: the next violation is a second strike, not a third.
    nxt = core.on_alert(step.state, make_alert(alert_id="a-9", stream_id="s-9", event_time_ms=T0_MS + 3 * HOUR_MS))
    assert next(o.record["rule_id"] for o in nxt.outputs if o.kind == "enforcement") == "standard-2-suspend-24h"


def test_granted_appeal_of_an_older_incident_keeps_the_current_suspension(core):
    state, _ = enforced(core, 2)
    step = core.on_decision(state, decide("appeal", "granted", state.strikes[0].incident_id, at_ms=T0_MS + 2 * HOUR_MS))
    assert not [o for o in step.outputs if o.kind == "enforcement"]
    assert step.state.suspended_until_ms == T0_MS + HOUR_MS + DAY_MS and step.state.strikes[0].voided


def test_granted_appeal_lifts_a_ban(core):
    step = core.on_alert(None, make_alert(violation_type="csam", confidence=0.99))
    assert step.state.banned
    lifted = core.on_decision(step.state, decide("appeal", "granted", step.state.strikes[0].incident_id))
    assert not lifted.state.banned and "action.lift" in lifted.events


def test_denied_appeal_is_recorded_and_changes_nothing(core):
    state, _ = enforced(core, 2)
    step = core.on_decision(state, decide("appeal", "denied", state.strikes[1].incident_id))
    check_schemas(step)
    assert step.state.strikes == state.strikes and step.state.suspended_until_ms == state.suspended_until_ms
    assert [o.kind for o in step.outputs] == ["notification", "notification", "audit"]


def test_confirmed_review_applies_the_ladder_as_if_auto_enforced(core):
    review = core.on_alert(None, make_alert(confidence=0.7))
    incident = review.state.all_incidents()[0]
    step = core.on_decision(review.state, decide("review", "confirmed", incident.incident_id))
    check_schemas(step)
    [warning] = [o.record for o in step.outputs if o.kind == "enforcement"]
    assert warning["action"] == "warning" and warning["rule_id"] == "standard-1-warning"
    assert warning["cause"] == "review:d-1"
    [strike] = step.state.strikes
    assert strike.event_time_ms == T0_MS and strike.expires_at_ms == T0_MS + 90 * DAY_MS  # from the violation
    # Confirming twice (a redelivery) does nothing more.
    again = core.on_decision(step.state, decide("review", "confirmed", incident.incident_id))
    assert again.outputs == [] and again.events == ["duplicate_decision"]


def test_rejected_review_dismisses_the_incident(core):
    review = core.on_alert(None, make_alert(violation_type="terrorism", confidence=0.8))  # stop + urgent review
    incident = review.state.all_incidents()[0]
    step = core.on_decision(review.state, decide("review", "rejected", incident.incident_id))
    check_schemas(step)
    assert step.state.all_incidents()[0].decision == "dismiss" and not step.state.strikes
    [audit] = [o.record for o in step.outputs if o.kind == "audit"]
    assert audit["kind"] == "review_verdict" and audit["outcome"] == "rejected"


def test_decisions_that_name_nothing_go_to_the_dlq(core):
    state, _ = enforced(core, 1)
    for decision in (decide("appeal", "granted", "inc_" + "0" * 24),
                     decide("review", "confirmed", state.strikes[0].incident_id),  # enforced, not in review
                     decide("appeal", "granted", "inc_" + "1" * 24, user_id="nobody")):
        step = core.on_decision(state if decision.user_id == "u-1" else None, decision)
        [dlq] = step.outputs
        assert dlq.kind == "dlq" and dlq.record["reason"] == "invalid_decision" and step.events == ["invalid_decision"]
        record_schemas.validate("dlq", dlq.record)


def test_parse_decision_validates_against_the_schema():
    good = {"decision_id": "d-1", "kind": "appeal", "verdict": "granted", "user_id": "u-1",
            "incident_id": "inc_" + "a" * 24, "moderator_id": "m-1", "event_time_ms": T0_MS}
    assert parse_decision(signed(good), keys=TEST_KEYS) == Decision("d-1", "appeal", "granted", "u-1",
                                                                    "inc_" + "a" * 24, "m-1", T0_MS)
    for bad in (b"{", b"", signed({**good, "verdict": "confirmed"}),
                signed({k: v for k, v in good.items() if k != "moderator_id"}),
                json.dumps({**good, "decision_id": "d-\ud800"}).encode(), b"\xff\xfe{}"):
        result = parse_decision(bad, keys=TEST_KEYS)
        assert isinstance(result, Rejection) and result.reason == "invalid_decision"


def test_state_format_1_still_decodes():
    old = '[1,5,false,0,[],[],{"a":1}]'
    state = UserState.decode(old)
    assert state.user_version == 5 and state.seen.get("a") == 1 and state.next_wake_ms() == 1


def test_state_format_2_moves_ids_and_incidents_into_the_maps(core):
    # A savepoint of format 2 held the whole user in one value; the first write splits it.
    incident = ["inc_x", "s-1", "hate_speech", T0_MS, "review", "hs-mid", ["a-1", "a-2"], 0.7,
                T0_MS + 60_000 + 7 * DAY_MS]
    old = json.dumps([2, 7, False, 0, [], [incident], {"a-1": T0_MS + DAY_MS, "a-2": T0_MS + DAY_MS}, ""])
    state = UserState.decode(old)
    assert state.incident_by_id("inc_x").alert_ids == ("a-1", "a-2") and "a-2" in state.seen
    # The incident is still found by a late alert of it, and by a review verdict.
    merged = core.on_alert(state, make_alert(alert_id="a-3", confidence=0.7, event_time_ms=T0_MS + 1_000))
    assert merged.events == ["merged"] and merged.outputs[0].record["incident_id"] == "inc_x"
    confirmed = core.on_decision(state, decide("review", "confirmed", "inc_x"))
    assert "review_confirmed" in confirmed.events
    # Everything is forgotten in due time: ids after the horizon, the review incident after a week.
    after_day = core.on_timer(state, "u-1", T0_MS + DAY_MS)
    assert "a-1" not in after_day.state.seen and after_day.state.incident_by_id("inc_x") is not None
    gone = core.on_timer(after_day.state, "u-1", T0_MS + 60_000 + 7 * DAY_MS)
    assert gone.state is None


def test_simulate_replays_alerts_and_decisions_together(policy):
    first = [json.loads(x) for x in run(policy, [alert_bytes(confidence=0.7)])]
    incident = first[0]["record"]["incident_id"]
    decision = signed({"decision_id": "d-9", "kind": "review", "verdict": "confirmed", "user_id": "u-1",
                       "incident_id": incident, "moderator_id": "m-1", "event_time_ms": T0_MS + HOUR_MS})
    out = [json.loads(x) for x in run(policy, [alert_bytes(confidence=0.7), decision], decision_keys=TEST_KEYS)]
    assert [o["record"]["action"] for o in out if o["kind"] == "enforcement"] == ["warning"]
    # Without the keys (or unsigned) the decision is rejected as the job rejects it.
    for lines, keys in (([alert_bytes(confidence=0.7), decision], None),
                        ([alert_bytes(confidence=0.7), json.dumps(json.loads(decision) | {"signature": "0" * 64}).encode()],
                         TEST_KEYS)):
        out = [json.loads(x) for x in run(policy, lines, decision_keys=keys)]
        assert [o["record"]["reason"] for o in out if o["kind"] == "rejection"] == ["invalid_signature"]
        assert not [o for o in out if o["kind"] == "enforcement"]


def erasure(keep_ban=True, at_ms=T0_MS + 2 * DAY_MS) -> Decision:
    return Decision("erasure-1", "erasure", "erased", "u-1", "erasure", "ops-1", at_ms, keep_ban)


def test_an_erasure_forgets_the_user_or_keeps_only_a_ban_in_force(core):
    banned, _ = enforced(core, 1, vtype="csam")
    assert banned.banned and banned.strikes
    # The ban stays as a bare flag: no strike, incident, seen id or wake-up; the version goes on.
    step = core.on_decision(banned, erasure())
    assert step.replaces and step.outputs == [] and step.events == ["erasures", "erasures_ban_kept"]
    left = step.state.flush_to_dicts()
    assert (left.banned, left.strikes, left.user_version) == (True, (), banned.user_version)
    assert left.seen.as_dict() == {} and left.incidents.as_dict() == {} and left.next_wake_ms() is None
    # A new alert of the account still meets the ban; without keep_ban, or with nothing in
    # force, nothing is left at all.
    assert core.on_alert(left, make_alert(alert_id="a-new", event_time_ms=T0_MS + 3 * DAY_MS)).state.banned
    assert core.on_decision(banned, erasure(keep_ban=False)) == (None, [], ["erasures"], False)
    warned, _ = enforced(core, 1)
    assert core.on_decision(warned, erasure()).state is None
    assert core.on_decision(None, erasure()).state is None


def test_an_erasure_record_is_signed_parsed_and_applied_by_simulate(policy):
    from sinks.appeals import make_decision

    record = make_decision("erasure", "erased", "u-1", "erasure", "ops-1", T0_MS + DAY_MS, note="request 17",
                           keep_ban=False)
    parsed = parse_decision(signed(record), keys=TEST_KEYS)
    assert (parsed.kind, parsed.keep_ban) == ("erasure", False)
    assert isinstance(parse_decision(signed({**record, "verdict": "granted"}), keys=TEST_KEYS), Rejection)
    # Two strikes, erased, then a third alert: the ladder starts again from its first rung.
    alerts = [alert_bytes(alert_id=f"a-{i}", stream_id=f"s-{i}", event_time_ms=T0_MS + i * HOUR_MS) for i in range(2)]
    later = alert_bytes(alert_id="a-9", stream_id="s-9", event_time_ms=T0_MS + 2 * DAY_MS)
    out = [json.loads(x) for x in run(policy, alerts + [signed(record), later], decision_keys=TEST_KEYS)]
    actions = [o["record"]["action"] for o in out if o["kind"] == "enforcement"]
    assert actions == ["warning", "stop_stream", "suspend", "warning"]
