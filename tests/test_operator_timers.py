"""The Flink operator's timer path (jobs/operators.py) without a JVM: dict-backed keyed state and a
timer service that fires the way Flink's does (the watermark is set first, then every timer at or
before it fires, including timers registered while firing).

After a watermark jump (event time held through a catch-up, then released) each user's timer
fires once and forgets everything due, with the same outputs and end state as one firing per due
time."""

from __future__ import annotations

import gc
import heapq
import json

import pytest

from connectors import bundles
from jobs.config import DEFAULT_RULES
from jobs.operators import PenaltyFunction, encode_record
from rules.core import CoreConfig

from .conftest import alert_bytes

T0_MS = 1_790_000_000_000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MIN_WATERMARK = -(2**63)


class Keyed:
    def __init__(self, ctx):
        self.ctx, self.data = ctx, {}

    def _mine(self) -> dict:
        return self.data.setdefault(self.ctx.key, {})


class FakeMapState(Keyed):
    def get(self, key):
        return self._mine().get(key)

    def put(self, key, value):
        self._mine()[key] = value

    def put_all(self, entries):
        self._mine().update(entries)

    def remove(self, key):
        self._mine().pop(key, None)

    def clear(self):
        self.data.pop(self.ctx.key, None)

    def items(self):
        return list(self._mine().items())


class FakeValueState(Keyed):
    def value(self):
        return self._mine().get("v")

    def update(self, value):
        self._mine()["v"] = value

    def clear(self):
        self.data.pop(self.ctx.key, None)


class FakeContext:
    """Context and timer service in one: a key, a watermark and a heap of (time, key) timers."""

    def __init__(self):
        self.key, self.watermark = None, MIN_WATERMARK
        self.timers: list[tuple[int, str]] = []
        self.live: set[tuple[int, str]] = set()
        self.fired = 0

    def get_current_key(self):
        return self.key

    def key_switch(self):
        """What the operator's KeySwitch does to the JVM's keyed backend: the current key."""
        ctx = self

        class Switch:
            def switch(self, user_id):
                ctx.key = user_id

            def assume(self, user_id):
                assert ctx.key == user_id

            def reset(self):
                pass

        return Switch()

    def timer_service(self):
        return self

    def current_watermark(self):
        return self.watermark

    def register_event_time_timer(self, time_ms):
        if (time_ms, self.key) not in self.live:
            self.live.add((time_ms, self.key))
            heapq.heappush(self.timers, (time_ms, self.key))

    def delete_event_time_timer(self, time_ms):
        self.live.discard((time_ms, self.key))

    def get_state(self, descriptor):
        return FakeValueState(self)

    def get_map_state(self, descriptor):
        return FakeMapState(self)

    def advance(self, operator, watermark_ms):
        """Flink's advanceWatermark: everything the firings output, as (kind, key, value)."""
        self.watermark = watermark_ms
        out = []
        while self.timers and self.timers[0][0] <= watermark_ms:
            time_ms, key = heapq.heappop(self.timers)
            if (time_ms, key) not in self.live:
                continue
            self.live.discard((time_ms, key))
            self.key, self.fired = key, self.fired + 1
            for batch in operator.on_timer(time_ms, self):
                out += [tuple(batch[i:i + 3]) for i in range(0, len(batch), 3) if batch[i] != "count"]
        return out


@pytest.fixture
def operator_and_context():
    thresholds = gc.get_threshold()
    ctx = FakeContext()
    operator = PenaltyFunction(DEFAULT_RULES.read_bytes(), DEFAULT_RULES.name, CoreConfig(), ("alerts", "decisions"),
                               65_536, 300_000)
    operator.open(ctx)
    yield operator, ctx
    gc.unfreeze()  # open() tunes the collector for the TaskManager's interpreter
    gc.set_threshold(*thresholds)


def hate_speech_alerts(prefix: str, count: int) -> list[dict]:
    """Confident hate speech on different streams 3 h apart: one incident and one strike each,
    each with its own due times (seen id and incident a day later, strike 90 days later)."""
    return [{"alert_id": f"{prefix}{i}", "stream_id": f"s{i}", "violation_type": "hate_speech", "confidence": 0.97,
             "event_time_ms": T0_MS + i * 3 * HOUR_MS} for i in range(count)]


def bundle_of(user_id: str, offset: int, payload: bytes, timestamp_ms: int) -> bytes:
    return bundles.pack([bundles.BundledRecord(0, 0, offset, timestamp_ms, len(payload), user_id, payload)])


def feed(operator, ctx, user_id: str, alerts: list[dict]) -> None:
    ctx.key = "shard"  # the bundle's key; the operator switches to each record's user
    for offset, fields in enumerate(alerts):
        payload = alert_bytes(user_id=user_id, **fields)
        list(operator.process_element(bundle_of(user_id, offset, payload, fields["event_time_ms"]), ctx))


