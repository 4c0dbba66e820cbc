"""The per-alert cost of the pure Python decision path, without a JVM.

    python -m devtools.bench core [--alerts 200000] [--profile] [--guard]

Does per record what the penalty operator (jobs/operators.py) does, over the throughput bench's
mix (devtools/generator.py): parse and validate the payload, load the user through
jobs.user_store.UserStore (over a dict-backed fake of Flink's MapState, with the job's cache
size), call the core, store the step, move the user's one timer, encode every output record.
Timers fire as the watermark (highest event time so far minus the out-of-orderness) passes them;
at the bench's 50 ms step none is due within a run (strikes and ids live for days). Counters
and the JVM crossing are left out: what is measured is the decision path itself.

The first 10% warms up (caches, interpreter); the rest is timed. A second run, untimed, hashes
every encoded output and every stored state entry in order: `sha256` is the oracle that an
optimisation changed no byte. `--profile` adds a third run under cProfile (so that profiling
never distorts the timing) and lists the functions with the most own time.

`--guard` also times the detector guard stage (jobs/guard_operator.py) over the same payloads, in
bundles of `GUARD_BUNDLE` records: walk the bundle, its own parse of each alert, the guard's count
and verdict, its state writes once per bundle (`guard_us_per_alert`: a cost on the guard's own
core, at parallelism 1, beside the decision path's).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import heapq
import json
import pstats
import sys
import time
from collections.abc import Callable

from connectors import bundles
from connectors.alerts import Rejection, Source, parse_alert
from devtools.generator import AlertGenerator
from jobs.config import REPO_ROOT, JobConfig
from jobs.user_store import UserStore, apply_step
from rules import compact_json
from rules.core import CoreConfig, PenaltyCore
from rules.guard import DetectorGuard
from rules.loader import load_policy
from rules.records import dead_letter

DEFAULT_ALERTS = 200_000
# Fixed, so that every run sees the same payloads (the throughput bench starts at "now").
START_MS = 1_700_000_000_000
TOPIC = "alerts"

# The operator's encoder (jobs/operators.py `encode_record`), copied: importing the operator
# module would import pyflink.
encode_record = compact_json.encoder(sort_keys=True)


class FakeEntries:
    """Flink's MapState[str, str] of the current key: one dict per user. `record`, when set, sees
    every write in order (the oracle run hashes them)."""

    def __init__(self, record: Callable[[str], None] | None = None):
        self.users: dict[str, dict[str, str]] = {}
        self.current: dict[str, str] = {}
        self.key = ""
        self.record = record

    def set_current_key(self, user_id: str) -> None:
        self.key = user_id
        self.current = self.users.setdefault(user_id, {})

    def get(self, key: str) -> str | None:
        return self.current.get(key)

    def put_all(self, entries: dict[str, str]) -> None:
        self.current.update(entries)
        if self.record is not None:
            for key, value in entries.items():
                self.record(f"put {self.key} {key} {value}")

    def remove(self, key: str) -> None:
        self.current.pop(key, None)
        if self.record is not None:
            self.record(f"remove {self.key} {key}")

    def clear(self) -> None:
        self.current.clear()
        if self.record is not None:
            self.record(f"clear {self.key}")


class Timers:
    """One event-time timer per user, as the operator keeps them, fired in time order."""

    def __init__(self) -> None:
        self.wake: dict[str, int] = {}
        self.heap: list[tuple[int, str]] = []  # stale entries skipped when popped

    def move(self, user_id: str, old_ms: int | None, new_ms: int | None) -> None:
        if old_ms == new_ms:
            return
        if new_ms is None:
            self.wake.pop(user_id, None)
        else:
            self.wake[user_id] = new_ms
            heapq.heappush(self.heap, (new_ms, user_id))

    def due(self, watermark_ms: int):
        heap = self.heap
        while heap and heap[0][0] <= watermark_ms:
            wake, user_id = heapq.heappop(heap)
            if self.wake.get(user_id) == wake:
                del self.wake[user_id]
                yield wake, user_id


class Operator:
    """What PenaltyFunction does per alert and per timer, minus Flink (and minus counters)."""

    def __init__(self, entries: FakeEntries, emit: Callable[[str], None] | None = None):
        config = JobConfig()
        self.config = config
        self.core = PenaltyCore(load_policy(config.rules_path),
                                CoreConfig(config.dedupe_horizon_ms, config.incident_window_ms))
        self.entries = entries
        self.users = UserStore(entries, config.state_cache_users, config.incident_window_ms)
        self.timers = Timers()
        self.emit = emit
        self.highest_ms: int | None = None
        self.outputs = 0
        self.timers_fired = 0

    def process(self, payload: bytes, offset: int, timestamp_ms: int) -> None:
        source = Source(TOPIC, 0, offset, timestamp_ms)
        result = parse_alert(payload, source, len(payload), self.config.max_payload_bytes,
                             self.config.max_future_skew_ms)
        if isinstance(result, Rejection):
            self._emit([dead_letter(
                reason=result.reason, detail=result.detail, raw=result.raw, size_bytes=result.size_bytes,
                topic=TOPIC, partition=0, offset=offset, timestamp_ms=timestamp_ms, user_id=result.user_id,
            )])
            return
        # The watermark this record sees: what came before it, less the out-of-orderness.
        watermark_ms = None if self.highest_ms is None else self.highest_ms - self.config.max_out_of_orderness_ms
        heap = self.timers.heap
        if watermark_ms is not None and heap and heap[0][0] <= watermark_ms:  # a timer is due (rare)
            for wake, user_id in self.timers.due(watermark_ms):
                self._timer(user_id, max(wake, watermark_ms))
        t = result.event_time_ms
        self.highest_ms = t if self.highest_ms is None else max(self.highest_ms, t)
        self.entries.set_current_key(result.user_id)
        cached = self.users.load(result.user_id)
        self._apply(result.user_id, cached, self.core.on_alert(cached.state, result, watermark_ms))

    def _timer(self, user_id: str, now_ms: int) -> None:
        self.timers_fired += 1
        self.entries.set_current_key(user_id)
        cached = self.users.load(user_id)
        self._apply(user_id, cached, self.core.on_timer(cached.state, user_id, now_ms))

    def _apply(self, user_id: str, cached, step) -> None:
        self.timers.move(user_id, *apply_step(self.users, cached, step))
        self._emit(step.outputs)

    def _emit(self, outputs) -> None:
        self.outputs += len(outputs)
        emit = self.emit
        for output in outputs:
            text = encode_record(output.record)
            if emit is not None:
                emit(f"out {output.kind} {output.key} {text}")


GUARD_BUNDLE = 100  # records per bundle into the guard: ~4.6k alerts/s flushed every 20 ms


class GuardStage:
    """What GuardFunction does per bundle, minus Flink: its MapState is a dict."""

    def __init__(self):
        config = JobConfig()
        self.config = config
        self.guard = DetectorGuard.of(load_policy(config.rules_path))
        self.entries: dict[str, str] = {}
        self.guarded = 0
        self.guard_records = 0

    def process_bundle(self, bundle: bytes) -> bytes:
        guard, guarded, outputs = self.guard, [], []
        for pos, record in bundles.positioned(bundle):
            alert = parse_alert(record.payload, Source(TOPIC, record.partition, record.offset, record.timestamp_ms),
                                record.size, self.config.max_payload_bytes, self.config.max_future_skew_ms)
            if isinstance(alert, Rejection) or alert.user_id != record.user_id:
                continue
            verdict = guard.on_alert(alert)
            if verdict.guarded:
                guarded.append(pos)
            outputs += verdict.outputs
        puts, removes = guard.take_writes()
        self.entries.update(puts)
        for key in removes:
            del self.entries[key]
        self.guarded += len(guarded)
        self.guard_records += len(outputs)
        return bundles.rewritten(bundle, guarded, None)


def _guard_bundles(payloads: list[bytes], produced_ms: int) -> list[bytes]:
    out = []
    for start in range(0, len(payloads), GUARD_BUNDLE):
        records = []
        for offset in range(start, min(start + GUARD_BUNDLE, len(payloads))):
            payload = payloads[offset]
            try:
                user = str(json.loads(payload)["user_id"])
            except Exception:  # noqa: BLE001 - malformed payloads: no user, as the JVM's extractor reads them
                user = ""
            records.append(bundles.BundledRecord(0, 0, offset, produced_ms, len(payload), user, payload))
        out.append(bundles.pack(records))
    return out


def measure_guard(payloads: list[bytes], produced_ms: int) -> dict:
    packed = _guard_bundles(payloads, produced_ms)
    warmup = len(packed) // 10
    stage = GuardStage()
    for bundle in packed[:warmup]:
        stage.process_bundle(bundle)
    t0, cpu0 = time.perf_counter_ns(), time.process_time_ns()
    for bundle in packed[warmup:]:
        stage.process_bundle(bundle)
    elapsed_ns, cpu_ns = time.perf_counter_ns() - t0, time.process_time_ns() - cpu0
    timed = max(1, len(payloads) - warmup * GUARD_BUNDLE)
    return {"guard_us_per_alert": round(elapsed_ns / 1000 / timed, 2),
            "guard_cpu_us_per_alert": round(cpu_ns / 1000 / timed, 2),
            "guard_detectors": len(stage.guard.detectors), "guarded": stage.guarded,
            "guard_records": stage.guard_records, "guard_state_entries": len(stage.entries)}


def _payloads(alerts: int) -> list[bytes]:
    generator = AlertGenerator(seed=7, users=100_000, zipf_s=1.0, step_ms=50, start_ms=START_MS)
    return list(generator.payloads(alerts))


def _tune_gc() -> None:
    # As the operator's open() does (jobs/operators.py tune_gc, GC_THRESHOLDS): its cost per
    # record depends on it.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _run(payloads: list[bytes], operator: Operator, start: int, stop: int, produced_ms: int) -> None:
    process = operator.process
    for offset in range(start, stop):
        process(payloads[offset], offset, produced_ms)


def measure(alerts: int = DEFAULT_ALERTS, profile: bool = False, guard: bool = False) -> dict:
    payloads = _payloads(alerts)
    # Produced after the last event time, as in the throughput bench (pre-produced input).
    produced_ms = START_MS + (alerts + 1) * 50
    warmup = alerts // 10

    _tune_gc()
    timed = Operator(FakeEntries())
    _run(payloads, timed, 0, warmup, produced_ms)
    t0, cpu0 = time.perf_counter_ns(), time.process_time_ns()
    _run(payloads, timed, warmup, alerts, produced_ms)
    elapsed_ns, cpu_ns = time.perf_counter_ns() - t0, time.process_time_ns() - cpu0
    timed_alerts = max(1, alerts - warmup)
    # CPU time beside wall time: on a shared machine the wall figure also counts the time this
    # process waited for a core.
    result = {"alerts": alerts, "us_per_alert": round(elapsed_ns / 1000 / timed_alerts, 2),
              "cpu_us_per_alert": round(cpu_ns / 1000 / timed_alerts, 2),
              "outputs": timed.outputs, "timers_fired": timed.timers_fired}
    del timed
    gc.collect()

    digest = hashlib.sha256()

    def record(line: str) -> None:
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")

    oracle = Operator(FakeEntries(record), record)
    _run(payloads, oracle, 0, alerts, produced_ms)
    result["sha256"] = digest.hexdigest()
    del oracle
    gc.collect()

    if guard:
        result.update(measure_guard(payloads, produced_ms))
        gc.collect()

    if profile:
        profiler = cProfile.Profile()
        profiled = Operator(FakeEntries())
        profiler.enable()
        _run(payloads, profiled, 0, alerts, produced_ms)
        profiler.disable()
        result["profile"] = _top(profiler, 12)
    return result


def _top(profiler: cProfile.Profile, count: int) -> list[dict]:
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    total = sum(entry[2] for entry in stats.values()) or 1.0
    ranked = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:count]
    root = str(REPO_ROOT) + "/"
    return [{"function": f"{file.replace(root, '')}:{line}({name})", "own_pct": round(100 * entry[2] / total, 1)}
            for (file, line, name), entry in ranked]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.bench core", description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=DEFAULT_ALERTS)
    parser.add_argument("--profile", action="store_true", help="add a cProfile run (untimed) and its top functions")
    parser.add_argument("--guard", action="store_true", help="also time the detector guard stage, per alert")
    args = parser.parse_args(argv)
    if args.alerts < 10:
        parser.error("--alerts must be at least 10")
    print(json.dumps(measure(args.alerts, args.profile, args.guard)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
