"""The job's one Python operator, a thin adapter around the pure code: parse the raw record
(alert or moderator decision), load the user's state, call the core, store state, set the one
timer the core asks for, emit what it returned. No decision logic lives here.

Keying happens in the JVM (connectors/java UserKeyExtractor), so no Python runs before this
operator: each record crosses from Java to Python once."""

from __future__ import annotations

import gc

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from connectors.alerts import (
    MAX_RAW_BYTES,
    Alert,
    Rejection,
    Source,
    parse_alert,
)
from connectors.decisions import parse_decision
from jobs.user_store import (
    ENTRIES_STATE,
    LEGACY_LEDGER_STATE,
    LEGACY_MAP_STATES,
    CachedUser,
    LegacyStates,
    UserStore,
)
from rules import compact_json, shadow
from rules.core import CoreConfig, PenaltyCore
from rules.loader import parse_policy
from rules.records import Output, dead_letter

# Everything one input record produced, as one array of (kind, a, b) string triples: output
# records (kind = rules.records kind, key, value), counter increments ("count", name, "") and
# decision times ("latency", event_time_ms, ""). The JVM routes it (connectors/java OutputRouter):
# one crossing from Python per input record instead of one per output record and per counter.
OUTPUT_TYPE = Types.BASIC_ARRAY(Types.STRING())


# One encoder for every record, built once (rules/compact_json.py).
encode_record = compact_json.encoder(sort_keys=True)


DECISION_KINDS = ("enforcement", "review")


def emit(out: list, output: Output) -> None:
    out += (output.kind, output.key, encode_record(output.record))


def count(out: list, name: str) -> None:
    out += ("count", name, "")


# Core events that dead-letter an alert are counted as the rejection they are, so that every DLQ
# record shows up in `alerts_rejected{reason=...}` (the DLQ-rate alert and its breakdown).
EVENT_COUNTERS = {"too_late": "alerts_rejected.too_late"}


# Each record allocates thousands of short-lived objects and almost never a reference cycle, and
# the read cache holds many long-lived ones. At CPython's default (a young collection every 700
# allocations, the older generations re-scanned every 10 and 100 of those) cyclic GC took ~12% of
# the operator's Python time (a dict-backed harness: ~92 -> ~81 us per record). Collect the young
# generation every 50,000 allocations, and keep what open() built (modules, rules) out of every
# scan. The interpreter is the TaskManager's (thread mode), so this is process-wide: the job is
# the only Python there.
GC_THRESHOLDS = (50_000, 50, 100)


