"""The latency bench's record of checkpoints (jobs.bench.CheckpointWatch), against a small HTTP
server that answers like Flink's `/jobs/<id>/checkpoints`: its history keeps only the latest few
checkpoints, so the watch must collect them as they pass, once each, completed ones only."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jobs.bench import CheckpointWatch


def checkpoint(checkpoint_id: int, status: str = "COMPLETED") -> dict:
    return {"id": checkpoint_id, "status": status, "trigger_timestamp": 1_000 * checkpoint_id,
            "end_to_end_duration": 100 * checkpoint_id}


class FakeFlink(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.history: list[dict] = []
        self.paths: list[str] = []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.paths.append(self.path)
        body = json.dumps({"history": self.server.history}).encode()
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
    assert watch.summary(since_ms=0) == {"checkpoints": 4, "checkpoint_p50_ms": 400, "checkpoint_p99_ms": 500,
                                         "checkpoint_max_ms": 500}
    # Only those triggered in the measured period (trigger time 4,000 ms or later).
    assert watch.summary(since_ms=4_000) == {"checkpoints": 2, "checkpoint_p50_ms": 500,
                                             "checkpoint_p99_ms": 500, "checkpoint_max_ms": 500}
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
