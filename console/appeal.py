"""The streamer's side: an appeal through the signed link of a notification.

The link is the notifier's (`sinks.notifier.appeal_link`: incident, user, expires, sig). It is
verified (signature, expiry) and refused when the incident was appealed already; a valid appeal
is marked (`penalty:console:appealed:<incident_id>`) and queued for moderators as a kind=appeal
entry of `penalty:moderation:normal`, both in one Lua script, so a double submit queues nothing
twice. A refused link writes nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from console.queue import APPEAL_PRIORITY
from sinks.notifier import (
    INBOX_KEY,
    MODERATION_KEY,
    AppealTokenError,
    verify_appeal_link,
)

APPEALED_KEY = "penalty:console:appealed:{}"
APPEALED_TTL_MS = 90 * 86_400_000  # beyond every link's expiry (30 days)
MAX_STATEMENT = 2000

# KEYS[1] appealed marker, KEYS[2] moderation stream; ARGV appeal id, ttl ms, then field/value pairs.
_APPEAL_LUA = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
return redis.call('XADD', KEYS[2], '*', unpack(fields))
"""


class AlreadyAppealed(AppealTokenError):
    """The incident has an appeal already: one per incident."""


@dataclass(frozen=True)
class AppealLink:
    incident_id: str
    user_id: str
    link: str


def appeal_id(incident_id: str) -> str:
    return "apl_" + hashlib.sha256(incident_id.encode()).hexdigest()[:24]


class AppealDesk:
    def __init__(self, client: redis.Redis, secret: bytes):
        self.client = client
        self.secret = secret
        self._appeal = client.register_script(_APPEAL_LUA)

    def check(self, link: str, now_ms: int) -> AppealLink:
        """The link's incident and user; AppealTokenError (forged, expired) or AlreadyAppealed."""
        incident_id, user_id = verify_appeal_link(link, self.secret, now_ms)
        if self.client.exists(APPEALED_KEY.format(incident_id)):
            raise AlreadyAppealed("this penalty has been appealed already; you will be notified of the decision")
        return AppealLink(incident_id, user_id, link)

    def notice(self, user_id: str, incident_id: str, scan: int = 500) -> dict | None:
        """The in-app message the streamer got for this incident (subject, body), newest first."""
        for _, fields in self.client.xrevrange(INBOX_KEY.format(user_id), count=scan):
            f = {k.decode(): v.decode() for k, v in fields.items()}
            if f.get("incident_id") == incident_id:
                return f
        return None

    def submit(self, link: str, statement: str, now_ms: int, violation_type: str = "") -> str:
        """Queue the appeal; returns the moderation entry id. Raises as check() does, and
        ValueError for an empty or too long statement."""
        statement = (statement or "").strip()
        if not statement:
            raise ValueError("please tell us why you think the penalty is wrong")
        if len(statement) > MAX_STATEMENT:
            raise ValueError(f"please keep the statement under {MAX_STATEMENT} characters")
        checked = self.check(link, now_ms)
        aid = appeal_id(checked.incident_id)
        subject = f"Appeal: {violation_type.replace('_', ' ')}" if violation_type else "Appeal"
        fields = {"kind": "appeal", "appeal_id": aid, "incident_id": checked.incident_id,
                  "user_id": checked.user_id, "violation_type": violation_type, "subject": subject,
                  "statement": statement, "appealed_ms": str(now_ms)}
        args = [aid, APPEALED_TTL_MS] + [x for pair in fields.items() for x in pair]
        entry = self._appeal(keys=[APPEALED_KEY.format(checked.incident_id), MODERATION_KEY.format(APPEAL_PRIORITY)],
                             args=args)
        if entry is None:  # another submit won between check() and here
            raise AlreadyAppealed("this penalty has been appealed already; you will be notified of the decision")
        return entry.decode() if isinstance(entry, bytes) else str(entry)
