"""What the benches read of a running job on Flink's REST API, against a small HTTP server that
answers like Flink:
- the latency bench's record of checkpoints (devtools.bench.latency.CheckpointWatch) from
  `/jobs/<id>/checkpoints`: its history keeps only the latest few checkpoints, so the watch must
  collect them as they pass, once each, completed ones only;
- the throughput bench's OperatorWatch: when the operator's input watermark first leaves
  Long.MIN_VALUE, when its output watermark has caught up with it (the due timers fired), and
  the DLQ by reason from the `alerts_rejected` counters."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from devtools.bench.latency import CheckpointWatch
from devtools.bench.throughput import OperatorWatch


def checkpoint(checkpoint_id: int, status: str = "COMPLETED") -> dict:
    return {"id": checkpoint_id, "status": status, "trigger_timestamp": 1_000 * checkpoint_id,
            "end_to_end_duration": 100 * checkpoint_id}


MIN_WATERMARK = float(-(2**63))  # as Flink's JSON prints a gauge of Long.MIN_VALUE aggregated


class FakeFlink(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.history: list[dict] = []
        self.paths: list[str] = []
        # The penalty operator's vertex: metric id -> (min, sum) over its subtasks.
        self.metrics: dict[str, tuple[float, float]] = {}

    def answer(self, path: str):
        if path == "/jobs/job-1":
            return {"vertices": [{"id": "v-source", "name": "Source: alerts source -> key by user"},
                                 {"id": "v-op", "name": "penalty decisions -> route outputs -> outputs sink"}]}
        base = "/jobs/job-1/vertices/v-op/subtasks/metrics"
        if path == base:
            return [{"id": name} for name in self.metrics]
        if path.startswith(base + "?get="):
            names = path[len(base) + 5:].split("&")[0].split(",")
            assert path.endswith("&agg=min,sum")
            return [{"id": n, "min": self.metrics[n][0], "sum": self.metrics[n][1]} for n in names if n in self.metrics]
        if path.startswith("/jobs/job-1/checkpoints/details/"):
            # Two subtasks per vertex; the watch keeps the slowest of each part.
            checkpoint_id = int(path.split("/")[5])
            return {"subtasks": [
                {"status": "completed", "start_delay": checkpoint_id, "alignment": {"duration": 2},
                 "checkpoint": {"sync": 10 * checkpoint_id, "async": 7}},
                {"status": "completed", "start_delay": 1, "alignment": {"duration": 3},
                 "checkpoint": {"sync": 5, "async": 70}},
                {"status": "pending_or_failed"}]}
        return {"history": self.history}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.paths.append(self.path)
        body = json.dumps(self.server.answer(self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the watch did not poll in time"
        time.sleep(0.05)


def test_the_watch_collects_completed_checkpoints_as_the_history_rolls_over():
    server = FakeFlink()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    watch = CheckpointWatch(server.server_address[1], "job-1")
    try:
        server.history = [checkpoint(3, "IN_PROGRESS"), checkpoint(2), checkpoint(1, "FAILED")]
        watch.start()
        wait_for(lambda: 2 in watch.completed)
        # The next poll sees a history that no longer holds checkpoint 2, and 3 completed since.
        server.history = [checkpoint(5), checkpoint(4), checkpoint(3)]
        wait_for(lambda: 5 in watch.completed)
    finally:
        watch.done.set()
        watch.join(timeout=5)
        server.shutdown()
    assert server.paths[0] == "/jobs/job-1/checkpoints"
    assert sorted(watch.completed) == [2, 3, 4, 5]
    # Each checkpoint's parts were read once, for both vertices, the slowest subtask of each part.
    assert sorted(watch.parts) == [2, 3, 4, 5]
    assert watch.parts[5]["v-op"] == {"start_delay": 5, "alignment": 3, "sync": 50, "async": 70}
    source = {"start_delay": [4, 5], "alignment": [3, 3], "sync": [40, 50], "async": [70, 70]}
    assert watch.summary(since_ms=0) == {"checkpoints": 4, "checkpoint_p50_ms": 400, "checkpoint_p99_ms": 500,
                                         "checkpoint_max_ms": 500,
                                         "checkpoint_parts_ms": {"Source: alerts source": source,
                                                                 "penalty decisions": source}}
    # Only those triggered in the measured period (trigger time 4,000 ms or later).
    assert watch.summary(since_ms=4_000)["checkpoints"] == 2
    assert watch.summary(since_ms=4_000)["checkpoint_parts_ms"]["penalty decisions"]["sync"] == [50, 50]
    assert watch.summary(since_ms=10_000) == {"checkpoints": 0}


def test_an_unreachable_rest_endpoint_records_nothing_and_does_not_stop_the_watch():
    server = FakeFlink()
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    watch = CheckpointWatch(port, "job-1")
    watch.start()
    time.sleep(1.3)
    assert watch.is_alive()
    watch.done.set()
    watch.join(timeout=5)
    assert watch.summary(since_ms=0) == {"checkpoints": 0}


def test_the_operator_watch_sees_event_time_start_and_counts_rejections_by_reason():
    server = FakeFlink()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.metrics = {
        OperatorWatch.WATERMARK: (MIN_WATERMARK, 2 * MIN_WATERMARK),
        "route_outputs.alerts_in": (10.0, 30.0),
        "route_outputs.reason.not_json.alerts_rejected": (1.0, 3.0),
        "route_outputs.reason.too_late.alerts_rejected": (0.0, 2.0),
        "route_outputs.reason.empty.alerts_rejected": (0.0, 0.0),
        "route_outputs.reason.invalid_decision.decisions_rejected": (1.0, 1.0),
    }
    watch = OperatorWatch(server.server_address[1], "job-1")
    try:
        watch.start()
        wait_for(lambda: len(server.paths) >= 3)
        assert watch.watermark_first_s is None  # one subtask still has no watermark
        server.metrics[OperatorWatch.WATERMARK] = (1.79e12, 3.58e12)
        wait_for(lambda: watch.watermark_first_s is not None)
        watch.join(timeout=5)
        assert not watch.is_alive()  # nothing left to watch until the end
        # Event time has not caught up until the operator's output watermark reaches its input.
        server.metrics[OperatorWatch.OUTPUT_WATERMARK] = (1.70e12, 3.40e12)
        assert not watch.event_time_caught_up(timeout_s=1.5)
        server.metrics[OperatorWatch.OUTPUT_WATERMARK] = (1.79e12, 3.58e12)
        assert watch.event_time_caught_up(timeout_s=5)
        # Decisions are not alerts, and reasons at zero are left out.
        assert watch.rejected_by_reason(settle_s=0) == {"not_json": 3, "too_late": 2}
    finally:
        watch.done.set()
        server.shutdown()
    assert watch.watermark_first_s >= 1.0


def test_the_operator_watch_gives_up_waiting_for_event_time_when_the_operator_has_no_watermark_metrics():
    """A job whose operator is not named "penalty decisions" reports no such metrics: the bench
    must not wait its whole timeout (an hour by default) for them after the input is read."""
    server = FakeFlink()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    watch = OperatorWatch(server.server_address[1], "job-1")
    try:
        started = time.monotonic()
        assert not watch.event_time_caught_up(timeout_s=60, unseen_s=0.5)
        assert time.monotonic() - started < 10
    finally:
        server.shutdown()
