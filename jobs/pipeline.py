"""Wiring of the penalty job: build_pipeline(env, config) builds the graph, nothing runs here.

    alerts + decisions topics --one source (read_committed, per-partition watermarks)-->
      [--detector guard (with a detector_guard in the policy: one Python operator at parallelism 1
        over bundles of every record in arrival order; marks the alerts of tripped detectors and
        adds its trip/release records) --split into records again (in the JVM)-->]
      --bundle by shard (in the JVM: one bundle per subtask of the decision operator, of the users
        whose key groups it owns, keyed by a shard key in the first of them)-->
        penalty decisions (one Python operator, entered once per bundle: per record,
                      under the user's own key, parse and validate, dedupe, incidents, ledger,
                      rules, appeals and review verdicts; one array of outputs per bundle)
          --> route outputs (in the JVM: Row(kind, key, value) records, metric events to counters)
          --> one Kafka sink: enforcement | notifications | audit | review | alerts.dlq by kind

Every source, stateful operator and sink has a fixed uid: changing one breaks savepoints. (Jobs
before the one-source layout had a "decisions-source" too, and jobs before the one-sink layout a
sink per topic: see docs/operations.md, upgrades.)
"""

from __future__ import annotations

from pyflink.datastream import DataStream, StreamExecutionEnvironment

from connectors import kafka
from jobs.config import JobConfig, Topics
from jobs.guard_operator import GuardFunction
from jobs.operators import OUTPUT_TYPE, PenaltyFunction
from rules.core import CoreConfig
from rules.loader import parse_policy

UIDS = {
    "source": "alerts-source",
    "guard_bundle": "bundle-for-guard",  # stateless
    "guard": "detector-guard",
    "guard_split": "split-guarded-bundles",  # stateless
    "bundle": "bundle-by-shard",  # stateless; jobs before bundling had "key-by-user" here
    "penalty": "penalty-decisions",
    "route": "route-outputs",
    "sink": "sink-outputs",
}


def topics_by_kind(topics: Topics) -> dict[str, str]:
    """Output record kind (rules/records.py) -> topic."""
    return {"enforcement": topics.enforcement, "notification": topics.notifications, "audit": topics.audit,
            "review": topics.review, "dlq": topics.dlq}


# Topic names (never a Kafka topic's: those cannot hold a NUL) for the topic indexes the guard stage
# writes into its bundles (connectors/bundles.py), so they survive the split and the next bundler.
GUARD_MARKERS = ("\x00guarded-alert", "\x00guard-outputs", "\x00guard-handled")


def guard_stage(raw: DataStream, config: JobConfig, policy_bytes: bytes, policy_file: str,
                topics: tuple[str, str]) -> DataStream:
    """Raw records -> the same raw records in arrival order, each alert of a tripped detector
    marked, plus the guard's own outputs (jobs/guard_operator.py): one bundle of every record at a
    time into one Python operator at parallelism 1 (a detector's counts span all users), split
    again in the JVM."""
    keyed = kafka.bundled_by_shard(raw, "bundle for the guard", UIDS["guard_bundle"], list(topics), 1, 1,
                                   config.bundle_records, config.flush_ms, parallelism=1)
    guarded = (
        keyed.process(GuardFunction(policy_bytes, policy_file, topics, config.max_payload_bytes,
                                    config.max_future_skew_ms), output_type=kafka.BUNDLE_TYPE)
        .uid(UIDS["guard"]).name("detector guard").set_parallelism(1)
    )
    return kafka.unbundled(guarded, "split guarded bundles", UIDS["guard_split"], [*topics, *GUARD_MARKERS])


def decide(raw: DataStream, config: JobConfig, policy_bytes: bytes, policy_file: str,
           shadow: tuple[bytes, str] | None = None) -> DataStream:
    """Raw records of the alerts and decisions topics (RAW_ALERT_TYPE, with event-time
    timestamps) -> output records Row(kind, key, value) (kafka.OUTPUT_RECORD_TYPE). Shared by the
    Kafka job and the mini-cluster tests. With a detector guard in the policy, the guard stage
    goes first and the bundler behind it runs at its parallelism (1), keeping each user's order."""
    core_config = CoreConfig(config.dedupe_horizon_ms, config.incident_window_ms)
    topics = (config.topics.alerts, config.topics.decisions)
    bundle_topics, bundle_parallelism = list(topics), None
    if parse_policy(policy_bytes, policy_file).detector_guard is not None:
        raw = guard_stage(raw, config, policy_bytes, policy_file, topics)
        bundle_topics, bundle_parallelism = [*topics, *GUARD_MARKERS], 1
    decided = (
        kafka.bundled_by_shard(raw, "bundle by shard", UIDS["bundle"], bundle_topics, config.max_parallelism,
                               config.parallelism, config.bundle_records, config.flush_ms,
                               parallelism=bundle_parallelism)
        .process(PenaltyFunction(policy_bytes, policy_file, core_config, topics,
                                 config.max_payload_bytes, config.max_future_skew_ms, *(shadow or (None, None)),
                                 state_cache_users=config.state_cache_users, max_parallelism=config.max_parallelism,
                                 parallelism=config.parallelism),
                 output_type=OUTPUT_TYPE)
        .uid(UIDS["penalty"]).name("penalty decisions")
    )
    return kafka.route_outputs(decided, "route outputs", UIDS["route"])


def source_stream(env: StreamExecutionEnvironment, config: JobConfig) -> DataStream:
    """Raw records of the alerts and decisions topics, one source (read_committed, per-partition
    watermarks)."""
    topics = config.topics
    source = kafka.alert_source(
        config.bootstrap_servers, [topics.alerts, topics.decisions], config.group_id, config.starting_offsets,
        config.bounded, config.max_payload_bytes, config.max_future_skew_ms, dict(config.source_properties),
        config.fetch_backoff_ms,
    )
    return env.from_source(
        source, kafka.alert_watermarks(config.max_out_of_orderness_ms, config.idleness_ms), "alerts source"
    ).uid(UIDS["source"])


def sink_outputs(routed: DataStream, config: JobConfig) -> None:
    """Output records Row(kind, key, value) to their topics through one Kafka sink."""
    routed.sink_to(kafka.output_sink(
        config.bootstrap_servers, topics_by_kind(config.topics), config.exactly_once,
        f"{config.transactional_id_prefix}-outputs", config.transaction_timeout_ms, dict(config.sink_properties),
    )).uid(UIDS["sink"]).name("outputs sink")


def build_pipeline(env: StreamExecutionEnvironment, config: JobConfig, policy_bytes: bytes, policy_file: str,
                   shadow: tuple[bytes, str] | None = None) -> None:
    sink_outputs(decide(source_stream(env, config), config, policy_bytes, policy_file, shadow), config)
