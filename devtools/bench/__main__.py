"""Benchmarks of the penalty job: one command each, one JSON line (and a short table on stderr).

The whole job on the local stack (noida-db), by default on a local standalone Flink cluster of
one-slot TaskManagers (parallelism 2), as the job is deployed; `--mini-cluster` runs it embedded
in one process instead, as `make run` does:

    python -m devtools.bench throughput [--alerts 1000000] [--users 100000] [--zipf-s 1.0] [--step-ms 50]
        pre-produces a realistic mix, runs the job exactly-once from the earliest offset until
        every input offset is committed by a checkpoint (so every output of it is committed
        too); reports alerts/s, peak RSS of the job's process tree, checkpoint duration and
        size, checkpointed state bytes per user (throughput.py). `--floor python|python-bundled|jvm`
        runs the same pipeline with a pass-through in place of the penalty operator
        (floor_job.py): what the rest costs.
    python -m devtools.bench latency [--rate 1000] [--seconds 60] [--warmup-s 0] [--delivery exactly_once]
        steady rate; alert produced -> enforcement visible to a read_committed consumer; the p99
        of each 10 s of send time shows whether a backlog of the job's warm-up drains, and the
        end-to-end durations of the checkpoints of the measured period explain the tail (latency.py).
    python -m devtools.bench all     both (`make bench`), one JSON summary line.

Both pass `--rules`, `--conf`, `--source-property`, `--sink-property`, `--fetch-backoff-ms`,
`--bundle-records` and `--bundle-ms` on to the job; `--cluster-conf KEY=VALUE` sets the local
cluster itself (what a job cannot set), e.g. JVM flags of the TaskManagers for a Java Flight Recorder profile:
`--cluster-conf "env.java.opts.taskmanager=-XX:StartFlightRecording=filename=/tmp/jfr/,settings=profile"`.

Parts of the job alone, with flags of their own:

    python -m devtools.bench core [--alerts 200000] [--profile]
        the pure decision path without a JVM (core.py): us per alert, a sha256 oracle, a profile.
    python -m devtools.bench calls [--backend rocksdb|hashmap] [--keys 2000] [--calls 50]
        single PyFlink state and timer calls from a thread-mode operator (calls.py, mini-cluster).

Not part of the tests (smoke runs are).
"""

from __future__ import annotations

import argparse
import json
import sys

from devtools.bench.latency import latency_table, measure_latency
from devtools.bench.throughput import measure_throughput, throughput_table

WHOLE_JOB = {
    "throughput": "alerts/s of the whole job exactly-once over a pre-produced mix",
    "latency": "alert produced -> enforcement visible, at a steady rate",
    "all": "both (`make bench`), one JSON summary line",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["core"]:  # no JVM, no local stack: its own flags
        from devtools.bench import core

        return core.main(argv[1:])
    if argv[:1] == ["calls"]:  # a mini-cluster without Kafka: its own flags
        from devtools.bench import calls

        return calls.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m devtools.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, summary in WHOLE_JOB.items():
        p = sub.add_parser(name, help=summary)
        p.add_argument("--checkpoint-interval-ms", type=int, default=None)
        p.add_argument("--parallelism", type=int, default=2)
        p.add_argument("--fetch-backoff-ms", type=int, default=None,
                       help="the job's pause after an empty fetch (default: the job's; 0: none)")
        p.add_argument("--bundle-records", type=int, default=None,
                       help="the job's bundle flush threshold, records over all key groups (default: the job's)")
        p.add_argument("--bundle-ms", type=int, default=None,
                       help="the job's longest wait before a bundle flush (default: the job's)")
        p.add_argument("--state-cache-users", type=int, default=None,
                       help="users per subtask the job keeps decoded in memory (default: the job's)")
        p.add_argument("--rules", default=None,
                       help="the job's rule file (default: the job's), e.g. one without a detector_guard "
                            "section to time the job without its guard stage")
        p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                       help="Flink option for the job (repeatable), as `python -m jobs.penalty_job --conf`")
        p.add_argument("--source-property", action="append", default=[], metavar="KEY=VALUE",
                       help="Kafka consumer property for the job's source (repeatable)")
        p.add_argument("--sink-property", action="append", default=[], metavar="KEY=VALUE",
                       help="Kafka producer property for the job's sink (repeatable)")
        p.add_argument("--mini-cluster", action="store_true",
                       help="run the job embedded in one process (`make run`) instead of on a local standalone "
                            "cluster of one-slot TaskManagers")
        p.add_argument("--keep", action="store_true", help="keep broker data, checkpoints and job logs")
        p.add_argument("--cluster-conf", action="append", default=[], metavar="KEY=VALUE",
                       help="setting of the local standalone cluster itself (repeatable; not with --mini-cluster), for "
                            "what the job cannot set: e.g. env.java.opts.taskmanager=-XX:StartFlightRecording=...")
        if name in ("throughput", "all"):
            p.add_argument("--alerts", type=int, default=1_000_000)
            p.add_argument("--users", type=int, default=100_000)
            p.add_argument("--zipf-s", type=float, default=1.0, help="skew of repeat offenders")
            p.add_argument("--seed", type=int, default=7)
            # 50 ms: 1M alerts span 14 h, less than the 24 h dedupe horizon, so the timers that forget
            # seen ids and incidents do not fire; --step-ms 1000 over 300k alerts runs that path.
            # At 1000 over the 1M default, 57% of the input went to the DLQ (docs/operations.md).
            p.add_argument("--step-ms", type=int, default=50,
                           help="event time between alerts; the input spans alerts x step: beyond the 24 h dedupe "
                                "horizon the timers that forget seen ids and incidents fire during the run")
            p.add_argument("--timeout-s", type=float, default=3600)
            p.add_argument("--floor", choices=("python", "python-bundled", "jvm"),
                           help="run the pipeline with a pass-through in place of the penalty operator "
                                "(devtools/bench/floor_job.py): what the source, exchange, router, sink and broker cost alone")
        if name in ("latency", "all"):
            p.add_argument("--rate", type=float, default=2000)
            p.add_argument("--seconds", type=float, default=60)
            p.add_argument("--warmup-s", type=float, default=0,
                           help="drive the rate this long first and leave it out of the figures (JIT "
                                "compilation of a freshly started job; the per-10 s p99 shows it)")
            p.add_argument("--delivery", choices=("exactly_once", "at_least_once"), default="exactly_once")
    # Listed for --help only: main() hands them their arguments before this parser sees them.
    sub.add_parser("core", add_help=False, help="the pure decision path, no JVM (`core --help`)")
    sub.add_parser("calls", add_help=False, help="single PyFlink state and timer calls (`calls --help`)")
    args = parser.parse_args(argv)
    results = {}
    if args.cmd in ("throughput", "all"):
        results["throughput"] = measure_throughput(args)
        print(throughput_table(results["throughput"]), file=sys.stderr)
    if args.cmd in ("latency", "all"):
        results["latency"] = measure_latency(args)
        print(latency_table(results["latency"]), file=sys.stderr)
    print(json.dumps(results[args.cmd] if args.cmd != "all" else results))
    ok = all(r.get("completed", True) for r in results.values()) and \
        all(r["seen"] == r["sent"] for r in results.values() if "seen" in r)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
