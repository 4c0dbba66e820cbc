"""The shipped default policy: every band edge, every ladder rung, decay, suspensions, bans."""

from __future__ import annotations

import pytest

from rules.ledger import CODECS, MAP_NAMES, UserState
from rules.simulate import Simulator, run

from .conftest import DAY_MS, HOUR_MS, T0_MS, alert_bytes, make_alert

WEEK_MS = 7 * DAY_MS


def offend(core, n, vtype="hate_speech", spacing_ms=2 * HOUR_MS, state=None, start_ms=T0_MS):
    """n separate incidents of one type (different streams, hours apart); returns each step."""
    steps = []
    for i in range(n):
        step = core.on_alert(state, make_alert(alert_id=f"{vtype}-{i}", stream_id=f"s-{i}", violation_type=vtype,
                                               confidence=0.99, event_time_ms=start_ms + i * spacing_ms))
        steps.append(step)
        state = step.state
    return steps


def actions(step):
    return [(o.record["action"], o.record["until_ms"]) for o in step.outputs if o.kind == "enforcement"]


def rule_of(step):
    [decision] = [o for o in step.outputs if o.kind == "audit" and o.record["kind"] == "decision"]
    return decision.record["rule_id"]


@pytest.mark.parametrize("vtype", ["hate_speech", "nudity", "harassment", "violence", "self_harm"])
def test_standard_ladder(core, vtype):
    steps = offend(core, 5, vtype)
    t = [T0_MS + i * 2 * HOUR_MS for i in range(5)]
    assert actions(steps[0]) == [("warning", None)]
    assert actions(steps[1]) == [("stop_stream", None), ("suspend", t[1] + DAY_MS)]
    assert actions(steps[2]) == [("stop_stream", None), ("suspend", t[2] + WEEK_MS)]
    assert actions(steps[3]) == [("stop_stream", None), ("ban", None)]
    assert [rule_of(s) for s in steps[:4]] == ["standard-1-warning", "standard-2-suspend-24h",
                                               "standard-3-suspend-7d", "standard-4-ban"]
    # Banned: no further penalties, only audit records.
    assert actions(steps[4]) == [] and rule_of(steps[4]) == "standard-auto"
    assert {o.kind for o in steps[4].outputs} == {"audit"}
    assert "suppressed_banned" in steps[4].events


def test_copyright_ladder(core):
    steps = offend(core, 3, "copyright")
    t2 = T0_MS + 2 * HOUR_MS
    assert actions(steps[0]) == [("stop_stream", None), ("warning", None)]
    assert actions(steps[1]) == [("stop_stream", None), ("suspend", t2 + WEEK_MS)]
    assert actions(steps[2]) == [("stop_stream", None), ("ban", None)]
    assert [rule_of(s) for s in steps] == ["copyright-1-warning", "copyright-2-suspend-7d", "copyright-3-ban"]


@pytest.mark.parametrize("vtype", ["spam", "misleading_metadata"])
def test_low_ladder(core, vtype):
    steps = offend(core, 4, vtype)
    assert actions(steps[0]) == [("warning", None)]
    assert actions(steps[1]) == [("warning", None)]
    t = [T0_MS + i * 2 * HOUR_MS for i in range(4)]
    assert actions(steps[2]) == [("suspend", t[2] + DAY_MS)]
    assert actions(steps[3]) == [("suspend", t[3] + DAY_MS)]


@pytest.mark.parametrize("vtype", ["csam", "terrorism", "violent_extremism"])
def test_severe_types_ban_at_once_or_stop_and_urgent_review(core, vtype):
    ban = core.on_alert(None, make_alert(violation_type=vtype, confidence=0.95))
    assert actions(ban) == [("stop_stream", None), ("ban", None)] and ban.state.banned
    review = core.on_alert(None, make_alert(violation_type=vtype, confidence=0.9499))
    assert actions(review) == [("stop_stream", None)]
    [request] = [o for o in review.outputs if o.kind == "review"]
    assert request.record["priority"] == "urgent" and not review.state.strikes
    low = core.on_alert(None, make_alert(violation_type=vtype, confidence=0.59999))
    assert low.events[0] == "dismissed"


@pytest.mark.parametrize("confidence, decision", [
    (0.0, "dismissed"), (0.59999, "dismissed"), (0.6, "review"), (0.89999, "review"), (0.9, "enforced"),
    (0.95, "enforced"), (1.0, "enforced"),
])
def test_band_edges(core, confidence, decision):
    step = core.on_alert(None, make_alert(confidence=confidence))
    assert step.events[0] == decision
    if decision == "review":
        assert [o.kind for o in step.outputs].count("review") == 1 and not step.state.strikes
    if decision == "dismissed":
        [audit] = step.outputs
        assert audit.record["kind"] == "dismissal"


