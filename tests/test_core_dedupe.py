"""Exact dedupe, cross-detector incidents, upgrades, late alerts and state release (pure core)."""

from __future__ import annotations

from rules.core import CoreConfig, PenaltyCore
from rules.simulate import Simulator

from .conftest import DAY_MS, T0_MS, make_alert


def kinds(outputs):
    return [(o.kind, o.record.get("action") or o.record.get("kind") or o.record.get("topic")) for o in outputs]


def test_retry_of_the_same_alert_is_dropped_and_counted(core):
    first = core.on_alert(None, make_alert())
    again = core.on_alert(first.state, make_alert())
    assert again.outputs == [] and again.events == ["duplicate"]
    assert again.state is first.state  # nothing to write back


def test_second_detector_within_the_window_merges_without_a_second_strike(core):
    first = core.on_alert(None, make_alert(alert_id="a-1", detector_id="d1"))
    second = core.on_alert(first.state, make_alert(alert_id="a-2", detector_id="d2", event_time_ms=T0_MS + 59_999))
    assert second.events == ["merged"]
    [audit] = second.outputs
    assert audit.record["kind"] == "merge" and audit.record["alert_ids"] == ["a-1", "a-2"]
    assert len(second.state.strikes) == 1
    assert second.state.all_incidents()[0].alert_ids == ("a-1", "a-2")


def test_same_type_after_the_window_is_a_new_incident(core):
    first = core.on_alert(None, make_alert(alert_id="a-1"))
    later = core.on_alert(first.state, make_alert(alert_id="a-2", event_time_ms=T0_MS + 60_000))
    assert "enforced" in later.events and len(later.state.strikes) == 2
    assert len(later.state.all_incidents()) == 2


def test_other_stream_or_type_is_a_separate_incident(core):
    first = core.on_alert(None, make_alert(alert_id="a-1"))
    other_type = core.on_alert(first.state, make_alert(alert_id="a-2", violation_type="nudity"))
    other_stream = core.on_alert(first.state, make_alert(alert_id="a-3", stream_id="s-2"))
    assert "enforced" in other_type.events and "enforced" in other_stream.events


def test_out_of_order_alert_before_the_first_merges_too(core):
    first = core.on_alert(None, make_alert(alert_id="a-1", event_time_ms=T0_MS))
    earlier = core.on_alert(first.state, make_alert(alert_id="a-0", event_time_ms=T0_MS - 30_000))
    assert earlier.events == ["merged"]


def test_review_upgraded_to_enforcement_inside_one_incident(core):
    review = core.on_alert(None, make_alert(alert_id="a-1", confidence=0.7))
    assert review.events[0] == "review" and not review.state.strikes
    upgrade = core.on_alert(review.state, make_alert(alert_id="a-2", confidence=0.97, event_time_ms=T0_MS + 5_000))
    assert upgrade.events[:3] == ["merged", "upgraded", "enforced"]
    [enforcement] = [o for o in upgrade.outputs if o.kind == "enforcement"]
    assert enforcement.record["action"] == "warning" and enforcement.record["cause"] == "upgrade:a-2"
    assert enforcement.record["incident_id"] == review.state.all_incidents()[0].incident_id
    assert len(upgrade.state.strikes) == 1
    # A third alert of the same incident cannot add a strike, whatever its confidence.
    third = core.on_alert(upgrade.state, make_alert(alert_id="a-3", confidence=0.99, event_time_ms=T0_MS + 6_000))
    assert third.events == ["merged"] and len(third.state.strikes) == 1


def test_a_lower_confidence_alert_never_downgrades(core):
    enforced = core.on_alert(None, make_alert(alert_id="a-1", confidence=0.99))
    low = core.on_alert(enforced.state, make_alert(alert_id="a-2", confidence=0.1, event_time_ms=T0_MS + 1))
    assert low.events == ["merged"] and low.state.all_incidents()[0].decision == "enforce"


