"""The console's one config object, built at the edge from flags and the environment.

Secrets come from the environment only: PENALTY_CONSOLE_SESSION_KEY signs the session cookies,
PENALTY_APPEAL_SECRET verifies the streamers' appeal links (the notifier's key),
PENALTY_DECISION_KEYS signs the decisions the job accepts (connectors/signing.py).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from connectors import signing
from jobs.config import Topics
from sinks.sealing import MASTER_KEY_ENV, PrivacyError, master_key_from_env

SESSION_KEY_ENV = "PENALTY_CONSOLE_SESSION_KEY"
APPEAL_SECRET_ENV = "PENALTY_APPEAL_SECRET"
MIN_SESSION_KEY_CHARS = 32


class ConfigError(Exception):
    """A missing secret or setting; the message says what to set."""


@dataclass(frozen=True)
class ConsoleConfig:
    redis_url: str = "redis://127.0.0.1:16379/0"
    bootstrap_servers: str = "127.0.0.1:19092"
    decisions_topic: str = "decisions"
    accounts_file: Path = Path("moderators.toml")
    archive_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8090
    secure_cookies: bool = False  # behind TLS: the session cookie is sent over https only
    session_key: str = ""
    appeal_secret: bytes = b""
    session_max_age_s: int = 8 * 3600
    decision_keys: signing.DecisionKeys | None = None
    audit_master_key: bytes | None = None  # PENALTY_AUDIT_MASTER_KEY: opens sealed archive entries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default=ConsoleConfig.redis_url)
    parser.add_argument("--bootstrap-servers", default=ConsoleConfig.bootstrap_servers)
    parser.add_argument("--topic-prefix", default="", help="prefix of every topic name (as the job's)")
    parser.add_argument("--decisions-topic", default=None, help="default: <prefix>decisions")
    parser.add_argument("--accounts", default=str(ConsoleConfig.accounts_file), help="moderator accounts (TOML)")
    parser.add_argument("--archive-dir", default=None, help="audit archive (sinks.audit) for user histories")
    parser.add_argument("--host", default=ConsoleConfig.host, help="bind address (default loopback only)")
    parser.add_argument("--port", type=int, default=ConsoleConfig.port)
    parser.add_argument("--secure-cookies", action="store_true", help="session cookie over https only")


def from_args(args: argparse.Namespace, environ: dict | None = None) -> ConsoleConfig:
    """ConfigError names the environment variable that is missing or too weak."""
    env = os.environ if environ is None else environ
    session_key = env.get(SESSION_KEY_ENV, "")
    if len(session_key) < MIN_SESSION_KEY_CHARS:
        raise ConfigError(f"set {SESSION_KEY_ENV} to a random string of at least {MIN_SESSION_KEY_CHARS} "
                          f"characters (it signs the session cookies), e.g. `python -c 'import secrets; "
                          f"print(secrets.token_urlsafe(48))'`")
    appeal_secret = env.get(APPEAL_SECRET_ENV, "")
    if not appeal_secret:
        raise ConfigError(f"set {APPEAL_SECRET_ENV} (the key the notifier signs appeal links with)")
    try:
        decision_keys = signing.signing_keys(env)
    except signing.SigningError as exc:
        raise ConfigError(str(exc)) from exc
    audit_master_key = None
    if args.archive_dir and env.get(MASTER_KEY_ENV):
        try:
            audit_master_key = master_key_from_env(env)
        except PrivacyError as exc:
            raise ConfigError(str(exc)) from exc
    topics = Topics().prefixed(args.topic_prefix)
    return ConsoleConfig(
        redis_url=args.redis_url, bootstrap_servers=args.bootstrap_servers,
        decisions_topic=args.decisions_topic or topics.decisions,
        accounts_file=Path(args.accounts), archive_dir=Path(args.archive_dir) if args.archive_dir else None,
        host=args.host, port=args.port, secure_cookies=args.secure_cookies,
        session_key=session_key, appeal_secret=appeal_secret.encode(), decision_keys=decision_keys,
        audit_master_key=audit_master_key,
    )
