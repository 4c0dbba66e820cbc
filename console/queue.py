"""The moderators' queue: the Redis streams `penalty:moderation:<priority>`, and claims on items.

The notifier adds one entry per review request (fields notification_id, subject, body,
incident_id, kind=review, user_id, violation_type); the console's appeal page adds kind=appeal
entries (incident_id, user_id, statement, appeal_id). The queue shows them urgent first, oldest
first within a priority (stream order: the entry id's time is when it arrived). Deciding an item
deletes its entry; the action log (`penalty:console:actions`) keeps what was decided.

A claim is one Redis key per incident and kind, SET NX PX: the first moderator holds it for
CLAIM_TTL_MS (renewed on every claim by the holder), a second one is told who holds it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from sinks.notifier import MODERATION_KEY

PRIORITIES = ("urgent", "high", "normal", "low")
APPEAL_PRIORITY = "normal"
CLAIM_KEY = "penalty:console:claim:{}:{}"
ACTIONS_KEY = "penalty:console:actions"
CLAIM_TTL_MS = 15 * 60_000
GUARD_STREAM = "detector_guard"  # the notifier's stream of detector-guard notices (not items to decide)
GUARD_NOTICES = 5
ENTRY_ID = re.compile(r"^(\d{1,20})-(\d{1,20})$")
_USER_IN_BODY = re.compile(r"of user (\S+) needs human review")

# KEYS[1] claim key; ARGV moderator id, ttl ms. Returns the holder after the call.
_CLAIM_LUA = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return holder
"""
# KEYS[1] claim key; ARGV moderator id. Deletes the claim only when that moderator holds it.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class GuardNotice:
    arrived_ms: int
    detector_id: str
    subject: str  # "Detector guard tripped: ..." or "... released: ..."
    body: str


@dataclass(frozen=True)
class QueueItem:
    priority: str
    entry_id: str  # the stream entry's id, "<ms>-<seq>"
    kind: str  # review | appeal
    incident_id: str
    user_id: str
    violation_type: str
    subject: str
    statement: str  # the streamer's words (appeals)

    @property
    def arrived_ms(self) -> int:
        return int(self.entry_id.split("-", 1)[0])

    @property
    def ref(self) -> str:
        """How pages and forms name the item: `<priority>/<entry id>`."""
        return f"{self.priority}/{self.entry_id}"

    def sort_key(self) -> tuple[int, int, int]:
        ms, seq = (int(x) for x in self.entry_id.split("-", 1))
        return PRIORITIES.index(self.priority), ms, seq


