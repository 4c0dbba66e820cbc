"""The local stack for runs and tests: noida-db (Kafka protocol) and Debian redis-server on
loopback ports, each with a health check, stopped cleanly:
`python -m devtools.localstack up|down|status|create-topics`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.config import REPO_ROOT

RUN_DIR = Path(os.environ.get("PENALTY_RUN_DIR", REPO_ROOT / ".run"))  # state of `up`, logs, data
STATE_FILE = RUN_DIR / "stack.json"


class StackError(Exception):
    """The local stack cannot start; the message says what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _tool(name: str) -> str:
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.exists():
        return str(venv_bin)
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name} is not installed: run `bash scripts/setup.sh` (or `make setup`)")
    return found


def _stop_group(pid: int, timeout_s: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group (the noida-db wrapper and its native broker), then SIGKILL."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap our child: a zombie leader keeps the group "alive"
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class Service:
    name: str
    port: int
    pid: int | None = None
    proc: subprocess.Popen | None = None

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc.pid, proc=self.proc)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        elif self.pid:
            _stop_group(self.pid)


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def start_broker(port: int, data_dir: Path, timeout_s: float = 30.0) -> Service:
    if port_taken(port):
        raise StackError(f"port {port} is already taken: stop what uses it (`make stop`) or pick another port")
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = _spawn([_tool("noida-db"), "start", "--data-dir", str(data_dir), "--host", "127.0.0.1",
                   "--only", "kafka", "--kafka-port", str(port)], data_dir / "broker.log")
    service = Service("kafka", port, proc.pid, proc)
    from confluent_kafka.admin import AdminClient

    # log_level 0: "connection refused" while the broker starts is expected, not worth a line.
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}", "socket.timeout.ms": 2000, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"the broker exited at start (code {proc.returncode}); see {data_dir / 'broker.log'}")
        try:
            admin.list_topics(timeout=1)  # health check: first successful metadata request
            return service
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    service.stop()
    raise StackError(f"the broker did not answer metadata requests within {timeout_s:.0f} s; see {data_dir / 'broker.log'}")


def start_redis(port: int, data_dir: Path, timeout_s: float = 15.0, persist: bool = False) -> Service:
    if port_taken(port):
        raise StackError(f"port {port} is already taken: stop what uses it (`make stop`) or pick another port")
    data_dir.mkdir(parents=True, exist_ok=True)
    # Local runs and tests keep Redis in memory; persist=True (append-only file) survives a restart.
    proc = _spawn([_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "yes" if persist else "no", "--dir", str(data_dir)], data_dir / "redis.log")
    service = Service("redis", port, proc.pid, proc)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"redis-server exited at start (code {proc.returncode}); see {data_dir / 'redis.log'}")
        try:
            if client.ping():
                return service
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.05)
    service.stop()
    raise StackError(f"redis-server did not answer PING within {timeout_s:.0f} s")


def create_topics(bootstrap: str, partitions: dict[str, int], retention_ms: int = -1, replication: int = 1) -> None:
    """Create topics (idempotent). Locally retention is disabled: noida-db applies retention by
    record timestamp, and alerts carry old event times in tests and replays."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [NewTopic(name, num_partitions=n, replication_factor=replication, config={"retention.ms": str(retention_ms)})
              for name, n in partitions.items() if name not in existing]
    for name, future in admin.create_topics(wanted).items() if wanted else []:
        try:
            future.result(timeout=10)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StackError(f"could not create topic {name}: {exc}") from exc


@dataclass
class Stack:
    kafka: Service
    redis: Service
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def stop(self) -> None:
        self.kafka.stop()
        self.redis.stop()


def start_stack(data_dir: Path, kafka_port: int | None = None, redis_port: int | None = None) -> Stack:
    kafka_service = start_broker(kafka_port or free_port(), data_dir / "kafka")
    try:
        redis_service = start_redis(redis_port or free_port(), data_dir / "redis")
    except BaseException:
        kafka_service.stop()
        raise
    return Stack(kafka_service, redis_service, data_dir)


def record_stack(stack: Stack) -> None:
    """Write .run/stack.json: what `down` (`make stop`) stops."""
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    STATE_FILE.write_text(json.dumps({"kafka": [stack.kafka.pid, stack.kafka.port],
                                      "redis": [stack.redis.pid, stack.redis.port]}))


def _up(args) -> int:
    if STATE_FILE.exists():
        print(f"stack already recorded in {STATE_FILE}; run `make stop` first", file=sys.stderr)
        return 1
    stack = start_stack(Path(args.data_dir), args.kafka_port, args.redis_port)
    from jobs.config import Topics

    create_topics(stack.bootstrap, Topics().partitions())
    record_stack(stack)
    print(f"kafka {stack.bootstrap}  redis {stack.redis_url}")
    return 0


def down() -> None:
    if not STATE_FILE.exists():
        return
    state = json.loads(STATE_FILE.read_text())
    for name in ("kafka", "redis"):
        pid, port = state.get(name, [None, None])
        if pid:
            Service(name, port, pid).stop()
    STATE_FILE.unlink()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.localstack")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start broker + Redis in the background")
    up.add_argument("--data-dir", default=str(RUN_DIR / "stack"))
    up.add_argument("--kafka-port", type=int, default=19092)
    up.add_argument("--redis-port", type=int, default=16379)
    sub.add_parser("down", help="stop what `up` (or an interrupted run) started")
    sub.add_parser("status")
    topics = sub.add_parser("create-topics", help="create the job's topics on any Kafka cluster (idempotent)")
    topics.add_argument("--bootstrap-servers", required=True)
    topics.add_argument("--prefix", default="")
    topics.add_argument("--retention-ms", type=int, default=-1)
    topics.add_argument("--replication", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "create-topics":
            from jobs.config import Topics

            create_topics(args.bootstrap_servers, Topics().prefixed(args.prefix).partitions(), args.retention_ms,
                          args.replication)
            print(f"topics ready on {args.bootstrap_servers}")
            return 0
        if args.cmd == "up":
            return _up(args)
        if args.cmd == "down":
            down()
            return 0
        print(STATE_FILE.read_text() if STATE_FILE.exists() else "not running")
        return 0
    except StackError as exc:
        print(f"localstack: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
