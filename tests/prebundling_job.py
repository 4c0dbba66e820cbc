"""The penalty job as it ran before bundling, for the upgrade test (tests/test_stack_state_migration.py):
raw records keyed by user id in the JVM, one record per call into the Python operator, the same
uids, state layout (format 4) and timers. Everything else is the current job.

    python tests/prebundling_job.py [penalty_job flags]

Run as a script: cloudpickle ships the classes below by value to the TaskManager's Python.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors import bundles, kafka
from jobs import penalty_job, pipeline
from jobs.operators import OUTPUT_TYPE, PenaltyFunction
from rules.core import CoreConfig


class KeyedByFlink:
    """Before bundling Flink set each record's key itself: nothing to switch."""

    def switch(self, user_id: str) -> None:
        pass

    def assume(self, user_id: str) -> None:
        pass

    def reset(self) -> None:
        pass


class PerRecordFunction(PenaltyFunction):
    def open(self, runtime_context):
        super().open(runtime_context)
        self.keys = KeyedByFlink()
        self.writes.switch = self.keys.switch
        print("operator reading one record per call", flush=True)  # the test checks the operator ran

    def process_element(self, value, ctx):
        topic, partition, offset, timestamp_ms, payload, size, _ = value
        index = self.topics.index(topic) if topic in self.topics else -1
        record = bundles.BundledRecord(index, partition, offset, timestamp_ms, size, ctx.get_current_key(),
                                       bytes(payload))
        out: list[str] = []
        timers = ctx.timer_service()
        self._process(record, timers.current_watermark(), out)
        self.writes.flush(timers)
        self.counts.emit(out)
        if out:
            yield out


def decide(raw, config, policy_bytes, policy_file, shadow=None):
    core_config = CoreConfig(config.dedupe_horizon_ms, config.incident_window_ms)
    topics = (config.topics.alerts, config.topics.decisions)
    decided = (
        kafka.keyed_by_user(raw, "key by user", "key-by-user")
        .process(PerRecordFunction(policy_bytes, policy_file, core_config, topics, config.max_payload_bytes,
                                   config.max_future_skew_ms, *(shadow or (None, None)),
                                   state_cache_users=config.state_cache_users),
                 output_type=OUTPUT_TYPE)
        .uid(pipeline.UIDS["penalty"]).name("penalty decisions")
    )
    return kafka.route_outputs(decided, "route outputs", pipeline.UIDS["route"])


if __name__ == "__main__":
    pipeline.decide = decide
    sys.exit(penalty_job.main())
