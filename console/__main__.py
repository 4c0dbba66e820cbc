"""The review and appeal console.

    PENALTY_CONSOLE_SESSION_KEY=... PENALTY_APPEAL_SECRET=... python -m console [flags]   serve
    python -m console add-moderator --accounts FILE --id m-1 [--name NAME]   (password asked)
    python -m console index-reviews [--bootstrap-servers ...] [--redis-url ...]   review -> Redis
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys

EPILOG = """other commands:
  add-moderator   append a moderator (scrypt password hash) to the accounts file
  index-reviews   keep the review topic's records in Redis for the incident pages
secrets (environment only): PENALTY_CONSOLE_SESSION_KEY signs session cookies,
PENALTY_APPEAL_SECRET verifies appeal links (the notifier's key)."""


def serve(argv: list[str]) -> int:
    from console.config import ConfigError, add_arguments, from_args

    parser = argparse.ArgumentParser(prog="python -m console", description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = from_args(args)
    except ConfigError as exc:
        print(f"console: {exc}", file=sys.stderr)
        return 2
    import redis
    import uvicorn

    from console.accounts import Accounts, AccountsError
    from console.app import KafkaDecisions, create_app

    try:
        accounts = Accounts.load(config.accounts_file)
    except AccountsError as exc:
        print(f"console: {exc}", file=sys.stderr)
        return 2
    client = redis.Redis.from_url(config.redis_url, socket_timeout=5, socket_connect_timeout=5)
    app = create_app(config, client, KafkaDecisions(config.bootstrap_servers, config.decisions_topic, config.decision_keys), accounts)
    print(f"console: {len(accounts.moderators)} moderators, http://{config.host}:{config.port}/", file=sys.stderr)
    from console.logs import log_config

    uvicorn.run(app, host=config.host, port=config.port, log_level="info", log_config=log_config())
    return 0


def add_moderator(argv: list[str]) -> int:
    from console.accounts import AccountsError
    from console.accounts import add_moderator as add

    parser = argparse.ArgumentParser(prog="python -m console add-moderator",
                                     description="Append a moderator with a scrypt password hash.")
    parser.add_argument("--accounts", required=True, help="the TOML accounts file (created if missing)")
    parser.add_argument("--id", required=True, dest="moderator_id")
    parser.add_argument("--name")
    parser.add_argument("--password-env", metavar="VAR", help="read the password from this variable, not a prompt")
    args = parser.parse_args(argv)
    if args.password_env:
        password = os.environ.get(args.password_env, "")
    else:
        password = getpass.getpass(f"password for {args.moderator_id}: ")
        if password != getpass.getpass("again: "):
            print("console: the passwords differ", file=sys.stderr)
            return 2
    if len(password) < 12:
        print("console: use a password of at least 12 characters", file=sys.stderr)
        return 2
    try:
        add(args.accounts, args.moderator_id, password, args.name)
    except AccountsError as exc:
        print(f"console: {exc}", file=sys.stderr)
        return 2
    print(f"added {args.moderator_id} to {args.accounts}")
    return 0


def index_reviews(argv: list[str]) -> int:
    import redis

    from console.desk import index_reviews as run
    from jobs.config import Topics
    from sinks.tokens import token_key_or_none

    parser = argparse.ArgumentParser(prog="python -m console index-reviews",
                                     description="Keep the review topic's records in Redis (penalty:review:<incident>).")
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:19092")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:16379/0")
    parser.add_argument("--topic-prefix", default="")
    parser.add_argument("--review-topic", default=None, help="default: <prefix>review")
    parser.add_argument("--idle-exit-s", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    client = redis.Redis.from_url(args.redis_url, socket_timeout=5, socket_connect_timeout=5)
    stored = run(args.bootstrap_servers, client, args.review_topic or Topics().prefixed(args.topic_prefix).review,
                 idle_exit_s=args.idle_exit_s, token_key=token_key_or_none())
    print(f"stored {stored} review records")
    return 0


COMMANDS = {"add-moderator": add_moderator, "index-reviews": index_reviews}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
