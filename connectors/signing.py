"""Signed moderator decisions: an HMAC-SHA256 over every field of a decision record, with the id of
the key that made it, so that writing to the `decisions` topic is not enough to void strikes or lift
bans: only the console and the CLIs, which hold a key, can.

Keys come from the environment only, PENALTY_DECISION_KEYS="<key id>=<secret>[,<key id>=<secret>]":
the first key signs, every listed key verifies. Rotation: put the new key first and keep the old one
second until every writer signs with the new one; then drop the old one (its decisions are then
rejected as invalid_signature).

What is signed: the record without its `signature` field (so the key id is covered too), as
canonical JSON (orjson, keys sorted), after a fixed prefix that names the purpose and version.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from typing import NamedTuple

import orjson

KEYS_ENV = "PENALTY_DECISION_KEYS"
PURPOSE = b"penalty-decision-v1\n"
MIN_SECRET_CHARS = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class SigningError(ValueError):
    """The key configuration is unusable; the message says what to fix."""


class DecisionKeys(NamedTuple):
    current_id: str  # signs
    secrets: Mapping[str, bytes]  # key id -> secret: every one verifies

    def describe(self) -> str:
        return ", ".join(self.secrets)


def parse_keys(text: str, source: str = KEYS_ENV) -> DecisionKeys:
    secrets: dict[str, bytes] = {}
    for item in (part.strip() for part in text.split(",")):
        key_id, sep, secret = item.partition("=")
        key_id = key_id.strip()
        if not sep or not _KEY_ID.match(key_id):
            raise SigningError(f"{source}: each entry is <key id>=<secret> with a key id of letters, digits, "
                               f"'.', '_' or '-' (at most 64); got {key_id[:20]!r}")
        if len(secret) < MIN_SECRET_CHARS:
            raise SigningError(f"{source}: the secret of key {key_id!r} has {len(secret)} characters; use at least "
                               f"{MIN_SECRET_CHARS} random ones (e.g. `openssl rand -hex 32`)")
        if key_id in secrets:
            raise SigningError(f"{source}: key id {key_id!r} is listed twice")
        secrets[key_id] = secret.encode()
    return DecisionKeys(next(iter(secrets)), secrets)


def keys_from_env(environ: Mapping[str, str] | None = None) -> DecisionKeys | None:
    """None when the variable is unset or empty; SigningError when it is malformed."""
    text = (os.environ if environ is None else environ).get(KEYS_ENV, "").strip()
    return parse_keys(text) if text else None


def signing_keys(environ: Mapping[str, str] | None = None) -> DecisionKeys:
    """The keys of a writer (console, CLIs): SigningError when the variable is unset too."""
    keys = keys_from_env(environ)
    if keys is None:
        raise SigningError(f"set {KEYS_ENV} (<key id>=<secret>, the job's decision keys): the job rejects "
                           "unsigned decisions")
    return keys


def _mac(secret: bytes, doc: Mapping) -> str:
    body = orjson.dumps({k: v for k, v in doc.items() if k != "signature"}, option=orjson.OPT_SORT_KEYS)
    return hmac.new(secret, PURPOSE + body, hashlib.sha256).hexdigest()


def sign(record: Mapping, keys: DecisionKeys) -> dict:
    """The record with `key_id` (the current key) and `signature` set."""
    signed = {k: v for k, v in record.items() if k not in ("key_id", "signature")}
    signed["key_id"] = keys.current_id
    signed["signature"] = _mac(keys.secrets[keys.current_id], signed)
    return signed


def verify(doc: Mapping, keys: DecisionKeys | None) -> str | None:
    """None when `doc` is signed by an accepted key, else why not (never the secret or the MAC)."""
    if keys is None:
        return f"no decision keys are configured where this record was read: set {KEYS_ENV}"
    key_id, signature = doc.get("key_id"), doc.get("signature")
    if key_id is None or signature is None:
        return "unsigned: the record has no key_id and signature"
    if not isinstance(key_id, str) or not isinstance(signature, str):
        return "key_id and signature must be strings"
    secret = keys.secrets.get(key_id)
    if secret is None:
        return f"key id {key_id[:64]!r} is not accepted here (accepted: {keys.describe()}): retired or unknown"
    try:
        expected = _mac(secret, doc)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return f"the record cannot be put in canonical form: {str(exc)[:120]}"
    if not hmac.compare_digest(expected, signature):
        return f"the signature does not match the record's fields (key id {key_id!r})"
    return None
