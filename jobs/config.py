"""The job's one config object, built at the edge from CLI flags (and defaults)."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from connectors.alerts import MAX_FUTURE_SKEW_MS, MAX_PAYLOAD_BYTES
from rules.core import DAY_MS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RULES = REPO_ROOT / "rules" / "policies" / "default.yaml"

# Topic -> partitions used by the local stack. Inputs are keyed by stream_id, outputs by user_id.
TOPIC_PARTITIONS = {
    "alerts": 4,
    "alerts.dlq": 2,
    "enforcement": 4,
    "notifications": 4,
    "audit": 4,
    "review": 2,
    "decisions": 2,
}


@dataclass(frozen=True)
class Topics:
    alerts: str = "alerts"
    dlq: str = "alerts.dlq"
    enforcement: str = "enforcement"
    notifications: str = "notifications"
    audit: str = "audit"
    review: str = "review"
    decisions: str = "decisions"

    def prefixed(self, prefix: str) -> Topics:
        return Topics(**{k: prefix + v for k, v in self.__dict__.items()})

    def partitions(self) -> dict[str, int]:
        return {name: TOPIC_PARTITIONS[default] for default, name in zip(Topics().__dict__.values(), self.__dict__.values())}


@dataclass(frozen=True)
class JobConfig:
    bootstrap_servers: str = "127.0.0.1:19092"
    topics: Topics = field(default_factory=Topics)
    group_id: str = "penalty-job"
    rules_path: str = str(DEFAULT_RULES)
    shadow_rules_path: str | None = None  # evaluated and audited beside the live rules, never enforced
    delivery: str = "exactly_once"  # or at_least_once: lower latency, consumers dedupe by id
    starting_offsets: str = "committed"  # committed (falls back to earliest) | earliest | latest
    bounded: bool = False  # stop at the offsets that are latest at start (tests, replays)
    # The job's parallelism, and the keyed operator's: its bundles are cut for it (the operator
    # refuses to run at another).
    parallelism: int = 2
    # The keyed operator's number of key groups: fixed for the life of the job's state (a savepoint
    # restores only at the same value), and the most subtasks it can scale to. 128 is what Flink
    # chose by itself for jobs before it was pinned, so their savepoints restore.
    max_parallelism: int = 128
    # Records enter the Python operator in bundles (one per operator subtask, of the users whose
    # key groups it owns), flushed at this many buffered records (over all subtasks) or this long
    # after the first, and always before a checkpoint. Under exactly-once the checkpoint, not the
    # flush, decides when an output is visible; the flush is part of at-least-once latency, twice
    # over with the detector guard (its own bundles). None: `flush_ms` picks per delivery.
    bundle_records: int = 16000
    bundle_ms: int | None = None
    # After a fetch that brought nothing, the source's consumer asks again after this long
    # (connectors/java IdleBackoffKafkaSource): against a broker that answers empty fetches at
    # once instead of holding them (the local one) an idle consumer otherwise busy-loops. It is
    # the most a record waits for longer. 0: plain KafkaSource.
    fetch_backoff_ms: int = 5
    dedupe_horizon_ms: int = DAY_MS
    incident_window_ms: int = 60_000
    max_out_of_orderness_ms: int = 5_000
    idleness_ms: int = 10_000
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    max_future_skew_ms: int = MAX_FUTURE_SKEW_MS
    # Users whose state each subtask keeps decoded in memory (a read cache; every change is still
    # written to Flink state at once). 0 turns it off.
    state_cache_users: int = 10_000
    transactional_id_prefix: str = "penalty"
    transaction_timeout_ms: int = 60_000  # must stay under the broker's max (900000 on noida-db)
    flink_conf: tuple[tuple[str, str], ...] = ()  # overrides of flink-conf/config.yaml
    # Kafka client properties (security, fetch and batch sizes) for the source's consumers and
    # the sink's producers; they override the job's own settings of the same key.
    source_properties: tuple[tuple[str, str], ...] = ()
    sink_properties: tuple[tuple[str, str], ...] = ()

    @property
    def exactly_once(self) -> bool:
        return self.delivery == "exactly_once"

    @property
    def flush_ms(self) -> int:
        """The bundles' flush time: `bundle_ms`, or by default 100 ms exactly-once (a 250 ms checkpoint
        flushes them anyway) and 20 ms at-least-once (2,000 alerts/s: p99 0.45 -> 0.23 s, beside
        the 10 ms network buffer timeout of jobs/flink_env.py; docs/performance.md)."""
        if self.bundle_ms is not None:
            return self.bundle_ms
        return 100 if self.exactly_once else 20

    def with_(self, **changes) -> JobConfig:
        return replace(self, **changes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = JobConfig()
    parser.add_argument("--bootstrap-servers", default=d.bootstrap_servers)
    parser.add_argument("--topic-prefix", default="", help="prefix for every topic name")
    parser.add_argument("--group-id", default=d.group_id)
    parser.add_argument("--rules", default=d.rules_path, help="policy YAML (validated before start)")
    parser.add_argument("--shadow-rules", help="a second policy YAML evaluated in shadow: audited "
                        "(kind shadow) and counted, never enforced")
    parser.add_argument("--delivery", choices=("exactly_once", "at_least_once"), default=d.delivery,
                        help="exactly_once: outputs visible when a checkpoint commits them. at_least_once: "
                             "visible at once, repeated after a restore; checkpoints unaligned, every 5 s "
                             "unless --checkpoint-interval-ms/--conf say otherwise")
    parser.add_argument("--starting-offsets", choices=("committed", "earliest", "latest"), default=d.starting_offsets)
    parser.add_argument("--bounded", action="store_true", help="stop at the end of the input present at start")
    parser.add_argument("--parallelism", type=int, default=d.parallelism)
    parser.add_argument("--max-parallelism", type=int, default=d.max_parallelism,
                        help="key groups of the keyed operator; a savepoint restores only at the same value")
    parser.add_argument("--bundle-records", type=int, default=d.bundle_records,
                        help="records buffered (over all key groups) before a bundle flush")
    parser.add_argument("--bundle-ms", type=int, default=d.bundle_ms,
                        help="at most this long between a record's arrival and its bundle's flush "
                             "(default: 100 exactly-once, 20 at-least-once)")
    parser.add_argument("--fetch-backoff-ms", type=int, default=d.fetch_backoff_ms,
                        help="the source's pause after an empty fetch (0: none; see jobs/config.py)")
    parser.add_argument("--dedupe-horizon-ms", type=int, default=d.dedupe_horizon_ms)
    parser.add_argument("--incident-window-ms", type=int, default=d.incident_window_ms)
    parser.add_argument("--max-out-of-orderness-ms", type=int, default=d.max_out_of_orderness_ms)
    parser.add_argument("--idleness-ms", type=int, default=d.idleness_ms)
    parser.add_argument("--state-cache-users", type=int, default=d.state_cache_users,
                        help="users per subtask whose state is kept decoded in memory (read cache; 0: off)")
    parser.add_argument("--transactional-id-prefix", default=d.transactional_id_prefix)
    parser.add_argument("--transaction-timeout-ms", type=int, default=d.transaction_timeout_ms)
    parser.add_argument("--checkpoint-interval-ms", type=int, help="override execution.checkpointing.interval")
    parser.add_argument("--checkpoint-dir", help="override execution.checkpointing.dir (a path or file:// URI)")
    parser.add_argument("--restore-from", help="checkpoint (chk-N) or savepoint directory to restore from")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                        help="override any Flink setting of flink-conf/config.yaml")
    parser.add_argument("--kafka-property", action="append", default=[], metavar="KEY=VALUE",
                        help="Kafka client property for the source and the sink (e.g. security.protocol=SASL_SSL)")
    parser.add_argument("--source-property", action="append", default=[], metavar="KEY=VALUE",
                        help="Kafka consumer property for the source only (e.g. max.poll.records=2000)")
    parser.add_argument("--sink-property", action="append", default=[], metavar="KEY=VALUE",
                        help="Kafka producer property for the sink only (e.g. linger.ms=20)")


def _pairs(flag: str, items: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"{flag} expects KEY=VALUE, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def from_args(args: argparse.Namespace) -> JobConfig:
    conf = _pairs("--conf", args.conf)
    kafka = _pairs("--kafka-property", args.kafka_property)
    if args.state_cache_users < 0:
        raise SystemExit(f"--state-cache-users must be 0 (off) or more, got {args.state_cache_users}")
    if args.max_parallelism < 1 or args.bundle_records < 1 or (args.bundle_ms or 0) < 0 or args.fetch_backoff_ms < 0:
        raise SystemExit("--max-parallelism and --bundle-records must be 1 or more, "
                         "--bundle-ms and --fetch-backoff-ms 0 or more")
    if args.checkpoint_interval_ms is not None:
        conf.append(("execution.checkpointing.interval", f"{args.checkpoint_interval_ms}ms"))
    if args.checkpoint_dir:
        conf.append(("execution.checkpointing.dir", _uri(args.checkpoint_dir)))
    if args.restore_from:
        conf.append(("execution.state-recovery.path", _uri(args.restore_from)))
    return JobConfig(
        bootstrap_servers=args.bootstrap_servers,
        topics=Topics().prefixed(args.topic_prefix),
        group_id=args.group_id,
        rules_path=args.rules,
        shadow_rules_path=args.shadow_rules,
        delivery=args.delivery,
        starting_offsets=args.starting_offsets,
        bounded=args.bounded,
        parallelism=args.parallelism,
        max_parallelism=args.max_parallelism,
        bundle_records=args.bundle_records,
        bundle_ms=args.bundle_ms,
        fetch_backoff_ms=args.fetch_backoff_ms,
        dedupe_horizon_ms=args.dedupe_horizon_ms,
        incident_window_ms=args.incident_window_ms,
        max_out_of_orderness_ms=args.max_out_of_orderness_ms,
        idleness_ms=args.idleness_ms,
        state_cache_users=args.state_cache_users,
        transactional_id_prefix=args.transactional_id_prefix,
        transaction_timeout_ms=args.transaction_timeout_ms,
        flink_conf=tuple(conf),
        source_properties=tuple(kafka + _pairs("--source-property", args.source_property)),
        sink_properties=tuple(kafka + _pairs("--sink-property", args.sink_property)),
    )


# A URI scheme ("file:", "s3://", "hdfs://"): Flink prints savepoints as `file:/path`, and that
# exact text must work as --restore-from.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


def _uri(path: str) -> str:
    return path if _SCHEME.match(path) else Path(path).resolve().as_uri()
