"""Pseudonymous tokens: what stays of a user after an erasure, and how services recognise them.

    token = "tok_" + HMAC-SHA256(PENALTY_PRIVACY_TOKEN_KEY, user id), 32 hex digits

Only a holder of the key can tell which user a token belongs to (by computing it from the user
id); the token alone names nobody. Two Redis keys hold tokens, never user ids:

    penalty:ban:<token>     hash    a ban kept under legitimate interest after the user's erasure
                                    (status banned, kept_ms, erasure_id); the applier keeps the
                                    user banned while it exists, stream servers check it
    penalty:erased:<token>  string  when the user was erased (ms); the applier and the notifier drop
                                    records of the user from before then (in flight, or replayed)
"""

from __future__ import annotations

import hashlib
import hmac

TOKEN_KEY_ENV = "PENALTY_PRIVACY_TOKEN_KEY"
BAN_KEY = "penalty:ban:{}"
ERASED_KEY = "penalty:erased:{}"


def user_token(key: bytes, user_id: str) -> str:
    return "tok_" + hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def token_key_or_none(environ: dict | None = None) -> bytes | None:
    """The token key when configured (services run without it; then no erasure is recognised)."""
    import os

    value = (os.environ if environ is None else environ).get(TOKEN_KEY_ENV, "")
    return value.encode() if value else None


def erased_before(client, key: bytes | None, user_id: str, event_time_ms: int) -> bool:
    """True when the user was erased at or after `event_time_ms`: their record must not be kept."""
    if key is None:
        return False
    erased_ms = client.get(ERASED_KEY.format(user_token(key, user_id)))
    return erased_ms is not None and event_time_ms <= int(erased_ms)


def standing(client, user_id: str, key: bytes | None) -> dict:
    """What a stream server checks before a user goes live: `penalty:user:<id>` (the applier's),
    with status banned when a ban was kept by token for this user."""
    from sinks.applier import USER_KEY

    status = {k.decode(): v.decode() for k, v in client.hgetall(USER_KEY.format(user_id)).items()}
    if key is not None and client.exists(BAN_KEY.format(user_token(key, user_id))):
        status["status"] = "banned"
    return status
