"""Crypto-shredding for the audit archive: per-user data keys, wrapped by a master key.

Every archived audit record that names a user is stored sealed: the fields anyone may read
(VISIBLE: kind, outcome, rule, rule set, event time) stay plain, everything else (user id,
incident and alert ids, ledgers, detail) is encrypted with AES-256-GCM under that user's data
key. The hash chain is over what is stored, so destroying a data key makes the user's entries
unreadable without changing a byte of the archive: `verify` passes before and after.

Key store entries (one per user, named by a keyed hash of the user id, never the id itself):
    {"key_id": "dk_<16 hex>", "wrapped": b64(nonce + AES-GCM(master, data key)), "created_ms": N}
after an erasure the entry becomes a tombstone {"erased_ms": N, "erasure_id": "ers_..."}; a key
made later for new records of the same user keeps those two fields. Records whose event time is
not after the erasure (in flight when it ran, or the job's own record of it) are sealed under a
key that is never stored.

The master key (32 bytes, base64) comes from PENALTY_AUDIT_MASTER_KEY only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASTER_KEY_ENV = "PENALTY_AUDIT_MASTER_KEY"
VISIBLE = ("schema_version", "kind", "outcome", "rule_id", "rule_set", "rule_set_version", "event_time_ms")
REDIS_KEY = "penalty:audit:dek:{}"
ALG = "A256GCM"
_WRAP_AAD = b"penalty-audit-dek\x1f"

# KEYS[1] the entry; ARGV[1] the entry expected now ('' when absent), ARGV[2] the new one.
# Returns the entry stored after the call (the new one when the expectation held).
_CAS_LUA = """
local current = redis.call('GET', KEYS[1]) or ''
if current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return current
"""


class PrivacyError(Exception):
    """A missing or wrong secret, or a key store that cannot be used; the message says what to do."""


def canonical(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def master_key_from_env(environ: dict | None = None) -> bytes:
    """The 32-byte master key from PENALTY_AUDIT_MASTER_KEY (base64 or 64 hex digits)."""
    raw = (os.environ if environ is None else environ).get(MASTER_KEY_ENV, "").strip()
    hint = (f"set {MASTER_KEY_ENV} to 32 random bytes in base64 (it wraps the audit archive's per-user "
            "data keys; keep it in the secret store, not in the archive): python -c 'import base64, os; "
            "print(base64.urlsafe_b64encode(os.urandom(32)).decode())'")
    if not raw:
        raise PrivacyError(hint)
    try:
        key = bytes.fromhex(raw) if len(raw) == 64 else _unb64(raw)
    except (ValueError, binascii.Error) as exc:
        raise PrivacyError(f"{MASTER_KEY_ENV} is not base64: {hint}") from exc
    if len(key) != 32:
        raise PrivacyError(f"{MASTER_KEY_ENV} holds {len(key)} bytes, not 32: {hint}")
    return key


def secret_from_env(name: str, purpose: str, environ: dict | None = None, min_chars: int = 32) -> bytes:
    """An HMAC key from the environment; PrivacyError names the variable when missing or short."""
    value = (os.environ if environ is None else environ).get(name, "")
    if len(value) < min_chars:
        raise PrivacyError(f"set {name} to a random string of at least {min_chars} characters ({purpose}), "
                           "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
    return value.encode()


class KeyStore(Protocol):
    """Where the wrapped data keys live: Redis in production, a file in tests."""

    def get_many(self, names: list[str]) -> list[dict | None]: ...

    def swap(self, name: str, expected: dict | None, new: dict) -> dict:
        """Store `new` if the entry is still `expected`; the entry stored after the call."""
        ...


class RedisKeyStore:
    def __init__(self, client):
        self.client = client
        self._cas = client.register_script(_CAS_LUA)

    def get_many(self, names: list[str]) -> list[dict | None]:
        if not names:
            return []
        return [json.loads(v) if v else None for v in self.client.mget([REDIS_KEY.format(n) for n in names])]

    def swap(self, name: str, expected: dict | None, new: dict) -> dict:
        stored = self._cas(keys=[REDIS_KEY.format(name)],
                           args=["" if expected is None else canonical(expected), canonical(new)])
        return json.loads(stored)


class FileKeyStore:
    """A JSON file of entries (tests, single-host trials). Rewritten whole on every change: a
    destroyed key may linger in freed disk blocks, so production uses Redis."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _load(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def get_many(self, names: list[str]) -> list[dict | None]:
        entries = self._load()
        return [entries.get(n) for n in names]

    def swap(self, name: str, expected: dict | None, new: dict) -> dict:
        entries = self._load()
        if entries.get(name) != expected:
            return entries[name]
        entries[name] = new
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(canonical(entries))
        os.replace(tmp, self.path)
        return new


def is_sealed(stored: dict) -> bool:
    return isinstance(stored.get("sealed"), dict)


