"""Floors of the throughput bench: the penalty job's pipeline with its penalty operator replaced
by one that decides nothing, so the bench can measure what the rest costs on the same machine.

Same source (read_committed, watermarks), key-by in the JVM, output router and one Kafka sink,
exactly-once as configured; the operator behind the key-by is either
  python:         a keyed Python operator without state (one crossing into Python and back per
                  record),
  python-bundled: the same behind the JVM bundler (one crossing per bundle of records: the
                  penalty job's shape),
  jvm:            a JVM map (no Python anywhere),
and each record becomes one input counter and one audit record (its payload, keyed by user).
Not a job to run in production: `python -m devtools.bench throughput --floor python|python-bundled|jvm`
runs it (on a standalone cluster with `flink run -py devtools/bench/floor_job.py`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `flink run -py devtools/bench/floor_job.py`: make the packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs import config as job_config

FLOORS = ("python", "python-bundled", "jvm")


def build(config: job_config.JobConfig, floor: str, embedded: bool = True):
    from pyflink.datastream import DataStream, KeyedProcessFunction

    from connectors import bundles, kafka
    from jobs.flink_env import create_env
    from jobs.operators import OUTPUT_TYPE
    from jobs.pipeline import UIDS, sink_outputs, source_stream

    class PassThroughFunction(KeyedProcessFunction):
        """The Python floor: what PenaltyFunction's crossing costs without its work."""

        def process_element(self, value, ctx: KeyedProcessFunction.Context):
            yield ["count", "alerts_in", "", "audit", ctx.get_current_key(), value[4].decode("utf-8", "replace")]

    class BundledPassThroughFunction(KeyedProcessFunction):
        """The bundled Python floor: one call per bundle, one output array per bundle."""

        def process_element(self, value, ctx: KeyedProcessFunction.Context):
            out = []
            for record in bundles.records(value):
                out += ("count", "alerts_in", "", "audit", record.user_id, record.payload.decode("utf-8", "replace"))
            yield out

    env = create_env(config, embedded)
    name = "penalty decisions"  # the bench's OperatorWatch reads this operator's metrics by name
    if floor == "python-bundled":
        topics = [config.topics.alerts, config.topics.decisions]
        keyed = kafka.bundled_by_shard(source_stream(env, config), "bundle by shard", UIDS["bundle"], topics,
                                       config.max_parallelism, config.parallelism, config.bundle_records,
                                       config.flush_ms)
        decided = keyed.process(BundledPassThroughFunction(), output_type=OUTPUT_TYPE).uid(UIDS["penalty"]).name(name)
        sink_outputs(kafka.route_outputs(decided, "route outputs", UIDS["route"]), config)
        return env
    keyed = kafka.keyed_by_user(source_stream(env, config), "key by user", "key-by-user")
    if floor == "python":
        decided = keyed.process(PassThroughFunction(), output_type=OUTPUT_TYPE).uid(UIDS["penalty"]).name(name)
    else:
        j_decided = keyed._j_data_stream.map(kafka._new("penalty.bench.PassThrough"),
                                             OUTPUT_TYPE.get_java_type_info())
        j_decided.uid(UIDS["penalty"]).name(name)
        decided = DataStream(j_decided)
    sink_outputs(kafka.route_outputs(decided, "route outputs", UIDS["route"]), config)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="floor-job", description=__doc__.splitlines()[0])
    job_config.add_arguments(parser)
    parser.add_argument("--floor", choices=FLOORS, required=True)
    parser.add_argument("--cluster", action="store_true", help="submitted with `flink run`: keep cluster settings")
    args = parser.parse_args(argv)
    env = build(job_config.from_args(args), args.floor, embedded=not args.cluster)
    if args.cluster:
        job = env.execute_async(f"penalty-floor-{args.floor}")
        print(f"floor job {job.get_job_id()} submitted", flush=True)
        return 0
    from jobs.penalty_job import run_embedded

    return run_embedded(env, None)


if __name__ == "__main__":
    sys.exit(main())
