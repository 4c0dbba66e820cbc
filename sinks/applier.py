"""Enforcement applier: the `enforcement` topic into the Redis state stream servers read.

    python -m sinks.applier [--bootstrap-servers ...] [--redis-url ...] [--topic enforcement]

Redis keys (documented contract for stream servers):
    penalty:user:<user_id>     hash  status (active|suspended|banned), until_ms (suspension end,
                                     0 if none), active_strikes, user_version, last_penalty_id,
                                     rule_id, updated_event_time_ms
    penalty:stream:<stream_id> hash  stopped (1), reason (rule id), penalty_id, user_id
    penalty:commands           stream  one entry per stop command: stream_id, user_id,
                                     penalty_id, reason. Stream servers XREAD it (or a consumer
                                     group) and end the live stream.

With PENALTY_PRIVACY_TOKEN_KEY (sinks/tokens.py) records of an erased user from before the
erasure are dropped, and a ban kept at the erasure (penalty:ban:<token>) keeps the user banned.

Applying is idempotent and ordered per user: one Lua script compares the record's user_version
with the stored one and does nothing unless it is newer, so redelivery, replays and reordering
never regress a user's state (and never repeat a stop command). Offsets are committed only after
Redis accepted the batch; while Redis is down the applier waits and retries, losing nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import redis

from sinks.tokens import BAN_KEY, ERASED_KEY, token_key_or_none, user_token

log = logging.getLogger("sinks.applier")

USER_KEY = "penalty:user:{}"
STREAM_KEY = "penalty:stream:{}"
COMMANDS = "penalty:commands"

# KEYS[1] user hash, KEYS[2] stream hash, KEYS[3] command stream; with a token key also
# KEYS[4] the user's kept ban (penalty:ban:<token>), KEYS[5] their erasure time (penalty:erased:<token>)
# ARGV: user_version, action, until_ms, active_strikes, penalty_id, rule_id, event_time_ms, stream_id, user_id
APPLY_LUA = """
if #KEYS >= 5 then
  local erased = redis.call('GET', KEYS[5])
  if erased and tonumber(ARGV[7]) <= tonumber(erased) then return 0 end
end
local stored = tonumber(redis.call('HGET', KEYS[1], 'user_version') or '0')
local version = tonumber(ARGV[1])
if version <= stored then return 0 end
local action = ARGV[2]
local status = redis.call('HGET', KEYS[1], 'status') or 'active'
local until_ms = tonumber(redis.call('HGET', KEYS[1], 'until_ms') or '0')
if #KEYS >= 5 and redis.call('EXISTS', KEYS[4]) == 1 then
  status = 'banned'  -- kept after the user's erasure: the job forgot it, the ban stands
  if action == 'lift' then action = 'kept_ban' end
end
if action == 'ban' then
  status = 'banned'
elseif action == 'suspend' then
  until_ms = math.max(until_ms, tonumber(ARGV[3]))
  if status ~= 'banned' then status = 'suspended' end
elseif action == 'lift' then
  status = 'active'
  until_ms = 0
end
redis.call('HSET', KEYS[1], 'status', status, 'until_ms', until_ms, 'active_strikes', ARGV[4],
           'user_version', version, 'last_penalty_id', ARGV[5], 'rule_id', ARGV[6],
           'updated_event_time_ms', ARGV[7])
if action == 'stop_stream' and ARGV[8] ~= '' then
  redis.call('HSET', KEYS[2], 'stopped', 1, 'reason', ARGV[6], 'penalty_id', ARGV[5], 'user_id', ARGV[9])
  redis.call('XADD', KEYS[3], '*', 'stream_id', ARGV[8], 'user_id', ARGV[9], 'penalty_id', ARGV[5],
             'reason', ARGV[6])
end
return 1
"""


class Applier:
    def __init__(self, client: redis.Redis, token_key: bytes | None = None):
        """token_key (PENALTY_PRIVACY_TOKEN_KEY): recognise erased users by token (sinks/tokens.py):
        their records from before the erasure are dropped, a ban kept for them stands."""
        self.client = client
        self.token_key = token_key
        self.script = client.register_script(APPLY_LUA)

    def apply(self, record: dict) -> bool:
        """Apply one enforcement record; False when it is not newer than the stored state."""
        stream_id = record.get("stream_id") or ""
        until_ms = record.get("until_ms") or 0
        keys = [USER_KEY.format(record["user_id"]), STREAM_KEY.format(stream_id or "-"), COMMANDS]
        if self.token_key is not None:
            token = user_token(self.token_key, record["user_id"])
            keys += [BAN_KEY.format(token), ERASED_KEY.format(token)]
        applied = self.script(
            keys=keys,
            args=[record["user_version"], record["action"], until_ms, record.get("active_strikes", 0),
                  record["penalty_id"], record["rule_id"], record["event_time_ms"], stream_id, record["user_id"]],
        )
        return bool(applied)

    def apply_until_done(self, record: dict, stop=lambda: False, backoff_max_s: float = 5.0) -> bool | None:
        """Apply, retrying while Redis is unreachable (never skip a record). None if stopped."""
        delay = 0.2
        while not stop():
            try:
                return self.apply(record)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis unavailable (%s); retrying in %.1f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, backoff_max_s)
        return None


def run(bootstrap: str, redis_url: str, topic: str = "enforcement", group_id: str = "enforcement-applier",
        stop=lambda: False, idle_exit_s: float | None = None, on_batch=None, token_key: bytes | None = None) -> dict:
    """Consume until stop() (or idle_exit_s without records); returns counts. token_key: default
    PENALTY_PRIVACY_TOKEN_KEY from the environment, when set."""
    from confluent_kafka import Consumer

    applier = Applier(redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2),
                      token_key_or_none() if token_key is None else token_key)
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": group_id, "group.instance.id": f"{group_id}-1",
        "isolation.level": "read_committed", "enable.auto.commit": False, "auto.offset.reset": "earliest",
    })
    consumer.subscribe([topic])
    counts = {"applied": 0, "stale": 0, "invalid": 0}
    last_record = time.monotonic()
    try:
        while not stop():
            batch = [m for m in consumer.consume(500, timeout=0.5) if not m.error()]
            if not batch:
                if idle_exit_s is not None and time.monotonic() - last_record > idle_exit_s:
                    break
                continue
            last_record = time.monotonic()
            for msg in batch:
                try:
                    record = json.loads(msg.value())
                    record["user_id"], record["user_version"], record["action"]
                except (ValueError, KeyError, TypeError):
                    counts["invalid"] += 1
                    log.error("skipping an invalid enforcement record at %s/%s", msg.partition(), msg.offset())
                    continue
                done = applier.apply_until_done(record, stop)
                if done is None:
                    return counts  # stopped mid-batch: offsets stay uncommitted, the rest is redelivered
                counts["applied" if done else "stale"] += 1
            consumer.commit(asynchronous=False)  # only after Redis has every record of the batch
            if on_batch:
                on_batch(counts)
    finally:
        consumer.close()
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinks.applier", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:19092")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:16379/0")
    parser.add_argument("--topic", default="enforcement")
    parser.add_argument("--group-id", default="enforcement-applier")
    parser.add_argument("--idle-exit-s", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    counts = run(args.bootstrap_servers, args.redis_url, args.topic, args.group_id, idle_exit_s=args.idle_exit_s)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
