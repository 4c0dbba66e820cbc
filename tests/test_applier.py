"""Enforcement applier on a real broker and real Redis: state, ordering, redelivery, outage."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from devtools.localstack import create_topics, free_port, start_redis
from jobs.config import Topics
from rules.simulate import run as simulate
from sinks.applier import COMMANDS, Applier, run

from .conftest import DAY_MS, T0_MS, alert_bytes
from .stack_helpers import produce

pytestmark = pytest.mark.stack


def enforcement_records(policy, lines) -> list[dict]:
    return [json.loads(x)["record"] for x in simulate(policy, lines) if '"kind":"enforcement"' in x]


def user_alerts() -> list[bytes]:
    # u-ban: 4 hate-speech strikes (warning, 24 h, 7 d, ban); u-sus: 2 copyright (7 d suspension).
    out = [alert_bytes(alert_id=f"b{i}", user_id="u-ban", stream_id=f"sb{i}", event_time_ms=T0_MS + i * DAY_MS)
           for i in range(4)]
    out += [alert_bytes(alert_id=f"c{i}", user_id="u-sus", stream_id=f"sc{i}", violation_type="copyright",
                        event_time_ms=T0_MS + i * 3_600_000) for i in range(2)]
    return out


def snapshot(client: redis.Redis) -> dict:
    state = {key.decode(): client.hgetall(key) for key in client.scan_iter("penalty:*") if key != COMMANDS.encode()}
    state["commands"] = client.xlen(COMMANDS)
    return state


@pytest.fixture
def client(stack):
    c = redis.Redis.from_url(stack.redis_url)
    c.flushdb()
    yield c
    c.flushdb()


def test_apply_gives_the_state_stream_servers_read_and_ignores_stale_records(client, policy):
    records = enforcement_records(policy, user_alerts())
    applier = Applier(client)
    assert all(applier.apply(r) for r in records)
    banned = client.hgetall("penalty:user:u-ban")
    assert banned[b"status"] == b"banned" and banned[b"active_strikes"] == b"4"
    suspended = client.hgetall("penalty:user:u-sus")
    assert suspended[b"status"] == b"suspended"
    assert int(suspended[b"until_ms"]) == T0_MS + 3_600_000 + 7 * DAY_MS
    assert client.hgetall("penalty:stream:sc1")[b"stopped"] == b"1"
    stops = [r for r in records if r["action"] == "stop_stream"]
    assert client.xlen(COMMANDS) == len(stops)
    before = snapshot(client)
    # Redelivery of everything, and an old record after the newest: nothing changes.
    assert not any(applier.apply(r) for r in records)
    assert not applier.apply(records[0])
    assert snapshot(client) == before


def test_replaying_the_enforcement_topic_twice_leaves_redis_identical(stack, client, policy):
    from devtools.generator import AlertGenerator

    topics = Topics().prefixed("apply-")
    create_topics(stack.bootstrap, topics.partitions())
    lines = list(AlertGenerator(seed=21, users=60, start_ms=T0_MS, step_ms=600_000).payloads(1500))
    records = enforcement_records(policy, lines)
    producer_values = [json.dumps(r).encode() for r in records]
    produce(stack.bootstrap, topics.enforcement, producer_values, key_field="user_id")  # as the job keys them
    first = run(stack.bootstrap, stack.redis_url, topics.enforcement, "applier-a", idle_exit_s=3)
    assert first == {"applied": len(records), "stale": 0, "invalid": 0}
    after_first = snapshot(client)
    for group in ("applier-b", "applier-c"):  # two full replays from the beginning
        again = run(stack.bootstrap, stack.redis_url, topics.enforcement, group, idle_exit_s=3)
        assert again["applied"] == 0 and again["stale"] == len(records)
        assert snapshot(client) == after_first


def test_redis_outage_then_catch_up_without_loss(stack, policy, tmp_path):
    topics = Topics().prefixed("outage-")
    create_topics(stack.bootstrap, topics.partitions())
    port = free_port()
    service = start_redis(port, tmp_path / "redis", persist=True)
    url = f"redis://127.0.0.1:{port}/0"
    records = enforcement_records(policy, user_alerts())
    expected = redis.Redis.from_url(stack.redis_url)  # what applying each record once gives
    expected.flushdb()
    for record in records:
        Applier(expected).apply(record)
    want = snapshot(expected)
    expected.flushdb()
    stop = threading.Event()
    batches = []
    worker = threading.Thread(target=run, kwargs={"bootstrap": stack.bootstrap, "redis_url": url,
                                                   "topic": topics.enforcement, "group_id": "outage",
                                                   "stop": stop.is_set, "on_batch": batches.append})
    worker.start()
    try:
        produce(stack.bootstrap, topics.enforcement, [json.dumps(r).encode() for r in records[:3]], key_field="user_id")
        deadline = time.monotonic() + 30
        while not batches and time.monotonic() < deadline:
            time.sleep(0.2)
        assert batches, "the applier did not apply the first records"
        service.stop()  # Redis goes away for 30 s while enforcement keeps arriving
        produce(stack.bootstrap, topics.enforcement, [json.dumps(r).encode() for r in records[3:]], key_field="user_id")
        time.sleep(30)
        service = start_redis(port, tmp_path / "redis", persist=True)
        client = redis.Redis.from_url(url)
        # Until everything is applied: the users' records sit on different partitions, so one
        # user's final status alone (what this waited for before) can come before another's.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and snapshot(client) != want:
            time.sleep(0.5)
    finally:
        stop.set()
        worker.join(timeout=30)
        service.stop()
    # Every record was applied once: the final state is what applying all of them gives.
    service = start_redis(port, tmp_path / "redis", persist=True)
    try:
        assert snapshot(redis.Redis.from_url(url)) == want
    finally:
        service.stop()
