"""The detector guard stage: a thin adapter around rules/guard.py, one Python operator at
parallelism 1 ahead of the users' key, because a detector's counts span every user.

It receives every input record, in arrival order, in bundles for its one subtask (the JVM's
ShardBundler cut for a single key group, so a bundle keeps the order records arrived in), parses
each alert as the decision operator will (connectors/alerts.py, the same limits), lets the guard
count it, and passes the bundle on with:

- the topic index of each alert whose detector is tripped set to GUARDED_ALERT, which tells the
  decision operator to decide it with `guarded=True`;
- one record of topic index GUARD_OUTPUTS appended when the guard had something to say: its trip
  and release records and gauge values as (kind, a, b) triples in a JSON array, which the decision
  operator adds to its own outputs (so they reach the one router and sink like any output).

Then the JVM splits the bundle into records again (BundleSplitter) and bundles them by the users'
subtasks for the decision operator. The guard's counts live in keyed state under the one shard
key this operator ever sees: a string map, written per bundle for the detectors that changed.
"""

from __future__ import annotations

import orjson
from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from connectors import bundles
from connectors.alerts import MAX_RAW_BYTES, Rejection, Source, parse_alert
from connectors.guard_release import ReleaseRefused, is_release, parse_release
from connectors.signing import keys_from_env
from jobs.operators import emit
from rules.guard import DetectorGuard
from rules.loader import parse_policy
from rules.records import dead_letter

GUARD_STATE = "guard-detectors"


def gauge(detector_id: str, tripped: bool) -> tuple[str, str, str]:
    """The router's gauge `detector_guard_tripped{detector=...}`: (gauge, group \\t value \\t name, value)."""
    return ("gauge", f"detector\t{detector_id}\tguard_tripped", "1" if tripped else "0")


class GuardFunction(KeyedProcessFunction):
    def __init__(self, policy_bytes: bytes, policy_file: str, topics: tuple[str, str], max_payload_bytes: int,
                 max_future_skew_ms: int):
        self.policy_bytes = policy_bytes
        self.policy_file = policy_file
        self.alerts_topic, self.decisions_topic = topics
        self.max_payload_bytes = max_payload_bytes
        self.max_future_skew_ms = max_future_skew_ms

    def open(self, runtime_context: RuntimeContext):
        policy = parse_policy(self.policy_bytes, self.policy_file)
        self.guard = DetectorGuard.of(policy)
        self.state = runtime_context.get_map_state(MapStateDescriptor(GUARD_STATE, Types.STRING(), Types.STRING()))
        self.loaded = False
        self.announced: set[str] = set()  # detectors whose gauge this run has set
        # Releases are signed like decisions: each TaskManager reads the keys from its environment.
        self.release_keys = keys_from_env()

    def process_element(self, value, ctx: KeyedProcessFunction.Context):
        guard = self.guard
        out: list[str] = []
        if not self.loaded:  # the first bundle after a start or restore: the state's key is set now
            guard.load_entries(self.state.items())
            self.loaded = True
        guarded: list[int] = []
        handled: list[int] = []
        for pos, record in bundles.positioned(value):
            topic_index, partition, offset, timestamp_ms, size, key, payload = record
            if topic_index == 1 and is_release(payload):
                handled.append(pos)
                self._release(record, out)
                continue
            if topic_index != 0:
                continue
            alert = parse_alert(payload, Source(self.alerts_topic, partition, offset, timestamp_ms), size,
                                self.max_payload_bytes, self.max_future_skew_ms)
            if isinstance(alert, Rejection) or alert.user_id != key:
                continue  # the decision operator dead-letters it; the guard does not count it
            verdict = guard.on_alert(alert)
            if verdict.guarded:
                guarded.append(pos)
            for output in verdict.outputs:
                emit(out, output)
            for detector_id, tripped in verdict.changes:
                out += gauge(detector_id, tripped)
                self.announced.add(detector_id)
        for detector_id in guard.detectors.keys() - self.announced:  # every gauge from the start, at 0 or 1
            out += gauge(detector_id, detector_id in guard.tripped)
            self.announced.add(detector_id)
        puts, removes = guard.take_writes()
        if puts:
            self.state.put_all(puts)
        for key in removes:
            self.state.remove(key)
        extra = None
        if out:
            payload = orjson.dumps(out)
            extra = bundles.BundledRecord(bundles.GUARD_OUTPUTS, -1, -1, -1, len(payload), "", payload)
        yield bundles.rewritten(value, guarded, extra, tuple(handled))

    def _release(self, record: bundles.BundledRecord, out: list) -> None:
        """An operator's release (connectors/guard_release.py): applied, or dead-lettered as the
        decision operator dead-letters a bad decision."""
        out += ("count", "decisions_in", "")
        release = parse_release(record.payload, self.release_keys)
        if isinstance(release, ReleaseRefused):
            out += ("count", f"decisions_rejected.{release.reason}", "")
            raw = bytes(record.payload[:MAX_RAW_BYTES])
            emit(out, dead_letter(reason=release.reason, detail=release.detail, raw=raw, size_bytes=record.size,
                                  topic=self.decisions_topic, partition=record.partition, offset=record.offset,
                                  timestamp_ms=record.timestamp_ms, user_id=None))
            return
        outputs = self.guard.release(release.detector_id, release.event_time_ms, release.operator_id)
        for output in outputs:
            emit(out, output)
        if outputs:
            out += gauge(release.detector_id, False)