def test_alert_beyond_the_horizon_behind_the_watermark_goes_to_dlq(core):
    late = core.on_alert(None, make_alert(event_time_ms=T0_MS), watermark_ms=T0_MS + DAY_MS)
    [dlq] = late.outputs
    assert dlq.kind == "dlq" and dlq.record["reason"] == "too_late"
    assert '"alert_id":"a-1"' in dlq.record["raw"]  # the alert itself travels, nothing is lost
    assert late.events == ["too_late"]
    # Late but within the horizon: decided normally.
    ok = core.on_alert(None, make_alert(event_time_ms=T0_MS), watermark_ms=T0_MS + DAY_MS - 1)
    assert "enforced" in ok.events


def test_dedupe_horizon_is_configurable(policy):
    short = PenaltyCore(policy, CoreConfig(dedupe_horizon_ms=1_000, incident_window_ms=500))
    first = short.on_alert(None, make_alert(alert_id="a-1", confidence=0.3))
    timer = short.on_timer(first.state, "u-1", T0_MS + 1_000)
    assert timer.state is not None and "a-1" not in timer.state.seen


def test_state_is_released_after_the_horizon():
    # A dismissed alert leaves only dedupe memory; its timer frees everything.
    from rules.loader import load_policy

    from .conftest import DEFAULT_RULES

    sim = Simulator(load_policy(DEFAULT_RULES))
    for i in range(100):
        sim.on_alert(make_alert(alert_id=f"a-{i}", user_id=f"u-{i}", confidence=0.2, event_time_ms=T0_MS + i))
    assert len(sim.states) == 100
    sim.advance_to(T0_MS + 99 + 60_000 + DAY_MS - 1)
    assert len(sim.states) == 1  # the last one is due a millisecond later
    sim.advance_to(T0_MS + 99 + 60_000 + DAY_MS)
    assert sim.states == {} and sim.timers == {}


def test_one_timer_per_user_at_the_next_expiry(core):
    step = core.on_alert(None, make_alert())
    state = step.state
    assert state.next_wake_ms() == T0_MS + DAY_MS  # the dedupe entry, before the 90-day strike
    after = core.on_timer(state, "u-1", T0_MS + DAY_MS)
    assert after.state.next_wake_ms() == T0_MS + 60_000 + DAY_MS  # incident memory
    after = core.on_timer(after.state, "u-1", T0_MS + 60_000 + DAY_MS)
    assert after.state.next_wake_ms() == T0_MS + 90 * DAY_MS  # the strike


def test_a_step_touches_a_few_entries_whatever_the_history(policy):
    # A repeat offender with thousands of alert ids and incidents inside the horizon: one more
    # alert reads and writes a handful of map entries, and the ledger value does not grow.
    sim = Simulator(policy)
    for i in range(3_000):
        sim.on_alert(make_alert(alert_id=f"a-{i}", stream_id=f"s-{i % 7}", confidence=0.2,
                                event_time_ms=T0_MS + i * 1_000))
    state = sim.states["u-1"]
    assert len(state.seen.as_dict()) == 3_000 and len(state.all_incidents()) > 300
    ledger_bytes = len(state.encode())
    step = sim.core.on_alert(state, make_alert(alert_id="a-new", stream_id="s-new", confidence=0.2,
                                               event_time_ms=T0_MS + 3_000_000))
    changes = sum(len(getattr(step.state, name).changes) for name in ("seen", "incidents", "incident_slots", "expiry"))
    assert changes == 5  # id, incident, its slot, two queue entries
    assert len(step.state.encode()) <= ledger_bytes + 10
    # The timer forgets, oldest first, what is due: never earlier, at most a window later (an
    # id queued behind its incident's entry waits for it).
    now_ms = T0_MS + DAY_MS + 120_000
    seen = sim.core.on_timer(state, "u-1", now_ms).state.seen
    for i in range(3_000):
        due_ms = T0_MS + i * 1_000 + DAY_MS
        if due_ms > now_ms:
            assert f"a-{i}" in seen
        elif due_ms + 60_000 <= now_ms:
            assert f"a-{i}" not in seen
