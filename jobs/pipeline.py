"""Wiring of the penalty job: build_pipeline(env, config) builds the graph, nothing runs here.

    alerts + decisions topics --one source (read_committed, per-partition watermarks)-->
      --key by user_id (in the JVM)--> penalty decisions (one Python operator: parse and
                                       validate, dedupe, incidents, ledger, rules, appeals and
                                       review verdicts; one array of outputs per input record)
          --> route outputs (in the JVM: records to their stream, metric events to counters)
          --> enforcement | notifications | audit | review | alerts.dlq   (one Kafka sink each)

Every source, stateful operator and sink has a fixed uid: changing one breaks savepoints. (Jobs
before the one-source layout had a "decisions-source" too: see docs/operations.md, upgrades.)
"""

from __future__ import annotations

from typing import NamedTuple

from pyflink.datastream import DataStream, StreamExecutionEnvironment

from connectors import kafka
from jobs.config import JobConfig
from jobs.operators import OUTPUT_TYPE, PenaltyFunction
from rules.core import CoreConfig

UIDS = {
    "source": "alerts-source",
    "key": "key-by-user",
    "penalty": "penalty-decisions",
    "route": "route-outputs",
    "enforcement": "sink-enforcement",
    "notifications": "sink-notifications",
    "audit": "sink-audit",
    "review": "sink-review",
    "dlq": "sink-dlq",
}


class Outputs(NamedTuple):
    enforcement: DataStream
    notifications: DataStream
    audit: DataStream
    review: DataStream
    dlq: DataStream


def decide(raw: DataStream, config: JobConfig, policy_bytes: bytes, policy_file: str,
           shadow: tuple[bytes, str] | None = None) -> Outputs:
    """Raw records of the alerts and decisions topics (RAW_ALERT_TYPE, with event-time
    timestamps) -> the five output streams of Row(key, value). Shared by the Kafka job and the
    mini-cluster tests."""
    core_config = CoreConfig(config.dedupe_horizon_ms, config.incident_window_ms)
    decided = (
        kafka.keyed_by_user(raw, "key by user", UIDS["key"])
        .process(PenaltyFunction(policy_bytes, policy_file, core_config, config.topics.decisions,
                                 config.max_payload_bytes, config.max_future_skew_ms, *(shadow or (None, None)),
                                 state_cache_users=config.state_cache_users),
                 output_type=OUTPUT_TYPE)
        .uid(UIDS["penalty"]).name("penalty decisions")
    )
    routed = kafka.route_outputs(decided, "route outputs", UIDS["route"])
    return Outputs(
        enforcement=routed,
        notifications=kafka.routed_side_output(routed, "notification"),
        audit=kafka.routed_side_output(routed, "audit"),
        review=kafka.routed_side_output(routed, "review"),
        dlq=kafka.routed_side_output(routed, "dlq"),
    )


def build_pipeline(env: StreamExecutionEnvironment, config: JobConfig, policy_bytes: bytes, policy_file: str,
                   shadow: tuple[bytes, str] | None = None) -> None:
    topics = config.topics
    source = kafka.alert_source(
        config.bootstrap_servers, [topics.alerts, topics.decisions], config.group_id, config.starting_offsets,
        config.bounded, config.max_payload_bytes, config.max_future_skew_ms,
    )
    raw = env.from_source(
        source, kafka.alert_watermarks(config.max_out_of_orderness_ms, config.idleness_ms), "alerts source"
    ).uid(UIDS["source"])
    outputs = decide(raw, config, policy_bytes, policy_file, shadow)

    def sink(stream, name: str, topic: str) -> None:
        stream.sink_to(kafka.key_value_sink(
            config.bootstrap_servers, topic, config.exactly_once,
            f"{config.transactional_id_prefix}-{name}", config.transaction_timeout_ms,
        )).uid(UIDS[name]).name(f"{name} sink")

    sink(outputs.enforcement, "enforcement", topics.enforcement)
    sink(outputs.notifications, "notifications", topics.notifications)
    sink(outputs.audit, "audit", topics.audit)
    sink(outputs.review, "review", topics.review)
    sink(outputs.dlq, "dlq", topics.dlq)
