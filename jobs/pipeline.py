"""Wiring of the penalty job: build_pipeline(env, config) builds the graph, nothing runs here.

    alerts --source(read_committed, per-partition watermarks)--> parse + validate --DLQ-->
    decisions --source--> parse moderator decisions --DLQ-->
      --connect, key_by(user_id)--> penalty decisions (dedupe, incidents, ledger, rules,
                                    appeals and review verdicts)
          --> enforcement | notifications | audit | review | alerts.dlq   (one Kafka sink each)

Every source, stateful operator and sink has a fixed uid: changing one breaks savepoints.
"""

from __future__ import annotations

from typing import NamedTuple

from pyflink.common import Types
from pyflink.datastream import DataStream, StreamExecutionEnvironment

from connectors import kafka
from jobs.config import JobConfig
from jobs.operators import (
    ALERT_ROW_TYPE,
    AUDIT_TAG,
    DECISION_ROW_TYPE,
    DECISION_USER_FIELD,
    DLQ_TAG,
    NOTIFICATION_TAG,
    REVIEW_TAG,
    USER_KEY_FIELD,
    ParseAlerts,
    ParseDecisions,
    PenaltyFunction,
)
from rules.core import CoreConfig

UIDS = {
    "source": "alerts-source",
    "parse": "parse-alerts",
    "decisions_source": "decisions-source",
    "parse_decisions": "parse-decisions",
    "penalty": "penalty-decisions",
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
           shadow: tuple[bytes, str] | None = None, raw_decisions: DataStream | None = None) -> Outputs:
    """Raw alert and decision records (RAW_ALERT_TYPE, with event-time timestamps) -> the five
    output streams of Row(key, value). Shared by the Kafka job and the mini-cluster tests
    (which may leave out decisions)."""
    if raw_decisions is None:
        raw_decisions = raw.filter(lambda row: False).name("no decisions")
    decisions = (
        raw_decisions.process(ParseDecisions(), output_type=DECISION_ROW_TYPE)
        .uid(UIDS["parse_decisions"]).name("parse moderator decisions")
    )
    parsed = (
        raw.process(ParseAlerts(config.max_payload_bytes, config.max_future_skew_ms), output_type=ALERT_ROW_TYPE)
        .uid(UIDS["parse"]).name("parse and validate alerts")
    )
    core_config = CoreConfig(config.dedupe_horizon_ms, config.incident_window_ms)
    decided = (
        parsed.connect(decisions)
        .key_by(lambda row: row[USER_KEY_FIELD], lambda row: row[DECISION_USER_FIELD], key_type=Types.STRING())
        .process(PenaltyFunction(policy_bytes, policy_file, core_config, *(shadow or (None, None))),
                 output_type=kafka.KEY_VALUE_TYPE)
        .uid(UIDS["penalty"]).name("penalty decisions")
    )
    return Outputs(
        enforcement=decided,
        notifications=decided.get_side_output(NOTIFICATION_TAG),
        audit=decided.get_side_output(AUDIT_TAG),
        review=decided.get_side_output(REVIEW_TAG),
        dlq=parsed.get_side_output(DLQ_TAG).union(decisions.get_side_output(DLQ_TAG),
                                                  decided.get_side_output(DLQ_TAG)),
    )


def build_pipeline(env: StreamExecutionEnvironment, config: JobConfig, policy_bytes: bytes, policy_file: str,
                   shadow: tuple[bytes, str] | None = None) -> None:
    topics = config.topics
    source = kafka.alert_source(
        config.bootstrap_servers, topics.alerts, config.group_id, config.starting_offsets, config.bounded,
        config.max_payload_bytes, config.max_future_skew_ms,
    )
    raw = env.from_source(
        source, kafka.alert_watermarks(config.max_out_of_orderness_ms, config.idleness_ms), "alerts source"
    ).uid(UIDS["source"])
    decisions_source = kafka.alert_source(
        config.bootstrap_servers, topics.decisions, config.group_id, config.starting_offsets, config.bounded,
        config.max_payload_bytes, config.max_future_skew_ms,
    )
    raw_decisions = env.from_source(
        decisions_source, kafka.alert_watermarks(config.max_out_of_orderness_ms, config.idleness_ms),
        "decisions source",
    ).uid(UIDS["decisions_source"])
    outputs = decide(raw, config, policy_bytes, policy_file, shadow, raw_decisions)

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
