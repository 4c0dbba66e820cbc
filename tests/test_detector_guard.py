"""The detector guard (rules/guard.py) through the decision core and `rules simulate`: windows,
baseline, ceiling, cool-down, operator release, severe categories, and a flood."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import simulate
from rules.guard import BUCKET_MS, DetectorGuard
from rules.loader import RuleFileError, parse_policy

from .conftest import DEFAULT_RULES, REPO, T0_MS, alert_bytes, make_alert
from .conftest import TEST_KEYS as TEST_KEYS_
from .test_rules_cli import rules_cli

MINUTE_MS = BUCKET_MS
T0 = T0_MS - T0_MS % MINUTE_MS  # a minute boundary, so window arithmetic in the tests is plain

# The default policy's categories with a small guard: window 10m, baseline 60m, cool-down 20m;
# enforcements: ceiling 3 (floor 1, ratio 2); alerts: ceiling 6 (floor 2).
GUARD = """
detector_guard:
  window: 10m
  baseline: 60m
  cool_down: 20m
  default:
    ratio: 2
    alerts: {floor: 2, ceiling: 6}
    enforcements: {floor: 1, ceiling: 3}
  detectors:
    big-det: {alerts: {ceiling: 1000}, enforcements: {ceiling: 100}}
"""


def small_policy(guard: str = GUARD):
    text = DEFAULT_RULES.read_text()
    text = text[:text.index("\ndetector_guard:")] + guard
    return parse_policy(text.encode(), "small.yaml")


@pytest.fixture(scope="module")
def small():
    return small_policy()


def run(policy, alerts, order="event_time") -> list[dict]:
    lines = [json.dumps(a.to_json_dict()).encode() for a in alerts]
    return [json.loads(line) for line in simulate.run(policy, lines, order=order)]


def flood(n, start_ms=T0, step_ms=1000, detector="det-1", violation_type="hate_speech", confidence=0.95):
    return [make_alert(alert_id=f"{detector}-{i}", user_id=f"u-{i}", stream_id=f"s-{i}", detector_id=detector,
                       violation_type=violation_type, confidence=confidence, event_time_ms=start_ms + i * step_ms)
            for i in range(n)]


def kinds(out, output_kind, **match):
    return [r["record"] for r in out if r["kind"] == output_kind and all(r["record"].get(k) == v for k, v in match.items())]


def guard_audits(out):
    return [(r["detail"]["detector_id"], r["outcome"], r["event_time_ms"])
            for r in kinds(out, "audit", kind="detector_guard")]


def test_loader_reads_the_guard_and_per_detector_overrides(small):
    guard = small.detector_guard
    assert (guard.window_ms, guard.baseline_ms, guard.cool_down_ms) == (600_000, 3_600_000, 1_200_000)
    assert guard.limits_for("det-1") == guard.default
    big = guard.limits_for("big-det")
    assert (big.enforcements_floor, big.enforcements_ceiling, big.alerts_floor, big.alerts_ceiling, big.ratio) == (
        1, 100, 2, 1000, 2.0)
    assert parse_policy(DEFAULT_RULES.read_bytes()).detector_guard.default.enforcements_ceiling == 2000
    assert small_policy("").detector_guard is None


def test_bans_stop_at_the_ceiling_and_the_rest_go_to_urgent_review(small):
    out = run(small, flood(8))
    # The ceiling is 3 enforcements in the window: the 4th trips the guard (counts 4 > 3).
    assert len(kinds(out, "enforcement")) == 3
    reviews = kinds(out, "review")
    assert [r["user_id"] for r in reviews] == [f"u-{i}" for i in range(3, 8)]
    assert {(r["priority"], r["reason"], r["rule_id"]) for r in reviews} == {("urgent", "detector_guard", "detector_guard")}
    assert all(r["actions_taken"] == [] for r in reviews)
    assert guard_audits(out) == [("det-1", "tripped", T0 + 3000)]
    trip = kinds(out, "audit", kind="detector_guard")[0]
    assert trip["user_id"] == "" and trip["rule_id"] == "detector_guard"
    assert trip["detail"] | {} == {"detector_id": "det-1", "alert_id": "det-1-3", "window_ms": 600_000,
                                   "window_end_ms": T0 + MINUTE_MS, "alerts": 4, "alert_limit": 6,
                                   "enforcements": 4, "enforcement_limit": 3}
    notices = kinds(out, "notification", topic="detector_guard_tripped")
    assert [(n["recipient_role"], n["recipient_id"], n["detail"]["detector_id"]) for n in notices] == [
        ("moderator", "queue:detector_guard", "det-1")]
    # The guarded alerts are still deduplicated and audited like any review.
    decisions = kinds(out, "audit", kind="decision", outcome="review")
    assert len(decisions) == 5 and all(d["detail"]["reason"] == "detector_guard" for d in decisions)
    # Other detectors are not affected.
    other = run(small, flood(8) + [make_alert(alert_id="x", user_id="v", detector_id="det-2", event_time_ms=T0 + 9000)])
    assert [e["user_id"] for e in kinds(other, "enforcement")] == ["u-0", "u-1", "u-2", "v"]


def test_alerts_count_too_and_retries_count(small):
    # Below the enforce band (review band): no enforcements, but the alert ceiling is 6.
    out = run(small, flood(6, confidence=0.7))
    assert guard_audits(out) == []
    retry = make_alert(alert_id="det-1-0", user_id="u-0", stream_id="s-0", detector_id="det-1", confidence=0.7,
                       event_time_ms=T0 + 6000)
    out = run(small, flood(6, confidence=0.7) + [retry])
    assert guard_audits(out) == [("det-1", "tripped", T0 + 6000)]
    # Tripped on alerts, review-band alerts still go to their own band's review (normal priority).
    assert {r["priority"] for r in kinds(out, "review")} == {"normal"}


def test_the_window_slides(small):
    # 3 enforcements every 10 minutes never exceed 3 in any 10-minute window...
    spaced = flood(12, step_ms=200_000)
    assert guard_audits(run(small, spaced)) == [] and len(kinds(run(small, spaced), "enforcement")) == 12
    # ...4 within ten minutes do.
    assert guard_audits(run(small, flood(4, step_ms=149_000))) == [("det-1", "tripped", T0 + 3 * 149_000)]


def test_baseline_limit_is_ratio_times_the_average_with_a_floor(small):
    guard = DetectorGuard(small, small.detector_guard)
    # big-det: ceiling 100 enforcements. 70 minutes of history at 1 enforcement per minute: the
    # baseline (60 minutes before the window) averages 10 per 10-minute window, so the limit is
    # min(100, max(1, 2 x 10)) = 20.
    for minute in range(70):
        alert = make_alert(alert_id=f"b-{minute}", detector_id="big-det", event_time_ms=T0 + minute * MINUTE_MS)
        assert not guard.on_alert(alert).guarded
    counts = guard.detectors["big-det"]
    assert guard.limits("big-det", counts).enforcements == 20
    # The window (minutes 61-70) holds 9 + this minute's alerts: the 12th in minute 70 makes 21.
    verdicts = [guard.on_alert(make_alert(alert_id=f"c-{i}", detector_id="big-det",
                                          event_time_ms=T0 + 70 * MINUTE_MS + i)).guarded for i in range(12)]
    assert verdicts == [False] * 11 + [True]
    # Without a full baseline only the ceiling counts: a new detector gets 100, not the floor.
    fresh = DetectorGuard(small, small.detector_guard)
    assert [fresh.on_alert(a).guarded for a in flood(101, detector="big-det")][-2:] == [False, True]


def test_cool_down_releases_and_enforcement_resumes(small):
    tripping = flood(5)  # trips at the 4th (T0 + 3 s); over again at the 5th (T0 + 4 s)
    # 20 minutes after the last alert over the limit, the window (10 min) is empty again.
    early = make_alert(alert_id="late-1", user_id="w-1", stream_id="w", detector_id="det-1",
                       event_time_ms=T0 + 4000 + 1_199_999)
    after = make_alert(alert_id="late-2", user_id="w-2", stream_id="w2", detector_id="det-1",
                       event_time_ms=T0 + 4000 + 1_200_000)
    out = run(small, tripping + [early, after])
    assert guard_audits(out) == [("det-1", "tripped", T0 + 3000), ("det-1", "released", T0 + 1_204_000)]
    assert [e["user_id"] for e in kinds(out, "enforcement")] == ["u-0", "u-1", "u-2", "w-2"]
    release = kinds(out, "audit", kind="detector_guard", outcome="released")[0]
    assert release["detail"]["released_by"] == "cool_down" and release["detail"]["tripped_at_ms"] == T0 + 3000
    assert kinds(out, "notification", topic="detector_guard_released")


def test_a_silent_detector_is_released_by_other_detectors_alerts(small):
    other = make_alert(alert_id="o-1", user_id="o", detector_id="det-2", event_time_ms=T0 + 4000 + 1_200_000)
    out = run(small, flood(5) + [other])
    assert guard_audits(out)[-1] == ("det-1", "released", T0 + 1_204_000)


def test_still_over_the_limit_after_the_cool_down_stays_tripped(small):
    # A detector flooding for 40 minutes stays tripped: every alert over the limit restarts the cool-down.
    out = run(small, flood(400, step_ms=6000))
    assert guard_audits(out) == [("det-1", "tripped", T0 + 18_000)]
    assert len(kinds(out, "enforcement")) == 3


def test_operator_release(small):
    guard = DetectorGuard(small, small.detector_guard)
    for alert in flood(4):
        verdict = guard.on_alert(alert)
    assert verdict.guarded and verdict.changes == [("det-1", True)]
    assert guard.release("det-2", T0 + 5000, "op-1") == []  # not tripped: nothing
    out = guard.release("det-1", T0 + 5000, "op-1")
    assert [(o.kind, o.record.get("outcome") or o.record["topic"]) for o in out] == [
        ("audit", "released"), ("notification", "detector_guard_released")]
    assert out[0].record["detail"]["released_by"] == "operator:op-1"
    # Its window is counted again from the release: 3 more enforcements pass, the 4th trips it again.
    again = [guard.on_alert(make_alert(alert_id=f"n-{i}", detector_id="det-1", event_time_ms=T0 + 6000 + i))
             for i in range(4)]
    assert [v.guarded for v in again] == [False, False, False, True] and again[3].changes == [("det-1", True)]
    assert guard.detectors["det-1"].total == [4, 4]  # the baseline keeps none of the flood


def test_severe_stops_the_stream_but_never_bans_through_a_tripped_detector(small):
    out = run(small, flood(5, detector="vision-csam-v2", violation_type="csam", confidence=0.99))
    bans = [e for e in kinds(out, "enforcement") if e["action"] == "ban"]
    assert [b["user_id"] for b in bans] == ["u-0", "u-1", "u-2"]
    guarded = [e for e in kinds(out, "enforcement") if e["rule_id"] == "detector_guard"]
    assert [(e["user_id"], e["action"]) for e in guarded] == [("u-3", "stop_stream"), ("u-4", "stop_stream")]
    reviews = kinds(out, "review", reason="detector_guard")
    assert [(r["user_id"], r["priority"], r["actions_taken"]) for r in reviews] == [
        ("u-3", "urgent", ["stop_stream"]), ("u-4", "urgent", ["stop_stream"])]


def test_a_guarded_review_can_be_confirmed_by_a_moderator(small):
    from connectors.decisions import Decision
    from rules.core import PenaltyCore

    core = PenaltyCore(small)
    alert = make_alert()
    step = core.on_alert(None, alert, guarded=True)
    review = next(o.record for o in step.outputs if o.kind == "review")
    assert review["reason"] == "detector_guard" and not any(o.kind == "enforcement" for o in step.outputs)
    verdict = Decision("d-1", "review", "confirmed", "u-1", review["incident_id"], "mod-7", T0 + 60_000)
    confirmed = core.on_decision(step.state, verdict)
    assert [o.record["action"] for o in confirmed.outputs if o.kind == "enforcement"] == ["warning"]


def test_a_healthy_detector_upgrades_a_guarded_incident(small):
    guarded = flood(4)  # u-3's alert is guarded: review
    confirm = make_alert(alert_id="h-1", user_id="u-3", stream_id="s-3", detector_id="healthy", event_time_ms=T0 + 5000)
    out = run(small, guarded + [confirm])
    assert [e["user_id"] for e in kinds(out, "enforcement")] == ["u-0", "u-1", "u-2", "u-3"]


def test_input_order_is_deterministic(small):
    alerts = flood(30, step_ms=100)
    alerts[5], alerts[9] = alerts[9], alerts[5]
    lines = [json.dumps(a.to_json_dict()).encode() for a in alerts]
    first = list(simulate.run(small, lines, order="input"))
    assert first == list(simulate.run(small, lines, order="input"))


BAD_GUARD = """rule_set: bad
categories:
  standard:
    types: [hate_speech]
    strike_expiry: 90d
    bands:
      - {id: detector_guard, min_confidence: 0.0, decision: review}
