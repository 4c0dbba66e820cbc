"""Kafka source and sinks of the job, built on the official connector plus three small Java
helpers of ours (connectors/java, compiled by scripts/setup.sh):

- AlertRecordDeserializer hands Python (topic, partition, offset, timestamp, payload, size,
  event_time_ms) so DLQ records can name where a bad record came from, cuts oversized payloads
  before they reach Python, and lets the source emit per-partition watermarks with idleness;
- UserKeyExtractor keys raw records by the payload's user_id in the JVM;
- OutputRouter turns the Python operator's per-record output arrays into Row(kind, key, value)
  records and metric events into counters;
- KindTopicRowSerializer writes Row(kind, key, value) to the topic of its kind, with the user id
  as Kafka key, so one sink serves every output topic.

PyFlink's builders do not expose a record deserializer, so those two are set on the Java
builders directly.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyflink.common import Duration, Types, WatermarkStrategy
from pyflink.datastream import DataStream, KeyedStream
from pyflink.datastream.connectors import Source
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaSink,
    KafkaSource,
)
from pyflink.java_gateway import get_gateway

from connectors.alerts import (
    MAX_FUTURE_SKEW_MS,
    MAX_PAYLOAD_BYTES,
    MAX_RAW_BYTES,
    REASONS,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
JAR_NAMES = ("flink-connector-kafka.jar", "kafka-clients.jar", "penalty-connectors.jar")

# (topic, partition, offset, timestamp_ms, payload, size_bytes, event_time_ms): see the Java class.
RAW_ALERT_TYPE = Types.ROW([
    Types.STRING(), Types.INT(), Types.LONG(), Types.LONG(),
    Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.INT(), Types.LONG(),
])
OUTPUT_RECORD_TYPE = Types.ROW([Types.STRING(), Types.STRING(), Types.STRING()])  # kind, key, value


class ConnectorError(Exception):
    """The Kafka connector is not usable as configured."""


def jar_dir() -> Path:
    return Path(os.environ.get("PENALTY_JAR_DIR", REPO_ROOT / ".cache" / "jars"))


def jar_urls() -> list[str]:
    urls = []
    for name in JAR_NAMES:
        path = jar_dir() / name
        if not path.is_file():
            raise ConnectorError(f"{path} is missing: run `bash scripts/setup.sh` (or `make setup`) first")
        urls.append(path.resolve().as_uri())
    return urls


def _jvm():
    return get_gateway().jvm


def _java_class(name: str):
    # The project's classes live in a jar added at run time: load through the context class
    # loader PyFlink extends in env.add_jars(), not py4j's default lookup.
    jvm = _jvm()
    return jvm.java.lang.Thread.currentThread().getContextClassLoader().loadClass(name)


def _new(name: str, *args):
    cls = _java_class(name)
    gateway = get_gateway()
    ctors = cls.getConstructors()
    for ctor in ctors:
        if len(ctor.getParameterTypes()) == len(args):
            jargs = gateway.new_array(gateway.jvm.java.lang.Object, len(args))
            for i, (arg, ptype) in enumerate(zip(args, ctor.getParameterTypes())):
                tname = ptype.getName()
                if tname == "int":
                    jargs[i] = gateway.jvm.java.lang.Integer(int(arg))
                elif tname == "long":
                    jargs[i] = gateway.jvm.java.lang.Long(int(arg))
                else:
                    jargs[i] = arg
            return ctor.newInstance(jargs)
    raise ConnectorError(f"no constructor of {name} takes {len(args)} arguments")


def _committed_or_earliest() -> KafkaOffsetsInitializer:
    # PyFlink's KafkaOffsetResetStrategy names a shaded class the 4.0 connector no longer has;
    # build the initializer in Java through the class loader that holds the connector jar.
    gateway = get_gateway()
    strategy_cls = _java_class("org.apache.kafka.clients.consumer.OffsetResetStrategy")
    earliest = strategy_cls.getField("EARLIEST").get(None)
    initializers = _java_class("org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer")
    param_types = gateway.new_array(gateway.jvm.java.lang.Class, 1)
    param_types[0] = strategy_cls
    args = gateway.new_array(gateway.jvm.java.lang.Object, 1)
    args[0] = earliest
    j_initializer = initializers.getMethod("committedOffsets", param_types).invoke(None, args)
    return KafkaOffsetsInitializer(j_initializer)


def alert_source(
    bootstrap_servers: str,
    topics: str | list[str],
    group_id: str,
    starting: str = "committed",
    bounded: bool = False,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    max_future_skew_ms: int = MAX_FUTURE_SKEW_MS,
    extra_properties: dict[str, str] | None = None,
    fetch_backoff_ms: int = 0,
) -> Source:
    """read_committed source of raw records (alerts, and moderator decisions when their topic is
    listed too: one consumer per subtask for both); see RAW_ALERT_TYPE. With fetch_backoff_ms,
    the same KafkaSource whose consumer pauses that long after an empty fetch
    (IdleBackoffKafkaSource; its splits and savepoint state are KafkaSource's)."""
    if starting == "earliest":
        offsets = KafkaOffsetsInitializer.earliest()
    elif starting == "latest":
        offsets = KafkaOffsetsInitializer.latest()
    else:
        offsets = _committed_or_earliest()
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(bootstrap_servers)
        .set_topics(*([topics] if isinstance(topics, str) else topics))
        .set_group_id(group_id)
        .set_starting_offsets(offsets)
        .set_property("isolation.level", "read_committed")
        .set_property("client.id.prefix", group_id)
        # Commit offsets on checkpoints so lag is visible to ordinary Kafka tooling.
        .set_property("commit.offsets.on.checkpoint", "true")
        .set_property("partition.discovery.interval.ms", "60000")
    )
    for key, value in (extra_properties or {}).items():
        builder.set_property(key, value)
    if bounded:
        builder.set_bounded(KafkaOffsetsInitializer.latest())
    deserializer = _new(
        "penalty.connectors.AlertRecordDeserializer", max_payload_bytes, MAX_RAW_BYTES, max_future_skew_ms
    )
    builder._j_builder.setDeserializer(deserializer)
    source = builder.build()
    if fetch_backoff_ms <= 0:
        return source
    return Source(_new("penalty.connectors.IdleBackoffKafkaSource", source.get_java_function(), fetch_backoff_ms))


