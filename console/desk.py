"""What the incident and user pages read: the user's standing in Redis (the applier's keys), the
review record of an incident (`penalty:review:<incident_id>`, kept by `python -m console
index-reviews` from the `review` topic), and the user's history from the audit archive."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from sinks.applier import USER_KEY
from sinks.audit import user_entries

REVIEW_KEY = "penalty:review:{}"
REVIEW_TTL_S = 8 * 86_400  # incidents stay decidable 7 days in the job
ACTIONS_SCAN = 2_000


@dataclass(frozen=True)
class UserView:
    user_id: str
    status: dict  # penalty:user:<id> as strings; empty when the applier never wrote it
    history: list[dict] = field(default_factory=list)  # audit records, newest first
    ledger: dict | None = None  # the newest ledger_after of the history
    actions: list[dict] = field(default_factory=list)  # console actions about the user, newest first
    strikes: list[tuple[str, int | None]] = field(default_factory=list)  # active: (incident, expires at ms)


def user_status(client: redis.Redis, user_id: str) -> dict:
    return {k.decode(): v.decode() for k, v in client.hgetall(USER_KEY.format(user_id)).items()}


def review_record(client: redis.Redis, incident_id: str) -> dict | None:
    raw = client.get(REVIEW_KEY.format(incident_id))
    return json.loads(raw) if raw else None


def store_review(client: redis.Redis, record: dict) -> None:
    """Keep the newest review record of an incident, with the evidence of every one before it
    (one record per alert that sent the incident to review)."""
    stored = review_record(client, record["incident_id"])
    if stored:
        seen = {e.get("alert_id") for e in record.get("evidence", [])}
        record = {**record, "evidence": [e for e in stored.get("evidence", []) if e.get("alert_id") not in seen]
                  + list(record.get("evidence", []))}
    client.set(REVIEW_KEY.format(record["incident_id"]), json.dumps(record, separators=(",", ":")), ex=REVIEW_TTL_S)


def history(archive_dir: Path | None, user_id: str, limit: int = 200, keyring=None) -> list[dict]:
    """The user's audit records, newest first (at most `limit`): sealed entries opened with the
    user's data key (keyring: sinks.sealing.KeyRing, when the console has the master key) and
    plaintext entries from before sealing. A linear scan of the archive (sinks.audit.user_entries)."""
    if archive_dir is None or not Path(archive_dir).is_dir():
        return []
    found = user_entries(Path(archive_dir), user_id, keyring).records
    found.sort(key=lambda r: r.get("event_time_ms", 0), reverse=True)
    return found[:limit]


def incident_records(records: list[dict], incident_id: str) -> list[dict]:
    return [r for r in records if r.get("incident_id") == incident_id]


def latest_ledger(records: list[dict]) -> dict | None:
    for record in records:  # newest first
        if record.get("ledger_after"):
            return record["ledger_after"]
    return None


def active_strikes(records: list[dict], ledger: dict | None) -> list[tuple[str, int | None]]:
    """The ledger's active strikes with their expiry, from the audit record that made each one
    (None: that record is not in the archive)."""
    expiry = {r.get("incident_id"): (r.get("detail") or {}).get("strike_expires_at_ms") for r in records
              if r.get("kind") == "decision" and r.get("outcome") == "enforced"}
    return [(incident, expiry.get(incident)) for incident in (ledger or {}).get("active_strikes", [])]


def console_actions(client: redis.Redis, user_id: str, scan: int = ACTIONS_SCAN) -> list[dict]:
    """The console's own actions (claims, decisions, appeals) about this user, newest first."""
    from console.queue import ACTIONS_KEY

    out = []
    for entry_id, fields in client.xrevrange(ACTIONS_KEY, count=scan):
        f = {k.decode(): v.decode() for k, v in fields.items()}
        if f.get("user_id") == user_id:
            out.append({"entry_id": entry_id.decode(), **f})
    return out


def user_view(client: redis.Redis, archive_dir: Path | None, user_id: str, keyring=None) -> UserView:
    records = history(archive_dir, user_id, keyring=keyring)
    ledger = latest_ledger(records)
    return UserView(user_id, user_status(client, user_id), records, ledger, console_actions(client, user_id),
                    active_strikes(records, ledger))


def stream_owner(client: redis.Redis, stream_id: str) -> str | None:
    """The user of a stream the applier stopped (`penalty:stream:<id>`), for lookups by stream id."""
    from sinks.applier import STREAM_KEY

    owner = client.hget(STREAM_KEY.format(stream_id), "user_id")
    return owner.decode() if owner else None


def index_reviews(bootstrap: str, client: redis.Redis, topic: str = "review", group_id: str = "console-reviews",
                  stop=lambda: False, idle_exit_s: float | None = None, token_key: bytes | None = None) -> int:
    """Consume `review` (read_committed) into `penalty:review:<incident_id>`; offsets are
    committed after Redis has the batch. Returns the number of records stored. token_key
    (PENALTY_PRIVACY_TOKEN_KEY): records of an erased user from before the erasure are dropped."""
    from confluent_kafka import Consumer

    from sinks.tokens import erased_before

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "isolation.level": "read_committed",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    stored, last = 0, time.monotonic()
    try:
        while not stop():
            batch = [m for m in consumer.consume(500, timeout=0.5) if not m.error()]
            if not batch:
                if idle_exit_s is not None and time.monotonic() - last > idle_exit_s:
                    break
                continue
            last = time.monotonic()
            for msg in batch:
                try:
                    record = json.loads(msg.value())
                    record["incident_id"]
                except (ValueError, KeyError, TypeError):
                    continue  # the job writes review v1 only; nothing else is worth keeping
                if erased_before(client, token_key, str(record.get("user_id") or ""), record.get("event_time_ms", 0)):
                    continue
                store_review(client, record)
                stored += 1
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return stored