def test_a_watermark_jump_fires_each_user_once_and_forgets_everything_due(operator_and_context):
    operator, ctx = operator_and_context
    alerts = hate_speech_alerts("a", 3)  # warning, 24 h suspension, 7 d suspension
    feed(operator, ctx, "u-1", alerts)
    core = operator.core
    held = operator.users.load("u-1").state
    assert len(held.strikes) == 3 and ctx.fired == 0  # the watermark was held: nothing fired yet

    # What one firing per due time (the old chain) ends with, computed with the core alone.
    end_ms = T0_MS + 400 * DAY_MS
    chained, chained_out = held, []
    while chained is not None and chained.next_wake_ms() is not None and chained.next_wake_ms() <= end_ms:
        step = core.on_timer(chained, "u-1", chained.next_wake_ms())
        chained, chained_out = step.state, chained_out + [(o.kind, o.key) for o in step.outputs]

    out = ctx.advance(operator, end_ms)
    assert ctx.fired == 1
    assert [(kind, key) for kind, key, _ in out] == chained_out
    assert sum(1 for kind, _, value in out if kind == "audit" and '"strike_expired"' in value) == 3
    after = operator.users.load("u-1").state
    assert after is None and chained is None  # everything was due: the user's state is gone
    assert not ctx.live  # and no timer is left


def test_strikes_of_different_expiries_expire_in_expiry_order_in_one_firing(operator_and_context):
    operator, ctx = operator_and_context
    # A standard strike (90 days) first, then a low one (spam: 30 days): created in one order,
    # expiring in the other. Each audit carries the ledger of its own expiry.
    alerts = [*hate_speech_alerts("c", 1),
              {"alert_id": "c-spam", "stream_id": "s9", "violation_type": "spam", "confidence": 0.97,
               "event_time_ms": T0_MS + DAY_MS}]
    feed(operator, ctx, "u-3", alerts)
    held = operator.users.load("u-3").state
    chained, chained_out = held, []
    while chained is not None and chained.next_wake_ms() is not None:
        step = operator.core.on_timer(chained, "u-3", chained.next_wake_ms())
        chained, chained_out = step.state, chained_out + [(o.kind, o.key, encode_record(o.record)) for o in step.outputs]
    out = ctx.advance(operator, T0_MS + 400 * DAY_MS)
    assert ctx.fired == 1 and out == chained_out
    expired = [json.loads(value) for kind, _, value in out if kind == "audit"]
    assert [e["detail"]["violation_type"] for e in expired] == ["spam", "hate_speech"]
    assert len(expired[0]["ledger_before"]["active_strikes"]) == 2
    assert len(expired[1]["ledger_before"]["active_strikes"]) == 1


def test_a_small_advance_forgets_only_what_is_due(operator_and_context):
    operator, ctx = operator_and_context
    alerts = hate_speech_alerts("b", 2)
    feed(operator, ctx, "u-2", alerts)
    # Past the first alert's seen id and incident (a day), before the second's.
    ctx.advance(operator, T0_MS + DAY_MS + HOUR_MS)
    state = operator.users.load("u-2").state
    assert "b0" not in state.seen and "b1" in state.seen
    assert min(time_ms for time_ms, _ in ctx.live) > T0_MS + DAY_MS + HOUR_MS
    # A retry of the second alert is still a duplicate; the first is past the dedupe horizon.
    retry = alert_bytes(user_id="u-2", **alerts[1])
    [batch] = operator.process_element(bundle_of("u-2", 9, retry, T0_MS + 2 * DAY_MS), ctx)
    assert ("count", "duplicate", "") in [tuple(batch[i:i + 3]) for i in range(0, len(batch), 3)]


def test_an_erasure_leaves_only_a_ban_in_force_and_no_timer(operator_and_context):
    from connectors import signing
    from jobs.user_store import LEDGER_KEY
    from sinks.appeals import make_decision

    from .conftest import TEST_KEYS

    operator, ctx = operator_and_context
    feed(operator, ctx, "u-1", hate_speech_alerts("a", 3) + [
        {"alert_id": "c1", "stream_id": "s9", "violation_type": "csam", "confidence": 0.99,
         "event_time_ms": T0_MS + 10 * HOUR_MS}])
    assert operator.users.load("u-1").state.banned and ("u-1" in {k for _, k in ctx.live})
    feed(operator, ctx, "u-2", hate_speech_alerts("b", 1))
    for user_id in ("u-1", "u-2"):
        record = make_decision("erasure", "erased", user_id, "erasure", "ops-1", T0_MS + DAY_MS)
        payload = json.dumps(signing.sign(record, TEST_KEYS)).encode()
        ctx.key = "shard"
        bundle = bundles.pack([bundles.BundledRecord(1, 0, 9, T0_MS + DAY_MS, len(payload), user_id, payload)])
        list(operator.process_element(bundle, ctx))
    entries = operator.writes.state.data
    assert list(entries["u-1"]) == [LEDGER_KEY] and "u-2" not in entries  # nothing else of either is stored
    assert not any(user in ("u-1", "u-2") for _, user in ctx.live)  # and no timer is left
    operator.writes.user = "u-1"  # what the operator sets before it loads a user
    left = operator.users.load("u-1").state
    assert left.banned and left.strikes == ()