def tune_gc() -> None:
    # Collect first: after a failover in the same TaskManager the previous operator's garbage
    # cycles would otherwise be frozen with the rest and never freed.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class PenaltyFunction(KeyedProcessFunction):
    """Keyed by user_id: parse and validate, dedupe, incidents, strike ledger and rules, appeals
    and review verdicts. Input: raw records (RAW_ALERT_TYPE) of the alerts and decisions topics."""

    def __init__(self, policy_bytes: bytes, policy_file: str, core_config: CoreConfig, decisions_topic: str,
                 max_payload_bytes: int, max_future_skew_ms: int,
                 shadow_bytes: bytes | None = None, shadow_file: str | None = None, state_cache_users: int = 0):
        self.policy_bytes = policy_bytes
        self.policy_file = policy_file
        self.core_config = core_config
        self.decisions_topic = decisions_topic
        self.max_payload_bytes = max_payload_bytes
        self.max_future_skew_ms = max_future_skew_ms
        self.shadow_bytes = shadow_bytes
        self.shadow_file = shadow_file
        self.state_cache_users = state_cache_users

    def open(self, runtime_context: RuntimeContext):
        policy = parse_policy(self.policy_bytes, self.policy_file)
        self.core = PenaltyCore(policy, self.core_config)
        self.shadow = None
        if self.shadow_bytes is not None:
            self.shadow = PenaltyCore(parse_policy(self.shadow_bytes, self.shadow_file), self.core_config)
        # The user's ledger and maps of seen ids, incidents and expiry queues in one MapState, read an
        # entry at a time and written with one put_all per step (jobs/user_store.py): a step's cost
        # does not grow with history. The older layout's states are registered so that a restore
        # from an older savepoint moves each user over on first touch.
        string_map = MapStateDescriptor(ENTRIES_STATE, Types.STRING(), Types.STRING())
        legacy = LegacyStates(
            runtime_context.get_state(ValueStateDescriptor(LEGACY_LEDGER_STATE, Types.STRING())),
            {name: runtime_context.get_map_state(MapStateDescriptor(state_name, Types.STRING(), Types.STRING()))
             for name, state_name in LEGACY_MAP_STATES.items()},
        )
        self.users = UserStore(runtime_context.get_map_state(string_map), self.state_cache_users,
                               self.core_config.incident_window_ms, legacy)
        tune_gc()

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        out: list[str] = []
        self._process(value, ctx, out)
        if out:
            yield out

    def _process(self, value, ctx: KeyedProcessFunction.Context, out: list) -> None:
        topic, partition, offset, timestamp_ms, payload, size, _ = value
        source = Source(topic, partition, offset, timestamp_ms)
        is_decision = topic == self.decisions_topic
        if is_decision:
            count(out, "decisions_in")
            result = parse_decision(payload, source)
        else:
            count(out, "alerts_in")
            result = parse_alert(payload, source, size, self.max_payload_bytes, self.max_future_skew_ms)
        if not isinstance(result, Rejection) and result.user_id != ctx.get_current_key():
            # Keyed in Java from the payload: only a payload the two JSON readers read differently
            # gets here. Never decide it under another user's state.
            result = Rejection("schema", f"user_id: the key extractor read {ctx.get_current_key()!r}",
                               bytes(payload)[:MAX_RAW_BYTES], size, source, None)
        if isinstance(result, Rejection):
            count(out, "decisions_rejected" if is_decision else f"alerts_rejected.{result.reason}")
            emit(out, dead_letter(
                reason=result.reason, detail=result.detail, raw=result.raw, size_bytes=result.size_bytes,
                topic=topic, partition=partition, offset=offset, timestamp_ms=timestamp_ms, user_id=result.user_id,
            ))
            return
        cached = self.users.load(result.user_id)
        previous = cached.state
        if is_decision:
            self._apply(cached, self.core.on_decision(previous, result), ctx, out)
            return
        count(out, "alerts_valid")
        alert: Alert = result
        watermark_ms = ctx.timer_service().current_watermark()
        step = self.core.on_alert(previous, alert, watermark_ms)
        if any(output.kind in DECISION_KINDS for output in step.outputs):
            out += ("latency", str(alert.event_time_ms), "")
        audit = None
        if self.shadow is not None:  # reads the state before the live step is written
            audit, event = shadow.compare(self.shadow, self.core.policy.version, previous, alert, watermark_ms, step)
            if audit is not None:
                count(out, event)
        self._apply(cached, step, ctx, out)
        if audit is not None:
            emit(out, audit)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        user_id = ctx.get_current_key()
        cached = self.users.load(user_id)
        out: list[str] = []
        # Flink sets the watermark before it fires what is due, so everything up to it can go in
        # this one firing: after a jump (the watermark held through a catch-up, then released)
        # each user's timer fires once, not once per due time in a chain of re-registrations.
        now_ms = max(timestamp, ctx.timer_service().current_watermark())
        self._apply(cached, self.core.on_timer(cached.state, user_id, now_ms), ctx, out)
        if out:
            yield out

    def _apply(self, cached: CachedUser, step, ctx, out: list) -> None:
        previous = cached.state
        if step.state is not previous:
            if step.state is None:
                self.users.clear(cached)
            else:
                self.users.store(cached, step.state)
        # One timer per user, at the next expiry: move it when the core's answer changes.
        old_wake = previous.next_wake_ms() if previous is not None else None
        new_wake = step.state.next_wake_ms() if step.state is not None else None
        if old_wake != new_wake:
            timers = ctx.timer_service()
            if old_wake is not None:
                timers.delete_event_time_timer(old_wake)
            if new_wake is not None:
                timers.register_event_time_timer(new_wake)
        for name in step.events:
            count(out, EVENT_COUNTERS.get(name, name))
        for output in step.outputs:
            emit(out, output)
