"""Moderator accounts: a TOML file of password hashes made with scrypt (stdlib).

    [moderators.m-1]
    password_hash = "scrypt$n=16384,r=8,p=1$<salt b64>$<hash b64>"
    name = "Ada"                       # optional, shown in the page header

The hash string carries its salt and parameters, so stronger parameters later still verify old
entries. `python -m console add-moderator --accounts FILE --id m-1` appends an entry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_HASH = re.compile(r"^scrypt\$n=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")
MODERATOR_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a bare TOML key


class AccountsError(Exception):
    """The accounts file is missing, unreadable or has a bad entry."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str, salt: bytes | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R,
                  p: int = SCRYPT_P) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * 1024 * 1024)
    return f"scrypt$n={n},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """True when `password` matches; False for a wrong password or a malformed hash string."""
    match = _HASH.match(encoded or "")
    if not match:
        return False
    n, r, p = (int(x) for x in match.group(1, 2, 3))
    salt, want = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
    try:
        got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(want),
                             maxmem=256 * 1024 * 1024)
    except ValueError:  # parameters scrypt refuses
        return False
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class Moderator:
    moderator_id: str
    password_hash: str
    name: str


# Verifying an unknown account costs as much as a known one: no timing tells which ids exist.
_DUMMY_HASH = hash_password("not a password", salt=b"\0" * 16)


class Accounts:
    def __init__(self, moderators: dict[str, Moderator]):
        self.moderators = moderators

    @classmethod
    def load(cls, path: Path) -> Accounts:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AccountsError(f"cannot read the accounts file {path}: {exc}") from exc
        problems, moderators = [], {}
        for moderator_id, entry in (doc.get("moderators") or {}).items():
            if not MODERATOR_ID.match(moderator_id):
                problems.append(f"{moderator_id!r}: ids are 1-64 of A-Z a-z 0-9 _ -")
            elif not isinstance(entry, dict) or not _HASH.match(str(entry.get("password_hash", ""))):
                problems.append(f"{moderator_id}: password_hash is not a scrypt hash string "
                                "(make one with `python -m console add-moderator`)")
            else:
                moderators[moderator_id] = Moderator(moderator_id, entry["password_hash"],
                                                     str(entry.get("name") or moderator_id))
        if problems:
            raise AccountsError(f"{len(problems)} problem(s) in {path}: " + "; ".join(problems))
        return cls(moderators)

    def authenticate(self, moderator_id: str, password: str) -> Moderator | None:
        moderator = self.moderators.get(moderator_id)
        ok = verify_password(password, moderator.password_hash if moderator else _DUMMY_HASH)
        return moderator if ok and moderator else None


def add_moderator(path: Path, moderator_id: str, password: str, name: str | None = None) -> None:
    """Append one entry (the file is created if missing); an existing id is refused."""
    if not MODERATOR_ID.match(moderator_id):
        raise AccountsError(f"{moderator_id!r}: ids are 1-64 of A-Z a-z 0-9 _ -")
    path = Path(path)
    if path.exists() and moderator_id in Accounts.load(path).moderators:
        raise AccountsError(f"{moderator_id} is already in {path}")
    entry = f'\n[moderators.{moderator_id}]\npassword_hash = "{hash_password(password)}"\n'
    if name:
        entry += f"name = {_toml_string(name)}\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(entry)
    Accounts.load(path)  # what was written reads back


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'
