"""Appeal intake: a moderator's verdict on an appeal, accepted only with a valid appeal link.

    PENALTY_APPEAL_SECRET=... PENALTY_DECISION_KEYS=... python -m sinks.appeals decide --link URL \
        --verdict granted|denied --moderator ID [--bootstrap-servers ...] [--topic decisions]

The link (from the streamer's notification) is verified (HMAC signature, expiry) before a
decision v1 record, signed with the current decision key (connectors/signing.py), goes to the
`decisions` topic, keyed by user id; the job then voids the strike and lifts what the incident
caused, or records the denial.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

from connectors import signing
from sinks.notifier import AppealTokenError, verify_appeal_link

VERDICTS = {"appeal": ("granted", "denied"), "review": ("confirmed", "rejected"), "erasure": ("erased",)}


def make_decision(kind: str, verdict: str, user_id: str, incident_id: str, moderator_id: str, now_ms: int,
                  note: str | None = None, keep_ban: bool | None = None) -> dict:
    """A decision v1 record; its id is the same for every submit of one incident and verdict (an
    erasure's: of one user and time). `keep_ban`: erasures only (rules/erasure.py)."""
    if verdict not in VERDICTS.get(kind, ()):
        raise ValueError(f"a decision of kind {kind!r} has the verdict {' or '.join(VERDICTS.get(kind, ()))}, not {verdict!r}")
    # One decision per incident and verdict: a double submit is the same decision (deduped by the job).
    subject = f"{user_id}\x1f{now_ms}" if kind == "erasure" else f"{incident_id}\x1f{verdict}"
    decision_id = f"{kind}-" + hashlib.sha256(subject.encode()).hexdigest()[:24]
    record = {"schema_version": 1, "decision_id": decision_id, "kind": kind, "verdict": verdict,
              "user_id": user_id, "incident_id": incident_id, "moderator_id": moderator_id, "event_time_ms": now_ms}
    if note:
        record["note"] = note
    if keep_ban is not None:
        record["keep_ban"] = keep_ban
    return record


def decision_record(link: str, secret: bytes, verdict: str, moderator_id: str, now_ms: int) -> dict:
    incident_id, user_id = verify_appeal_link(link, secret, now_ms)
    return make_decision("appeal", verdict, user_id, incident_id, moderator_id, now_ms)


def signed_value(record: dict, keys: signing.DecisionKeys | None = None) -> bytes:
    """The record as the job accepts it: signed with the current key (from the environment unless
    given); SigningError names what to set when there is none."""
    return json.dumps(signing.sign(record, keys or signing.signing_keys())).encode()


def submit(bootstrap: str, topic: str, record: dict, keys: signing.DecisionKeys | None = None) -> dict:
    """Sign and deliver one decision; returns the record as written."""
    from confluent_kafka import Producer

    value = signed_value(record, keys)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(topic, key=record["user_id"].encode(), value=value)
    if producer.flush(30):
        raise RuntimeError(f"the decision was not delivered to {bootstrap}")
    return json.loads(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinks.appeals", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("decide")
    p.add_argument("--link", required=True)
    p.add_argument("--verdict", required=True, choices=("granted", "denied"))
    p.add_argument("--moderator", required=True)
    p.add_argument("--bootstrap-servers", default="127.0.0.1:19092")
    p.add_argument("--topic", default="decisions")
    args = parser.parse_args(argv)
    secret = os.environ.get("PENALTY_APPEAL_SECRET")
    if not secret:
        print("appeals: set PENALTY_APPEAL_SECRET (the key that signs appeal links)", file=sys.stderr)
        return 2
    try:
        keys = signing.signing_keys()
    except signing.SigningError as exc:
        print(f"appeals: {exc}", file=sys.stderr)
        return 2
    try:
        record = decision_record(args.link, secret.encode(), args.verdict, args.moderator, int(time.time() * 1000))
    except AppealTokenError as exc:
        print(f"appeals: rejected: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(submit(args.bootstrap_servers, args.topic, record, keys)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
