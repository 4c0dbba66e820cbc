"""The throughput benchmark: `python -m devtools.bench throughput` pre-produces a realistic mix,
runs the job exactly-once from the earliest offset until every input offset is committed by a
checkpoint, and reports alerts/s, CPU per alert, peak RSS, checkpoints and state bytes per user;
`--floor` runs the pass-through floors of floor_job.py instead (what the rest of the pipeline costs)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from devtools import localstack
from devtools.bench.job_under_test import (
    METRICS_FETCH_MS,
    OUTPUTS,
    JobUnderTest,
    Trimmer,
    Usage,
    checkpoint_interval_ms,
    committed_and_end,
    passthrough_flags,
    rest_get,
    tree_usage,
)
from jobs import config as job_config

FLOOR_MODULE = "devtools.bench.floor_job"


class OperatorWatch(threading.Thread):
    """Polls the penalty operator's metrics on Flink's REST API each second while the job runs:
    when its input watermark first leaves Long.MIN_VALUE (event time starts: timers can fire,
    the too_late gate applies); at the end, how long event time takes to catch up once the input
    is read, and its dead-lettered alerts by reason (the DLQ topic itself is trimmed during the
    run)."""

    WATERMARK = "penalty_decisions.currentInputWatermark"
    OUTPUT_WATERMARK = "penalty_decisions.currentOutputWatermark"

    def __init__(self, rest_port: int, job_id: str):
        super().__init__(daemon=True)
        self.rest_port, self.job_id = rest_port, job_id
        self.done = threading.Event()
        self.started = time.monotonic()
        self.watermark_first_s: float | None = None
        self.url: str | None = None

    def _metrics(self, names: list[str]) -> list[dict]:
        if self.url is None:
            vertices = rest_get(self.rest_port, f"/jobs/{self.job_id}")["vertices"]
            vertex = next(v for v in vertices if "penalty decisions" in v["name"])
            self.url = f"/jobs/{self.job_id}/vertices/{vertex['id']}/subtasks/metrics"
        return rest_get(self.rest_port, f"{self.url}?get={','.join(names)}&agg=min,sum") if names else []

    def run(self) -> None:
        while self.watermark_first_s is None and not self.done.wait(1.0):
            try:
                [metric] = self._metrics([self.WATERMARK]) or [{}]
            except (OSError, ValueError, StopIteration):
                continue
            if metric.get("min", -(2**63)) > -(2**62):  # every subtask has a watermark
                self.watermark_first_s = round(time.monotonic() - self.started, 1)

    def event_time_caught_up(self, timeout_s: float, unseen_s: float = 60.0) -> bool:
        """Waits until every subtask's input watermark has left Long.MIN_VALUE and its output
        watermark has reached it: the timers due by then have all fired. A job that ends a
        catch-up runs them here if event time was held through it (docs/operations.md)."""
        deadline = time.monotonic() + timeout_s
        # A job without these metrics (no operator named "penalty decisions") has nothing to wait
        # for: give up after unseen_s of not seeing them rather than at the timeout.
        unseen_until = time.monotonic() + unseen_s
        while time.monotonic() < deadline:
            try:
                got = {m["id"]: m["min"] for m in self._metrics([self.WATERMARK, self.OUTPUT_WATERMARK])}
            except (OSError, ValueError, StopIteration, KeyError):
                got = {}
            if self.WATERMARK in got:
                unseen_until = float("inf")
            elif time.monotonic() > unseen_until:
                return False
            held = got.get(self.WATERMARK, -(2**63))
            if held > -(2**62) and got.get(self.OUTPUT_WATERMARK, -(2**63)) >= held:
                return True
            time.sleep(METRICS_FETCH_MS / 1000)
        return False

    def rejected_by_reason(self, settle_s: float = 2 * METRICS_FETCH_MS / 1000) -> dict[str, int]:
        """`alerts_rejected{reason}` summed over subtasks, reasons with a count only; read after
        the REST API has refreshed its metrics (settle_s) once the input is processed."""
        time.sleep(settle_s)
        try:
            self._metrics([])
            ids = [m["id"] for m in rest_get(self.rest_port, self.url) if m["id"].endswith(".alerts_rejected")]
            return {m["id"].split(".")[-2]: round(m["sum"]) for m in self._metrics(ids) if m.get("sum")}
        except (OSError, ValueError, StopIteration):
            return {}


def measure_throughput(args) -> dict:
    from devtools.generator import AlertGenerator, produce

    data = Path(tempfile.mkdtemp(prefix="penalty-bench-"))
    stack = localstack.start_stack(data)
    topics = job_config.Topics()
    localstack.create_topics(stack.bootstrap, topics.partitions())
    job = JobUnderTest(data, args.parallelism, args.mini_cluster, getattr(args, "cluster_conf", None))
    try:
        generator = AlertGenerator(seed=args.seed, users=args.users, zipf_s=args.zipf_s, step_ms=args.step_ms,
                                   start_ms=int(time.time() * 1000) - args.alerts * args.step_ms)
        t0 = time.monotonic()
        produced = produce(stack.bootstrap, topics.alerts, generator.payloads(args.alerts))
        produce_s = time.monotonic() - t0
        group = "bench-throughput"
        job_args = ["--bootstrap-servers", stack.bootstrap, "--starting-offsets", "earliest", "--group-id", group,
                    "--delivery", "exactly_once"]
        if args.checkpoint_interval_ms:
            job_args += ["--checkpoint-interval-ms", str(args.checkpoint_interval_ms)]
        job_args += passthrough_flags(args)
        if args.floor:
            job.start([*job_args, "--floor", args.floor], FLOOR_MODULE)
        else:
            job.start(job_args)
        peak_rss, started, job_id = 0, None, None
        start_usage, broker_cpu_start = Usage(0, 0.0), 0.0
        # The second half: from the first check that finds half the input committed to the end.
        # It leaves out the start (JIT compilation, first checkpoints), which a long-running job
        # pays once: `steady_alerts_per_s` is the sustained rate.
        half: tuple[float, int, Usage] | None = None
        deadline = time.monotonic() + args.timeout_s
        committed = end = 0
        trimmer = Trimmer(stack.bootstrap, topics.alerts, group, [getattr(topics, name) for name in OUTPUTS])
        trimmer.start()
        watch: OperatorWatch | None = None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            usage = job.usage()
            peak_rss = max(peak_rss, usage.rss_bytes)
            if job_id is None:
                job_id = job.running_job()
                started = time.monotonic() if job_id else None
                if job_id:
                    watch = OperatorWatch(job.rest_port, job_id)
                    watch.start()
                usage = job.usage(threads=True)
                start_usage, broker_cpu_start = usage, tree_usage(stack.kafka.pid).cpu_s
                continue
            committed, end = committed_and_end(stack.bootstrap, topics.alerts, group)
            if half is None and end and committed >= end / 2:
                half = (time.monotonic(), committed, job.usage(threads=True))
            if end and committed >= end:
                break
        finished = time.monotonic()
        final = job.usage(threads=True)
        job_cpu_s, jit_cpu_s = final.cpu_s - start_usage.cpu_s, final.jit_cpu_s - start_usage.jit_cpu_s
        task_cpu_s = final.task_cpu_s - start_usage.task_cpu_s
        broker_cpu_s = tree_usage(stack.kafka.pid).cpu_s - broker_cpu_start
        steady_alerts = steady_s = steady_cpu_s = steady_task_s = None
        if half is not None and committed > half[1]:
            steady_alerts, steady_s, steady_cpu_s = committed - half[1], finished - half[0], final.cpu_s - half[2].cpu_s
            steady_task_s = final.task_cpu_s - half[2].task_cpu_s
        trimmer.done.set()
        done = end > 0 and committed >= end
        elapsed = finished - started if started else float("nan")
        outputs = {name: committed_and_end(stack.bootstrap, getattr(topics, name), "bench-count")[1]
                   for name in OUTPUTS}
        # Flink's own statistics over every completed checkpoint of the run (the job still runs),
        # before the wait below adds the quick ones of an idle job.
        try:
            stats = rest_get(job.rest_port, f"/jobs/{job_id}/checkpoints") if job_id else {}
        except (OSError, ValueError):
            stats = {}
        # The timers still due once the input is read (all of them if event time was held through
        # the catch-up): how long they take, and the job's CPU meanwhile.
        catch_up_s = catch_up_cpu_s = None
        if watch is not None:
            before = job.usage()
            if done and watch.event_time_caught_up(args.timeout_s):
                catch_up_s = round(time.monotonic() - finished, 1)
                catch_up_cpu_s = round(job.usage().cpu_s - before.cpu_s, 1)
            watch.done.set()
        durations = stats.get("summary", {}).get("end_to_end_duration", {})
        last = (stats.get("latest") or {}).get("completed") or {}
        users_seen = args.users  # upper bound of users with state: every user the generator can pick
        full_size = last.get("full_size", last.get("state_size", 0))
        return {
            "benchmark": "throughput", "alerts": produced, "users": args.users, "zipf_s": args.zipf_s,
            "step_ms": args.step_ms, "floor": args.floor,
            "delivery": "exactly_once", "parallelism": args.parallelism,
            "deployment": "mini-cluster" if args.mini_cluster else f"standalone, {args.parallelism} TaskManagers x 1 slot",
            "checkpoint_interval_ms": checkpoint_interval_ms(args), "flink_conf": args.conf,
            "cluster_conf": args.cluster_conf, "bundle_records": args.bundle_records, "bundle_ms": args.bundle_ms,
            "state_cache_users": args.state_cache_users,
            "rules": args.rules,
            "source_properties": args.source_property, "sink_properties": args.sink_property, "cpus": os.cpu_count(),
            "completed": done, "input_committed": committed, "input_end": end,
            "produce_s": round(produce_s, 1), "job_s": round(elapsed, 1),
            "alerts_per_s": round(produced / elapsed) if done else None,
            "output_end_offsets": outputs, "peak_rss_mb": round(peak_rss / 2**20),
            # CPU while the job ran: steadier than wall-clock throughput on a shared 2-core box.
            "job_cpu_s": round(job_cpu_s, 1), "job_cpu_ms_per_alert": round(1000 * job_cpu_s / produced, 3),
            "jit_cpu_s": round(jit_cpu_s, 1), "broker_cpu_s": round(broker_cpu_s, 1),
            # The operator chain's task threads (Python operator, router, sink writer, state
            # calls): what a change to the operator moves, without the JIT's and the runtime's noise.
            "task_cpu_ms_per_alert": round(1000 * task_cpu_s / produced, 3),
            "steady_alerts_per_s": round(steady_alerts / steady_s) if steady_alerts else None,
            "steady_job_cpu_ms_per_alert": round(1000 * steady_cpu_s / steady_alerts, 3) if steady_alerts else None,
            "steady_task_cpu_ms_per_alert": round(1000 * steady_task_s / steady_alerts, 3) if steady_alerts else None,
            "checkpoints": stats.get("counts", {}).get("completed", 0),
            "checkpoint_p50_ms": _ms(durations.get("p50")), "checkpoint_max_ms": _ms(durations.get("max")),
            "checkpoint_full_size_bytes": full_size,
            "state_bytes_per_user": round(full_size / users_seen) if users_seen else None,
            "broker_trims": trimmer.trims, "broker_trims_skipped": trimmer.skipped,
            # Seconds into the run when event time started in the operator (null: never during the
            # run, so no timer fired), and the DLQ by reason.
            "watermark_first_s": watch.watermark_first_s if watch else None,
            "event_time_catch_up_s": catch_up_s, "event_time_catch_up_job_cpu_s": catch_up_cpu_s,
            "rejected_by_reason": watch.rejected_by_reason() if watch else {},
        }
    finally:
        job.stop()
        stack.stop()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)


def _ms(value) -> int | None:
    """A duration of Flink's checkpoint summary ("NaN" when no checkpoint completed)."""
    try:
        return round(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def throughput_table(r: dict) -> str:
    floor = f" [floor: {r['floor']} pass-through, no decisions]" if r.get("floor") else ""
    return (f"throughput{floor}: {r['alerts']} alerts ({r['users']} users, zipf {r['zipf_s']}) in {r['job_s']} s "
            f"= {r['alerts_per_s']} alerts/s exactly-once, parallelism {r['parallelism']} on {r['cpus']} cpus\n"
            f"  output end offsets {r['output_end_offsets']}\n"
            f"  second half (sustained): {r['steady_alerts_per_s']} alerts/s, "
            f"{r['steady_job_cpu_ms_per_alert']} ms of job CPU per alert ({r['steady_task_cpu_ms_per_alert']} ms in the "
            f"operator's task threads)\n"
            f"  job CPU {r['job_cpu_s']} s = {r['job_cpu_ms_per_alert']} ms/alert (JIT compilers {r['jit_cpu_s']} s, "
            f"the operator's task threads {r['task_cpu_ms_per_alert']} ms/alert), "
            f"broker CPU {r['broker_cpu_s']} s\n  peak RSS {r['peak_rss_mb']} MB; {r['checkpoints']} checkpoints, "
            f"p50 {r['checkpoint_p50_ms']} ms, max {r['checkpoint_max_ms']} ms, last full size "
            f"{r['checkpoint_full_size_bytes']} B = {r['state_bytes_per_user']} B/user\n"
            f"  event time started {r['watermark_first_s']} s into the run, caught up {r['event_time_catch_up_s']} s "
            f"after the input was read (job CPU {r['event_time_catch_up_job_cpu_s']} s meanwhile); "
            f"DLQ by reason {r['rejected_by_reason']}")