def alert_watermarks(max_out_of_orderness_ms: int, idleness_ms: int) -> WatermarkStrategy:
    """Per-partition bounded out-of-orderness on event_time_ms (read in Java), with idleness so
    an idle partition does not hold back timers."""
    jvm = _jvm()
    assigner = _new("penalty.connectors.RowEventTimeAssigner", 6)
    j_strategy = (
        jvm.org.apache.flink.api.common.eventtime.WatermarkStrategy
        .forBoundedOutOfOrderness(jvm.java.time.Duration.ofMillis(max_out_of_orderness_ms))
        .withTimestampAssigner(assigner)
        .withIdleness(jvm.java.time.Duration.ofMillis(idleness_ms))
    )
    return WatermarkStrategy(j_strategy)


def keyed_by_user(raw: DataStream, name: str, uid: str) -> KeyedStream:
    """Raw records keyed by the payload's user_id, extracted in the JVM (UserKeyExtractor) and
    shaped as PyFlink's own key_by shapes them (Row(key, value)), so the keyed Python operator
    is the first Python code a record meets: no Python key-selector operator in front of it."""
    gateway = get_gateway()
    keyed_type = Types.ROW([Types.STRING(), RAW_ALERT_TYPE])
    j_with_key = raw._j_data_stream.map(_new("penalty.connectors.UserKeyExtractor"),
                                        keyed_type.get_java_type_info())
    j_with_key.name(name).uid(uid)
    j_keyed = j_with_key.keyBy(gateway.jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(j_keyed, RAW_ALERT_TYPE, raw)


BUNDLE_TYPE = Types.PRIMITIVE_ARRAY(Types.BYTE())  # one bundle of raw records (connectors/bundles.py)


def bundled_by_shard(raw: DataStream, name: str, uid: str, topics: list[str], max_parallelism: int,
                     operator_parallelism: int, bundle_records: int, bundle_ms: int,
                     parallelism: int | None = None) -> KeyedStream:
    """Raw records packed into bundles in the JVM (ShardBundler, chained to the source), one per
    subtask of the keyed Python operator behind it (`operator_parallelism` subtasks over
    `max_parallelism` key groups), keyed by a shard key in the first key group that subtask owns:
    the operator is entered once per bundle and reads each user's own keyed state, which lives in a
    key group the same subtask owns. `topics` are indexed by the bundle's topic byte; `parallelism`
    is the bundler's own (default: the environment's)."""
    gateway = get_gateway()
    bundled_type = Types.ROW([Types.STRING(), BUNDLE_TYPE])
    bundler = _new("penalty.connectors.ShardBundler", _string_array(topics), max_parallelism, operator_parallelism,
                   bundle_records, bundle_ms)
    j_bundled = raw._j_data_stream.transform(name, bundled_type.get_java_type_info(), bundler)
    j_bundled.uid(uid)
    if parallelism is not None:
        j_bundled.setParallelism(parallelism)
    j_keyed = j_bundled.keyBy(gateway.jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(j_keyed, BUNDLE_TYPE, raw)


def unbundled(bundled: DataStream, name: str, uid: str, topics: list[str]) -> DataStream:
    """Bundles (BUNDLE_TYPE) back into raw records (RAW_ALERT_TYPE) in the JVM (BundleSplitter), at
    the bundles' parallelism, in bundle order; topic index i becomes topics[i]."""
    j_split = bundled._j_data_stream.process(_new("penalty.connectors.BundleSplitter", _string_array(topics)),
                                             RAW_ALERT_TYPE.get_java_type_info())
    j_split.name(name).uid(uid)
    j_split.setParallelism(bundled._j_data_stream.getParallelism())
    return DataStream(j_split)


def route_outputs(decided: DataStream, name: str, uid: str) -> DataStream:
    """The Python operator's per-record output arrays (jobs/operators.OUTPUT_TYPE) routed in the
    JVM (OutputRouter): output records as Row(kind, key, value) (OUTPUT_RECORD_TYPE), metric
    events to the router's counters."""
    j_routed = decided._j_data_stream.process(_new("penalty.connectors.OutputRouter", _string_array(REASONS)),
                                              OUTPUT_RECORD_TYPE.get_java_type_info())
    j_routed.name(name).uid(uid)
    return DataStream(j_routed)


def _string_array(values):
    gateway = get_gateway()
    array = gateway.new_array(gateway.jvm.java.lang.String, len(values))
    for i, value in enumerate(values):
        array[i] = value
    return array


def output_sink(
    bootstrap_servers: str,
    topics_by_kind: dict[str, str],
    exactly_once: bool,
    transactional_id_prefix: str,
    transaction_timeout_ms: int,
    extra_properties: dict[str, str] | None = None,
) -> KafkaSink:
    """One sink for every output topic: Row(kind, key, value) goes to topics_by_kind[kind]. One
    producer (and under exactly-once one transaction per checkpoint) per subtask, whatever the
    number of topics."""
    builder = (
        KafkaSink.builder()
        .set_bootstrap_servers(bootstrap_servers)
        .set_delivery_guarantee(
            DeliveryGuarantee.EXACTLY_ONCE if exactly_once else DeliveryGuarantee.AT_LEAST_ONCE
        )
        .set_property("transaction.timeout.ms", str(transaction_timeout_ms))
        .set_property("linger.ms", "5")
        # The outputs are JSON (~0.9 KB per alert on the bench mix) and the broker's work follows
        # their bytes: lz4 batches took the broker's CPU over the 1M-alert bench from 115-131 s
        # to 66-95 s (docs/performance.md). lz4-java ships in flink-dist; every consumer of the
        # outputs (librdkafka, the Java client) reads it.
        .set_property("compression.type", "lz4")
    )
    if exactly_once:
        builder.set_transactional_id_prefix(transactional_id_prefix)
    for key, value in (extra_properties or {}).items():
        builder.set_property(key, value)
    kinds = list(topics_by_kind)
    builder._j_builder.setRecordSerializer(_new("penalty.connectors.KindTopicRowSerializer", _string_array(kinds),
                                                _string_array([topics_by_kind[k] for k in kinds])))
    return builder.build()


__all__ = [
    "BUNDLE_TYPE",
    "OUTPUT_RECORD_TYPE",
    "RAW_ALERT_TYPE",
    "ConnectorError",
    "Duration",
    "alert_source",
    "alert_watermarks",
    "bundled_by_shard",
    "jar_urls",
    "keyed_by_user",
    "output_sink",
    "route_outputs",
]
