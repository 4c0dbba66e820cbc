"""The job's one Python operator, a thin adapter around the pure code: for each record of a bundle,
parse it (alert or moderator decision), load the user's state, call the core, store state, set the
one timer the core asks for, and collect what it returned. No decision logic lives here.

Records arrive in bundles (connectors/bundles.py), packed in the JVM by ShardBundler: one bundle
per subtask of this operator, of the users whose key groups that subtask owns, keyed by a shard key
in the first of them, so Python is entered once per bundle and answers with one array of outputs
per bundle. Each user's state and timer stay keyed by the user id, as before bundling (savepoints
restore unchanged): the operator points the keyed backend at each record's user (`KeySwitch`),
which is legal because every user of a bundle is in a key group this subtask owns (the bundler is
built for the operator's parallelism and max parallelism; open() checks both).
"""

from __future__ import annotations

import gc

import orjson
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

from connectors import bundles
from connectors.alerts import (
    MAX_RAW_BYTES,
    Alert,
    Rejection,
    Source,
    parse_alert,
)
from connectors.decisions import parse_decision
from connectors.signing import keys_from_env
from jobs.bundle_writes import BundleWrites
from jobs.user_store import (
    ENTRIES_STATE,
    LEGACY_LEDGER_STATE,
    LEGACY_MAP_STATES,
    CachedUser,
    LegacyStates,
    UserStore,
    apply_step,
)
from rules import compact_json, shadow
from rules.core import CoreConfig, PenaltyCore
from rules.loader import parse_policy
from rules.records import Output, dead_letter

# Everything one bundle produced, as one array of (kind, a, b) string triples: output records
# (kind = rules.records kind, key, value), counter increments ("count", name, n; "" is 1) and
# decision times ("latency", event_time_ms, ""). The JVM routes it (connectors/java OutputRouter):
# one crossing from Python per bundle instead of one per output record and per counter.
OUTPUT_TYPE = Types.BASIC_ARRAY(Types.STRING())


# One encoder for every record, built once (rules/compact_json.py).
encode_record = compact_json.encoder(sort_keys=True)


DECISION_KINDS = ("enforcement", "review")


def emit(out: list, output: Output) -> None:
    out += (output.kind, output.key, encode_record(output.record))


class Counts(dict):
    """Counter increments of one bundle, emitted once each at its end."""

    def add(self, name: str) -> None:
        self[name] = self.get(name, 0) + 1

    def emit(self, out: list) -> None:
        for name, n in self.items():
            out += ("count", name, "" if n == 1 else str(n))
        self.clear()


# Core events that dead-letter a record are counted as the rejection they are, so that every DLQ
# record shows up in `alerts_rejected{reason=...}` or `decisions_rejected{reason=...}` (the
# DLQ-rate alert and its breakdown).
EVENT_COUNTERS = {"too_late": "alerts_rejected.too_late", "invalid_decision": "decisions_rejected.invalid_decision"}


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


def check_parallelism(runtime_context, parallelism: int | None, max_parallelism: int | None) -> None:
    """Refuse to run at a parallelism or max parallelism other than the bundles were cut for (None:
    not checked). A bundle holds the users of every key group one subtask owns at the parallelism
    it was cut for: at another, some of them belong to another subtask. (PyFlink 2.0's
    get_number_of_parallel_subtasks and get_max_number_of_parallel_subtasks call Java methods that
    moved to TaskInfo: read TaskInfo itself.)"""
    java = getattr(runtime_context, "_runtime_context", None)
    info = java.getTaskInfo() if java is not None else None
    if max_parallelism is not None:
        running = (info.getMaxNumberOfParallelSubtasks() if info is not None
                   else runtime_context.get_max_number_of_parallel_subtasks())
        if running != max_parallelism:
            raise RuntimeError(
                f"the operator runs with max parallelism {running} but its bundles were cut for {max_parallelism}: "
                "set pipeline.max-parallelism and --max-parallelism to the same value (the savepoint's)")
    if parallelism is not None:
        running = (info.getNumberOfParallelSubtasks() if info is not None
                   else runtime_context.get_number_of_parallel_subtasks())
        if running != parallelism:
            raise RuntimeError(
                f"the operator runs at parallelism {running} but its bundles were cut for {parallelism}: "
                "run the job with --parallelism set to the parallelism it runs at")


class KeySwitch:
    """Points the keyed state backend (state and timers) at one user: Row(user_id), the key Flink's
    own key-by gave each user before bundling. Only for users of a key group this subtask owns."""

    def __init__(self, backend, set_user):
        self.backend, self.set_user, self.current = backend, set_user, None

    @classmethod
    def of(cls, runtime_context) -> KeySwitch:
        # PyFlink keeps the Java keyed state backend behind its Python wrapper; no public accessor.
        backend = runtime_context._keyed_state_backend._keyed_state_backend
        # One call into the JVM per switch (connectors/java UserKeys; making the Row, setting its
        # field and setting the key from here were three). The class travels in the job's jars, so
        # it is loaded with the job's class loader and called on an instance.
        loader = runtime_context._runtime_context.getUserCodeClassLoader()
        helper = loader.loadClass("penalty.connectors.UserKeys").newInstance()
        return cls(backend, helper.setCurrentUser)

    def switch(self, user_id: str) -> None:
        if user_id != self.current:
            self.set_user(self.backend, user_id)
            self.current = user_id

    def assume(self, user_id: str) -> None:
        """Flink has set this user's key itself (a timer firing)."""
        self.current = user_id

    def reset(self) -> None:
        """Flink sets the key of the next record or timer itself; forget ours."""
        self.current = None