unknown_types: {id: unknown, decision: review}
detector_guard:
  window: 90s
  cool_down: 30m
  default:
    ratio: 0.5
    alerts: {floor: 10, ceiling: 5}
    enforcemnts: {floor: 1, ceiling: 3}
  detectors:
    d1: {alerts: {ceiling: -1}}
"""


def test_guard_problems_are_listed_with_lines_golden(tmp_path):
    path = tmp_path / "bad_guard.yaml"
    path.write_text(BAD_GUARD)
    result = rules_cli("validate", str(path))
    assert result.returncode == 2
    expected = (REPO / "tests" / "data" / "bad_guard.expected").read_text().replace("FILE", str(path))
    assert result.stdout.decode() == expected
    with pytest.raises(RuleFileError):
        parse_policy(BAD_GUARD.encode())


def test_catalog_lists_the_guard_keys():
    catalog = json.loads(rules_cli("catalog", "--json").stdout)
    assert set(catalog["detector_guard"]) == {"window", "baseline", "cool_down", "default", "detectors"}
    assert set(catalog["guard_limits"]) == {"ratio", "alerts", "enforcements"}
    assert set(catalog["guard_counts"]) == {"floor", "ceiling"}
    assert "detector_guard" in catalog["file"]


FLOOD_USERS = 5000


def flood_lines(users: int = FLOOD_USERS) -> list[bytes]:
    """A bad model push: one detector flags every stream it sees, 10 a second, at high confidence."""
    return [alert_bytes(alert_id=f"nsfw-v9-{i:06d}", user_id=f"user-{i:06d}", stream_id=f"live-{i:06d}",
                        detector_id="vision-nsfw-v9", violation_type="nudity", confidence=0.97,
                        event_time_ms=T0 + i * 100)
            for i in range(users)]


def flood_figures(out: list[dict]) -> dict:
    return {"alerts": FLOOD_USERS, "enforcements": len(kinds(out, "enforcement")),
            "guard_reviews": len(kinds(out, "review", reason="detector_guard")),
            "trips": len(kinds(out, "audit", kind="detector_guard", outcome="tripped"))}


def test_flood_through_rules_simulate_stops_bans_at_the_limit():
    result = rules_cli("simulate", "--alerts", "-", stdin=b"\n".join(flood_lines()))
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.decode().splitlines()]
    # The default policy: a new detector's ceiling is 2,000 enforcements per 10 minutes.
    assert flood_figures(out) == {"alerts": 5000, "enforcements": 2000, "guard_reviews": 3000, "trips": 1}
    assert {e["action"] for e in kinds(out, "enforcement")} == {"warning"}
    assert kinds(out, "audit", kind="detector_guard")[0]["detail"]["alert_id"] == "nsfw-v9-002000"


def test_state_entries_written_and_read_back_give_the_same_verdicts(small):
    """The job stores the guard as map entries, written after every bundle: a guard restored from
    them decides the rest of the input as one that never stopped."""
    alerts = flood(40, step_ms=40_000) + flood(30, start_ms=T0 + 3_000_000, step_ms=2000, detector="det-2")
    whole = DetectorGuard(small, small.detector_guard)
    expected = [whole.on_alert(a) for a in alerts]
    stored: dict[str, str] = {}
    guard = DetectorGuard(small, small.detector_guard)
    got = []
    for index, alert in enumerate(alerts):
        if index % 7 == 0:  # a restore: a new guard from the stored entries
            guard = DetectorGuard(small, small.detector_guard)
            guard.load_entries(stored.items())
        got.append(guard.on_alert(alert))
        puts, removes = guard.take_writes()
        stored.update(puts)
        for key in removes:
            del stored[key]
    assert got == expected
    assert any(v.guarded for v in got) and any(not v.guarded for v in got)
    assert len([k for k in stored if k.startswith("b")]) <= 2 * (10 + 60)


def test_trip_and_release_reach_the_moderators_detector_guard_queue(small):
    import fakeredis

    from sinks.notifier import Notifier, SmtpConfig

    client = fakeredis.FakeRedis()
    notifier = Notifier(client, SmtpConfig(), b"s" * 32, "https://appeal.invalid")
    out = run(small, flood(5) + [make_alert(alert_id="o", user_id="o", detector_id="det-2",
                                            event_time_ms=T0 + 4000 + 1_200_000)])
    for notice in kinds(out, "notification", recipient_id="queue:detector_guard"):
        assert notifier.deliver(notice)
    entries = client.xrange("penalty:moderation:detector_guard")
    fields = [{k.decode(): v.decode() for k, v in e[1].items()} for e in entries]
    assert [(f["kind"], f["detector_id"], f["subject"]) for f in fields] == [
        ("detector_guard", "det-1", "Detector guard tripped: det-1"),
        ("detector_guard", "det-1", "Detector guard released: det-1")]
    assert "#penaltydetectorguardtripped" in fields[0]["body"]
    # Never in the review console's queues.
    assert not client.exists("penalty:moderation:urgent")


def test_guard_records_match_their_published_schemas(small):
    from connectors import record_schemas

    out = run(small, flood(5, detector="vision-csam-v2", violation_type="csam", confidence=0.99)
              + [make_alert(alert_id="o", user_id="o", detector_id="det-2", event_time_ms=T0 + 4000 + 1_200_000)])
    seen = set()
    for r in out:
        record_schemas.validate(r["kind"], r["record"])
        seen.add((r["kind"], r["record"].get("kind") or r["record"].get("topic") or r["record"].get("reason")))
    assert {("audit", "detector_guard"), ("notification", "detector_guard_tripped"),
            ("notification", "detector_guard_released"), ("review", "detector_guard")} <= seen


def test_the_guard_stage_marks_alerts_in_place_and_appends_its_outputs():
    from connectors import bundles

    records = [bundles.BundledRecord(i % 2, 0, i, T0, 3, f"u-{i}", b"{%d}" % i) for i in range(4)]
    packed = bundles.pack(records)
    positions = [pos for pos, _ in bundles.positioned(packed)]
    assert bundles.rewritten(packed, [], None) is packed
    extra = bundles.BundledRecord(bundles.GUARD_OUTPUTS, -1, -1, -1, 2, "", b"[]")
    out = list(bundles.records(bundles.rewritten(packed, [positions[2]], extra)))
    assert [r.topic_index for r in out] == [0, 1, bundles.GUARDED_ALERT, 1, bundles.GUARD_OUTPUTS]
    assert [r.payload for r in out[:4]] == [r.payload for r in records] and out[4] == extra


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.sampled_from(["d1", "d2"]), st.floats(0.0, 1.0)), max_size=80))
def test_window_counts_kept_as_alerts_come_equal_a_recount(events):
    """Out of order, jumps of hours, bucket pruning: the running window sum is a recount's."""
    policy = small_policy()
    guard = DetectorGuard(policy, policy.detector_guard)
    for index, (minute, detector, confidence) in enumerate(events):
        guard.on_alert(make_alert(alert_id=f"a-{index}", detector_id=detector, confidence=confidence,
                                  event_time_ms=T0 + minute * 3 * MINUTE_MS // 2))
        for counts in guard.detectors.values():
            recount = [0, 0]
            for bucket, slot in counts.buckets.items():
                if counts.latest_bucket - guard.window < bucket <= counts.latest_bucket:
                    recount = [recount[0] + slot[0], recount[1] + slot[1]]
            assert counts.window == recount


def release_line(detector="det-1", operator="op-1", at_ms=T0 + 5000, **changes) -> bytes:
    from connectors import signing
    from connectors.guard_release import make_release

    record = signing.sign(make_release(detector, operator, at_ms), TEST_KEYS_) | changes
    return json.dumps(record).encode()


def test_an_operator_release_record_in_rules_simulate(small):
    """A signed release on the decisions topic releases the guard at once: the flood detector's next
    alert 11 minutes later (its window empty again) penalises, where the cool-down (30 minutes after
    its last alert over the limit) would still hold it."""
    lines = [json.dumps(a.to_json_dict()).encode() for a in flood(5)]
    later = make_alert(alert_id="later", user_id="w", stream_id="w", detector_id="det-1",
                       event_time_ms=T0 + 4000 + 11 * MINUTE_MS)
    tail = [json.dumps(later.to_json_dict()).encode()]
    held = [json.loads(x) for x in simulate.run(small, lines + tail, decision_keys=TEST_KEYS_)]
    assert "w" not in [e["user_id"] for e in kinds(held, "enforcement")]
    released = [json.loads(x) for x in simulate.run(small, lines + [release_line()] + tail, decision_keys=TEST_KEYS_)]
    assert guard_audits(released) == [("det-1", "tripped", T0 + 3000), ("det-1", "released", T0 + 5000)]
    audit = kinds(released, "audit", kind="detector_guard", outcome="released")[0]
    assert audit["detail"]["released_by"] == "operator:op-1"
    assert "w" in [e["user_id"] for e in kinds(released, "enforcement")]
    # Unsigned, forged or malformed releases change nothing and are reported like bad decisions.
    for bad, reason in ((release_line(signature="0" * 64), "invalid_signature"),
                        (release_line(detector_id=""), "invalid_decision")):
        out = [json.loads(x) for x in simulate.run(small, lines + [bad] + tail, decision_keys=TEST_KEYS_)]
        assert [r["record"]["reason"] for r in out if r["kind"] == "rejection"] == [reason]
        assert guard_audits(out) == [("det-1", "tripped", T0 + 3000)]


def test_release_guard_cli_prints_a_signed_release():
    from connectors.guard_release import GuardRelease, parse_release

    result = rules_cli("release-guard", "--detector", "det-1", "--operator", "op-1", "--event-time-ms", str(T0))
    assert result.returncode == 0, result.stderr
    assert parse_release(result.stdout.strip(), TEST_KEYS_) == GuardRelease(
        json.loads(result.stdout)["guard_release_id"], "det-1", "op-1", T0)


def test_without_a_guard_a_release_is_a_bad_decision_as_in_the_job():
    no_guard = small_policy("")
    out = [json.loads(x) for x in simulate.run(no_guard, [release_line()], decision_keys=TEST_KEYS_)]
    assert [r["kind"] for r in out] == ["rejection"]
