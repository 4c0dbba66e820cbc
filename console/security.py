"""CSRF tokens for every form and the login rate limit.

Sessions themselves are Starlette's signed cookies (itsdangerous, key PENALTY_CONSOLE_SESSION_KEY):
the browser holds them, nobody can alter them. Each session gets one random CSRF token, put in a
hidden field of every POST form and compared (constant time) before the handler runs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import redis

CSRF_FIELD = "csrf_token"
LOGIN_FAILURES_KEY = "penalty:console:login-failures:{}"


def csrf_token(session: dict) -> str:
    """The session's token, made on first use."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok(session: dict, submitted: str | None) -> bool:
    expected = session.get("csrf")
    return bool(expected and submitted) and hmac.compare_digest(str(expected), str(submitted))


class LoginLimiter:
    """At most `max_failures` failed logins per account and client address in `window_ms`.

    Counted in Redis so that every console replica sees the same count; the window starts at the
    first failure and a successful login clears it. Keyed by the pair, so a guesser from one
    address cannot lock a moderator out everywhere."""

    def __init__(self, client: redis.Redis, max_failures: int = 5, window_ms: int = 15 * 60_000):
        self.client = client
        self.max_failures = max_failures
        self.window_ms = window_ms

    def _key(self, account: str, address: str) -> str:
        pair = hashlib.sha256(f"{account}\x1f{address}".encode()).hexdigest()[:32]
        return LOGIN_FAILURES_KEY.format(pair)

    def blocked(self, account: str, address: str) -> bool:
        return int(self.client.get(self._key(account, address)) or 0) >= self.max_failures

    def failed(self, account: str, address: str) -> int:
        key = self._key(account, address)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.pexpire(key, self.window_ms, nx=True)
            count, _ = pipe.execute()
        return int(count)

    def succeeded(self, account: str, address: str) -> None:
        self.client.delete(self._key(account, address))