class PenaltyFunction(KeyedProcessFunction):
    """Bundles keyed by shard; per record, keyed by user_id: parse and validate, dedupe, incidents,
    strike ledger and rules, appeals and review verdicts. Input: bundles of raw records of the
    alerts and decisions topics (`topics`, in the bundler's topic order)."""

    def __init__(self, policy_bytes: bytes, policy_file: str, core_config: CoreConfig, topics: tuple[str, str],
                 max_payload_bytes: int, max_future_skew_ms: int,
                 shadow_bytes: bytes | None = None, shadow_file: str | None = None, state_cache_users: int = 0,
                 max_parallelism: int | None = None, parallelism: int | None = None):
        self.policy_bytes = policy_bytes
        self.policy_file = policy_file
        self.core_config = core_config
        self.topics = tuple(topics)
        self.max_payload_bytes = max_payload_bytes
        self.max_future_skew_ms = max_future_skew_ms
        self.shadow_bytes = shadow_bytes
        self.shadow_file = shadow_file
        self.state_cache_users = state_cache_users
        self.max_parallelism = max_parallelism
        self.parallelism = parallelism

    def open(self, runtime_context: RuntimeContext):
        check_parallelism(runtime_context, self.parallelism, self.max_parallelism)
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
        self.keys = runtime_context.key_switch() if hasattr(runtime_context, "key_switch") else KeySwitch.of(runtime_context)
        # Writes and timer moves wait for the end of the bundle: each user touched once per bundle.
        self.writes = BundleWrites(runtime_context.get_map_state(string_map), self.keys.switch)
        self.users = UserStore(self.writes, self.state_cache_users, self.core_config.incident_window_ms, legacy)
        self.counts = Counts()
        # Secrets never travel in the job graph: each TaskManager reads them from its environment.
        self.decision_keys = keys_from_env()
        tune_gc()

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        out: list[str] = []
        timers = ctx.timer_service()
        watermark_ms = timers.current_watermark()
        for record in bundles.records(value):
            self._process(record, watermark_ms, out)
        self.writes.flush(timers)
        self.keys.reset()
        self.counts.emit(out)
        if out:
            yield out

    def _process(self, record: bundles.BundledRecord, watermark_ms: int, out: list) -> None:
        topic_index, partition, offset, timestamp_ms, size, key, payload = record
        guarded = topic_index == bundles.GUARDED_ALERT  # an alert of a tripped detector (jobs/guard_operator.py)
        if guarded:
            topic_index = 0
        elif topic_index == bundles.GUARD_OUTPUTS:  # the guard stage's own outputs, passed on as they are
            out += orjson.loads(payload)
            return
        elif topic_index == bundles.GUARD_HANDLED:  # a guard release, applied by the guard stage
            return
        topic = self.topics[topic_index] if 0 <= topic_index < len(self.topics) else None
        source = Source(topic, partition, offset, timestamp_ms)
        counts = self.counts
        is_decision = topic_index == 1
        if is_decision:
            counts.add("decisions_in")
            result = parse_decision(payload, source, size, self.max_payload_bytes, self.decision_keys)
        else:
            counts.add("alerts_in")
            result = parse_alert(payload, source, size, self.max_payload_bytes, self.max_future_skew_ms)
        if not isinstance(result, Rejection) and result.user_id != key:
            # Keyed in Java from the payload: only a payload the two JSON readers read differently
            # gets here. Never decide it under another user's state.
            result = Rejection("schema", f"user_id: the key extractor read {key!r}",
                               bytes(payload)[:MAX_RAW_BYTES], size, source, None)
        if isinstance(result, Rejection):
            counts.add(f"decisions_rejected.{result.reason}" if is_decision else f"alerts_rejected.{result.reason}")
            emit(out, dead_letter(
                reason=result.reason, detail=result.detail, raw=result.raw, size_bytes=result.size_bytes,
                topic=topic, partition=partition, offset=offset, timestamp_ms=timestamp_ms, user_id=result.user_id,
            ))
            return
        self.writes.user = key
        cached = self.users.load(key)
        previous = cached.state
        if is_decision:
            self._apply(cached, self.core.on_decision(previous, result), out)
            return
        counts.add("alerts_valid")
        alert: Alert = result
        step = self.core.on_alert(previous, alert, watermark_ms, guarded)
        if any(output.kind in DECISION_KINDS for output in step.outputs):
            out += ("latency", str(alert.event_time_ms), "")
        audit = None
        if self.shadow is not None:  # reads the state before the live step is written
            audit, event = shadow.compare(self.shadow, self.core.policy.version, previous, alert, watermark_ms, step)
            if audit is not None:
                counts.add(event)
        self._apply(cached, step, out)
        if audit is not None:
            emit(out, audit)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        user_id = ctx.get_current_key()  # timers are registered under users' own keys
        self.keys.assume(user_id)
        self.writes.user = user_id
        cached = self.users.load(user_id)
        out: list[str] = []
        timers = ctx.timer_service()
        # Flink sets the watermark before it fires what is due, so everything up to it can go in
        # this one firing: after a jump (the watermark held through a catch-up, then released)
        # each user's timer fires once, not once per due time in a chain of re-registrations.
        now_ms = max(timestamp, timers.current_watermark())
        self._apply(cached, self.core.on_timer(cached.state, user_id, now_ms), out)
        self.writes.flush(timers)
        self.keys.reset()
        self.counts.emit(out)
        if out:
            yield out

    def _apply(self, cached: CachedUser, step, out: list) -> None:
        # One timer per user, at the next expiry: move it when the core's answer changes.
        old_wake, new_wake = apply_step(self.users, cached, step)
        if old_wake != new_wake:
            self.writes.move_timer(old_wake, new_wake)
        for name in step.events:
            self.counts.add(EVENT_COUNTERS.get(name, name))
        for output in step.outputs:
            emit(out, output)