def seal_record(record: dict, key_id: str, data_key: bytes) -> dict:
    visible = {k: record[k] for k in VISIBLE if k in record}
    personal = {k: v for k, v in record.items() if k not in VISIBLE}
    nonce = os.urandom(12)
    aad = canonical({"key_id": key_id, "visible": visible}).encode()
    ct = AESGCM(data_key).encrypt(nonce, canonical(personal).encode(), aad)
    return {**visible, "sealed": {"alg": ALG, "key_id": key_id, "nonce": _b64(nonce), "ct": _b64(ct)}}


def open_record(stored: dict, data_key: bytes) -> dict:
    """The record as the job wrote it; PrivacyError when the key does not open it."""
    sealed = stored["sealed"]
    visible = {k: v for k, v in stored.items() if k != "sealed"}
    aad = canonical({"key_id": sealed["key_id"], "visible": visible}).encode()
    try:
        personal = AESGCM(data_key).decrypt(_unb64(sealed["nonce"]), _unb64(sealed["ct"]), aad)
    except InvalidTag as exc:
        raise PrivacyError(f"data key {sealed['key_id']} does not open this entry") from exc
    return {**visible, **json.loads(personal)}


class KeyRing:
    """The users' data keys: made on first use, unwrapped with the master key, destroyed on erasure."""

    def __init__(self, store: KeyStore, master_key: bytes,
                 clock: Callable[[], int] = lambda: int(time.time() * 1000)):
        self.store = store
        self._wrap = AESGCM(master_key)
        self._index_key = hmac.new(master_key, b"penalty-audit key-store index", hashlib.sha256).digest()
        self.clock = clock

    def name(self, user_id: str) -> str:
        """The key store's name for a user: a keyed hash, so the store lists no user ids."""
        return hmac.new(self._index_key, user_id.encode(), hashlib.sha256).hexdigest()[:40]

    def entry(self, user_id: str) -> dict | None:
        return self.store.get_many([self.name(user_id)])[0]

    def unwrap(self, entry: dict) -> bytes:
        blob = _unb64(entry["wrapped"])
        try:
            return self._wrap.decrypt(blob[:12], blob[12:], _WRAP_AAD + entry["key_id"].encode())
        except InvalidTag as exc:
            raise PrivacyError(f"data key {entry['key_id']} was not wrapped by this {MASTER_KEY_ENV}") from exc

    def key_of(self, user_id: str) -> tuple[str, bytes] | None:
        """(key id, data key) of the user's current key; None when there is none (never made, or erased)."""
        entry = self.entry(user_id)
        if not entry or "wrapped" not in entry:
            return None
        return entry["key_id"], self.unwrap(entry)

    def _new_entry(self, keep: dict | None) -> dict:
        key_id, data_key, nonce = "dk_" + secrets.token_hex(8), AESGCM.generate_key(256), os.urandom(12)
        wrapped = nonce + self._wrap.encrypt(nonce, data_key, _WRAP_AAD + key_id.encode())
        entry = {"key_id": key_id, "wrapped": _b64(wrapped), "created_ms": self.clock()}
        if keep and "erased_ms" in keep:
            entry.update(erased_ms=keep["erased_ms"], erasure_id=keep["erasure_id"])
        return entry

    def seal_all(self, records: list[dict]) -> list[dict]:
        """The records as the archive stores them; one key store read for the batch's users."""
        users = sorted({r["user_id"] for r in records if isinstance(r.get("user_id"), str)})
        entries = dict(zip(users, self.store.get_many([self.name(u) for u in users]), strict=True))
        keys: dict[str, tuple[str, bytes]] = {}
        out = []
        for record in records:
            user_id = record.get("user_id")
            if not isinstance(user_id, str):
                out.append(record)  # names nobody (the erasure log's own entries): nothing to seal
                continue
            entry = entries[user_id]
            if entry and record.get("event_time_ms", 0) <= entry.get("erased_ms", -1):
                # From before the user's erasure: sealed under a key nobody keeps.
                out.append(seal_record(record, "dk_" + secrets.token_hex(8), AESGCM.generate_key(256)))
                continue
            if user_id not in keys:
                if not entry or "wrapped" not in entry:
                    entry = entries[user_id] = self.store.swap(self.name(user_id), entry, self._new_entry(entry))
                keys[user_id] = (entry["key_id"], self.unwrap(entry))
            out.append(seal_record(record, *keys[user_id]))
        return out

    def destroy(self, user_id: str, erasure_id: str, now_ms: int) -> dict | None:
        """Replace the user's entry by a tombstone; returns the entry it replaced."""
        name = self.name(user_id)
        while True:
            entry = self.store.get_many([name])[0]
            tombstone = {"erased_ms": now_ms, "erasure_id": erasure_id}
            if self.store.swap(name, entry, tombstone) == tombstone:
                return entry