def test_unknown_type_goes_to_human_review_never_a_penalty(core):
    step = core.on_alert(None, make_alert(violation_type="gambling_promo", confidence=1.0))
    assert step.events[0] == "review" and actions(step) == []
    assert [o.kind for o in step.outputs].count("review") == 1


def test_strike_decays_at_the_exact_expiry_boundary(core):
    first = core.on_alert(None, make_alert(alert_id="a-1", stream_id="s-1"))
    expiry = T0_MS + 90 * DAY_MS
    # One millisecond before expiry the first strike still counts: second rung.
    before = core.on_alert(first.state, make_alert(alert_id="a-2", stream_id="s-2", event_time_ms=expiry - 1))
    assert rule_of(before) == "standard-2-suspend-24h"
    # At the expiry instant it no longer counts: first rung again.
    at = core.on_alert(first.state, make_alert(alert_id="a-2", stream_id="s-2", event_time_ms=expiry))
    assert rule_of(at) == "standard-1-warning"


def test_timer_expires_the_strike_with_an_audit_record_and_frees_state(core):
    first = core.on_alert(None, make_alert())
    state = first.state
    for wake in (T0_MS + DAY_MS, T0_MS + 60_000 + DAY_MS):
        state = core.on_timer(state, "u-1", wake).state
    expired = core.on_timer(state, "u-1", T0_MS + 90 * DAY_MS)
    [audit] = expired.outputs
    assert audit.record["kind"] == "strike_expired" and audit.record["event_time_ms"] == T0_MS + 90 * DAY_MS
    assert audit.record["ledger_before"]["strike_points"] == {"standard": 1}
    assert audit.record["ledger_after"]["strike_points"] == {}
    assert expired.state is None and expired.events == ["strike_expired"]


def test_suspension_only_extends(core):
    # Two standard strikes -> 7-day copyright suspension, then a 24 h one must not shorten it.
    state = None
    for step in offend(core, 2, "copyright"):
        state = step.state
    week_end = T0_MS + 2 * HOUR_MS + WEEK_MS
    assert state.suspended_until_ms == week_end
    step = offend(core, 2, "hate_speech", state=state, start_ms=T0_MS + 4 * HOUR_MS)[1]
    [(_, until)] = [a for a in actions(step) if a[0] == "suspend"]
    assert until == week_end  # 24 h from now ends earlier: the longer suspension stands
    assert step.state.suspended_until_ms == week_end


def test_user_version_increases_on_every_enforcement(core):
    versions = [o.record["user_version"] for s in offend(core, 4) for o in s.outputs if o.kind == "enforcement"]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_decision_carries_rule_version_and_ledger_before_after(core, policy):
    second = offend(core, 2)[1]
    [audit] = [o for o in second.outputs if o.kind == "audit"]
    assert audit.record["rule_set_version"] == policy.version and policy.version.startswith("sha256:")
    assert audit.record["ledger_before"]["strike_points"] == {"standard": 1}
    assert audit.record["ledger_after"]["strike_points"] == {"standard": 2}
    assert audit.record["ledger_after"]["status"] == "suspended"
    for o in second.outputs:
        if o.kind == "enforcement":
            assert o.record["rule_id"] == "standard-2-suspend-24h"


def test_state_survives_encode_decode(core):
    state = offend(core, 3)[-1].state.flush_to_dicts()
    bases = {name: getattr(state, name).base for name in MAP_NAMES}
    assert UserState.decode(state.encode(), bases) == state
    # Every map value survives the codec the job stores it with.
    for name, (encode, decode) in CODECS.items():
        for value in bases[name].values():
            assert decode(encode(value)) == value


def test_replay_is_byte_identical(policy):
    from devtools.generator import AlertGenerator

    lines = list(AlertGenerator(seed=3, users=50, start_ms=T0_MS, step_ms=3_600_000).payloads(3000))
    lines.append(alert_bytes(alert_id="extra"))
    first = "\n".join(run(policy, lines))
    second = "\n".join(run(policy, list(lines)))
    assert first == second and first.count('"kind":"enforcement"') > 100


def test_simulator_state_matches_between_timer_and_no_timer_paths(policy):
    # Expiry via timers or via event-time checks at decision time gives the same decisions.
    alerts = [make_alert(alert_id=f"a-{i}", stream_id=f"s-{i}", event_time_ms=T0_MS + i * 40 * DAY_MS)
              for i in range(6)]
    with_timers = Simulator(policy)
    ids_timers = [o.record.get("penalty_id") for a in alerts for o in with_timers.on_alert(a) if o.kind == "enforcement"]
    from rules.core import PenaltyCore

    core, state, ids_plain = PenaltyCore(policy), None, []
    for a in alerts:
        step = core.on_alert(state, a)
        state = step.state
        ids_plain += [o.record["penalty_id"] for o in step.outputs if o.kind == "enforcement"]
    assert ids_timers == ids_plain