def parse_entry(priority: str, entry_id: str | bytes, fields: dict) -> QueueItem:
    """One stream entry as the queue shows it; entries written before the notifier added
    `user_id` name the user in the body only."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    user_id = f.get("user_id") or ""
    if not user_id:
        found = _USER_IN_BODY.search(f.get("body", ""))
        user_id = found.group(1) if found else ""
    return QueueItem(priority=priority, entry_id=_text(entry_id), kind=f.get("kind") or "review",
                     incident_id=f.get("incident_id", ""), user_id=user_id,
                     violation_type=f.get("violation_type", ""), subject=f.get("subject", ""),
                     statement=f.get("statement", ""))


def ordered(items: list[QueueItem]) -> list[QueueItem]:
    """Urgent first, then high, normal, low; oldest first within a priority."""
    return sorted(items, key=QueueItem.sort_key)


@dataclass(frozen=True)
class PrioritySummary:
    priority: str
    count: int
    oldest_age_ms: int | None


def summarize(counts: dict[str, int], oldest_ms: dict[str, int | None], now_ms: int) -> list[PrioritySummary]:
    return [PrioritySummary(p, counts.get(p, 0),
                            None if oldest_ms.get(p) is None else max(0, now_ms - oldest_ms[p]))
            for p in PRIORITIES]


def format_time(ms: int | str | None) -> str:
    """Epoch ms as `2026-12-04 10:15 UTC`; '-' for none."""
    try:
        value = int(ms or 0)
    except ValueError:
        return str(ms)
    return datetime.fromtimestamp(value / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def format_age(age_ms: int | None) -> str:
    if age_ms is None:
        return "-"
    minutes = age_ms // 60_000
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes // 1440} d {minutes // 60 % 24} h"


class Queue:
    def __init__(self, client: redis.Redis, claim_ttl_ms: int = CLAIM_TTL_MS):
        self.client = client
        self.claim_ttl_ms = claim_ttl_ms
        self._claim = client.register_script(_CLAIM_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def read(self, now_ms: int, per_priority: int = 100) -> tuple[list[QueueItem], list[PrioritySummary]]:
        """The oldest `per_priority` items of each priority, in queue order, and the summary."""
        with self.client.pipeline(transaction=False) as pipe:
            for priority in PRIORITIES:
                pipe.xrange(MODERATION_KEY.format(priority), count=per_priority)
                pipe.xlen(MODERATION_KEY.format(priority))
            replies = pipe.execute()
        items, counts, oldest = [], {}, {}
        for i, priority in enumerate(PRIORITIES):
            entries, counts[priority] = replies[2 * i], replies[2 * i + 1]
            items += [parse_entry(priority, entry_id, fields) for entry_id, fields in entries]
            oldest[priority] = int(_text(entries[0][0]).split("-")[0]) if entries else None
        return ordered(items), summarize(counts, oldest, now_ms)

    def guard_notices(self, count: int = GUARD_NOTICES) -> list[GuardNotice]:
        """The newest detector-guard trips and releases (`penalty:moderation:detector_guard`), newest
        first: while a detector is tripped its enforce-band alerts arrive here as urgent reviews."""
        entries = self.client.xrevrange(MODERATION_KEY.format(GUARD_STREAM), count=count)
        return [GuardNotice(int(_text(entry_id).split("-")[0]), _text(fields.get(b"detector_id", b"")),
                            _text(fields.get(b"subject", b"")), _text(fields.get(b"body", b"")))
                for entry_id, fields in entries]

    def item(self, priority: str, entry_id: str) -> QueueItem | None:
        if priority not in PRIORITIES or not ENTRY_ID.match(entry_id):
            return None
        entries = self.client.xrange(MODERATION_KEY.format(priority), min=entry_id, max=entry_id)
        return parse_entry(priority, *entries[0]) if entries else None

    def claim(self, item: QueueItem, moderator_id: str) -> str:
        """Who holds the item after the call: `moderator_id` when it was free or theirs already."""
        return _text(self._claim(keys=[CLAIM_KEY.format(item.kind, item.incident_id)],
                                 args=[moderator_id, self.claim_ttl_ms]))

    def holder(self, item: QueueItem) -> str | None:
        held = self.client.get(CLAIM_KEY.format(item.kind, item.incident_id))
        return _text(held) if held is not None else None

    def release(self, item: QueueItem, moderator_id: str) -> bool:
        return bool(self._release(keys=[CLAIM_KEY.format(item.kind, item.incident_id)], args=[moderator_id]))

    def done(self, item: QueueItem, action: dict) -> None:
        """The item was decided: its entry leaves the queue, its claim goes, the action is logged,
        all in one transaction."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xdel(MODERATION_KEY.format(item.priority), item.entry_id)
            pipe.delete(CLAIM_KEY.format(item.kind, item.incident_id))
            pipe.xadd(ACTIONS_KEY, _fields(action))
            pipe.execute()


def log_action(client: redis.Redis, action: dict) -> None:
    """Append one moderator action to the console's audit trail (never trimmed)."""
    client.xadd(ACTIONS_KEY, _fields(action))


def _fields(action: dict) -> dict:
    fields = {k: "" if v is None else str(v) for k, v in action.items()}
    fields.setdefault("time_ms", str(int(time.time() * 1000)))
    return fields


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
