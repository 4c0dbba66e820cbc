"""Erasure and retention: remove one person's data, and keep nothing longer than the policy says.

    python -m sinks.privacy erase USER --reason TEXT --operator ID [--archive-dir DIR] [--policy FILE]
    python -m sinks.privacy retain [--archive-dir DIR] [--policy FILE] [--topics]
    python -m sinks.privacy lift-ban USER --operator ID

Secrets from the environment only: PENALTY_AUDIT_MASTER_KEY (the archive's key store),
PENALTY_PRIVACY_TOKEN_KEY (pseudonymous tokens, sinks/tokens.py), PENALTY_AUDIT_CHECKPOINT_KEY
(retention checkpoints), PENALTY_DECISION_KEYS (the erasure decision for the job). The policy
file is deploy/privacy/policy.toml; what is stored where: docs/privacy.md.

An erasure destroys the user's data key (their sealed audit entries become unreadable, the chain
unchanged), deletes every Redis key and stream entry the applier, notifier and console keep
about them, optionally keeps an active ban under a token, asks the job to forget the user's
keyed state (a decision of kind erasure on `decisions`) and records the erasure on `audit`
without naming the user. Nothing it prints or logs names the user either.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import secrets
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from sinks.applier import COMMANDS, STREAM_KEY, USER_KEY
from sinks.notifier import INBOX_KEY, MODERATION_KEY
from sinks.tokens import BAN_KEY, ERASED_KEY, TOKEN_KEY_ENV, user_token

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "deploy" / "privacy" / "policy.toml"
DAY_MS = 86_400_000
# The console's keys (console/queue.py, console/appeal.py, console/desk.py), named here so that
# sinks do not import the web application.
PRIORITIES = ("urgent", "high", "normal", "low")
ACTIONS_KEY = "penalty:console:actions"
CLAIM_KEY = "penalty:console:claim:{}:{}"
APPEALED_KEY = "penalty:console:appealed:{}"
REVIEW_KEY = "penalty:review:{}"
_USER_IN_BODY = re.compile(r"of user (\S+) needs human review")
RETENTION_KINDS = ("audit", "dlq", "notifications", "review", "console_actions", "stop_commands",
                   "erasure_markers")


@dataclass(frozen=True)
class Policy:
    """deploy/privacy/policy.toml: retention in days per record kind, topic retention, erasure choices."""

    days: dict[str, int]
    topics: dict[str, int]  # topic -> days (alerts.dlq, notifications, review from the kinds above)
    keep_active_bans: bool
    version: str  # sha256:<12 hex> of the file

    def cutoff_ms(self, kind: str, now_ms: int) -> int:
        return now_ms - self.days[kind] * DAY_MS


def load_policy(path: Path = DEFAULT_POLICY) -> Policy:
    raw = Path(path).read_bytes()
    doc = tomllib.loads(raw.decode("utf-8"))
    retention, erasure = doc.get("retention", {}), doc.get("erasure", {})
    problems = [f"[retention] {k}_days is missing" for k in RETENTION_KINDS if f"{k}_days" not in retention]
    problems += [f"[retention] {k}: unknown (known: {', '.join(k + '_days' for k in RETENTION_KINDS)})"
                 for k in retention if k.removesuffix("_days") not in RETENTION_KINDS]
    problems += [f"[retention] {k} = {v!r}: a whole number of days >= 1" for k, v in retention.items()
                 if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if not isinstance(erasure.get("keep_active_bans"), bool):
        problems.append("[erasure] keep_active_bans: true or false")
    if problems:
        raise SystemExit(f"{len(problems)} problems in {path}: " + "; ".join(problems))
    days = {k.removesuffix("_days"): v for k, v in retention.items()}
    topics = {name: int(d) for name, d in doc.get("topics", {}).items()}
    topics.update({"alerts.dlq": days["dlq"], "notifications": days["notifications"], "review": days["review"]})
    return Policy(days, topics, erasure["keep_active_bans"], "sha256:" + hashlib.sha256(raw).hexdigest()[:12])


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: dict) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _stream_entries_of(client, stream: str, user_id: str, incidents: set[str], chunk: int = 1000) -> list[str]:
    """Ids of a stream's entries about the user (field user_id, or the notifier's older review
    text); their incident ids are added to `incidents`."""
    found, start = [], "-"
    while True:
        entries = client.xrange(stream, min=start, count=chunk)
        for entry_id, raw in entries:
            fields = _fields(raw)
            named = fields.get("user_id")
            if named is None and (m := _USER_IN_BODY.search(fields.get("body", ""))):
                named = m.group(1)
            if named == user_id:
                found.append(_text(entry_id))
                if fields.get("incident_id"):
                    incidents.add(fields["incident_id"])
        if len(entries) < chunk:
            return found
        start = "(" + _text(entries[-1][0])


def _scan_matching(client, pattern: str, owned) -> list[str]:
    """Keys matching `pattern` for which owned(key) holds (values read in pipelined chunks)."""
    keys = [_text(k) for k in client.scan_iter(match=pattern, count=1000)]
    return [k for k in keys if owned(k)]


def erase_redis(client, user_id: str, extra_incidents: set[str] = frozenset()) -> dict[str, int]:
    """Delete what the applier, notifier and console keep about the user; counts per kind.

    Sent markers (penalty:sent:<notification id>) stay: they hold no personal data and keep a
    replay of the notifications topic from delivering the user's messages again."""
    incidents = set(extra_incidents)
    counts: dict[str, int] = {}
    with client.pipeline(transaction=False) as pipe:
        for _, fields in client.xrange(INBOX_KEY.format(user_id)):
            if incident := _fields(fields).get("incident_id"):
                incidents.add(incident)
        counts["user_status"] = client.delete(USER_KEY.format(user_id))
        counts["inbox"] = client.delete(INBOX_KEY.format(user_id))
        streams = _scan_matching(client, STREAM_KEY.format("*"),
                                 lambda k: _text(client.hget(k, "user_id") or b"") == user_id)
        counts["stopped_streams"] = client.delete(*streams) if streams else 0
        for stream, kind in [(COMMANDS, "stop_commands"), (ACTIONS_KEY, "console_actions")] + [
                (MODERATION_KEY.format(p), "moderation_entries") for p in PRIORITIES]:
            ids = _stream_entries_of(client, stream, user_id, incidents)
            counts[kind] = counts.get(kind, 0) + (client.xdel(stream, *ids) if ids else 0)
        reviews = _scan_matching(client, REVIEW_KEY.format("*"), lambda k: _review_user(client, k) == user_id)
        incidents.update(k.split(":", 2)[2] for k in reviews)
        counts["reviews"] = client.delete(*reviews) if reviews else 0
        per_incident = [key.format(i) for i in sorted(incidents) for key in (APPEALED_KEY, REVIEW_KEY)]
        per_incident += [CLAIM_KEY.format(kind, i) for i in sorted(incidents) for kind in ("review", "appeal")]
        for key in per_incident:
            pipe.delete(key)
        counts["incident_keys"] = sum(pipe.execute())
    return counts


def _review_user(client, key: str) -> str | None:
    raw = client.get(key)
    try:
        return json.loads(raw).get("user_id") if raw else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Erasure:
    erasure_id: str
    report: dict  # what was done, no personal data
    audit_record: dict  # the erasure's entry for the audit topic, no personal data


def erase(user_id: str, *, reason: str, operator_id: str, client, keyring, token_key: bytes, policy: Policy,
          now_ms: int, archive_dir: Path | None = None, send_decision=None) -> Erasure:
    """Erase one user (see the module's docstring). send_decision(record) asks the job to forget
    the user; its failure is reported, not raised, so everything else is done either way."""
    erasure_id = "ers_" + secrets.token_hex(12)
    token = user_token(token_key, user_id)
    incidents: set[str] = set()
    legacy_plaintext = 0
    if archive_dir is not None:
        from sinks.audit import user_entries

        found = user_entries(archive_dir, user_id, keyring)  # before the key goes: their incident ids
        incidents.update(r["incident_id"] for r in found.records if r.get("incident_id"))
        legacy_plaintext = found.plaintext
    status = _text(client.hget(USER_KEY.format(user_id), "status") or b"")
    ban_kept = policy.keep_active_bans and status == "banned"
    if ban_kept:
        client.hset(BAN_KEY.format(token), mapping={"status": "banned", "kept_ms": now_ms, "erasure_id": erasure_id,
                                                    "basis": "legitimate_interest"})
    # Before anything is deleted: from now on the services drop the user's older records in flight.
    client.set(ERASED_KEY.format(token), now_ms)
    old_key = keyring.destroy(user_id, erasure_id, now_ms)
    removed = erase_redis(client, user_id, incidents)
    job = "requested"
    if send_decision is not None:
        try:
            from sinks.appeals import make_decision

            send_decision(make_decision("erasure", "erased", user_id, "erasure", operator_id, now_ms, note=reason,
                                        keep_ban=policy.keep_active_bans))
        except Exception as exc:  # noqa: BLE001 - reported: the rest of the erasure stands
            job = f"not requested: {type(exc).__name__}: {exc}".replace(user_id, "<user>")
    else:
        job = "not requested (no decisions topic given)"
    detail = {"erasure_id": erasure_id, "operator_id": operator_id, "data_key_destroyed": bool(old_key and "wrapped" in old_key),
              "redis_removed": removed, "ban_kept": ban_kept, "job_state": job,
              "legacy_plaintext_entries": legacy_plaintext}
    record = {"schema_version": 1, "audit_id": "aud_" + hashlib.sha256(erasure_id.encode()).hexdigest()[:24],
              "kind": "erasure", "user_id": None, "incident_id": None, "alert_ids": [], "outcome": "erased",
              "rule_id": None, "rule_set": "privacy", "rule_set_version": policy.version, "ledger_before": None,
              "ledger_after": None, "detail": detail, "event_time_ms": now_ms}
    return Erasure(erasure_id, detail, record)


def lift_ban(client, token_key: bytes, user_id: str) -> bool:
    """Remove a ban kept by token (a moderator's decision to lift it after the erasure)."""
    return bool(client.delete(BAN_KEY.format(user_token(token_key, user_id))))


def retain(policy: Policy, *, client, now_ms: int, archive_dir: Path | None = None,
           checkpoint_key: bytes | None = None) -> dict:
    """One retention run over what the project stores; returns what it removed per kind."""
    report: dict = {}
    if archive_dir is not None:
        from sinks.audit import cut

        if checkpoint_key is None:
            raise SystemExit("privacy: set PENALTY_AUDIT_CHECKPOINT_KEY (it signs the checkpoint that "
                             "verification starts from once old segments are gone)")
        checkpoint = cut(archive_dir, policy.cutoff_ms("audit", now_ms), checkpoint_key, now_ms)
        report["audit_segments_removed"] = checkpoint["removed"] if checkpoint else []
    minid = {kind: policy.cutoff_ms(kind, now_ms) for kind in policy.days}
    inboxes = [_text(k) for k in client.scan_iter(match=INBOX_KEY.format("*"), count=1000)]
    report["inbox_entries"] = sum(client.xtrim(k, minid=minid["notifications"]) for k in inboxes)
    report["moderation_entries"] = sum(client.xtrim(MODERATION_KEY.format(p), minid=minid["review"])
                                       for p in PRIORITIES)
    old_reviews = _scan_matching(client, REVIEW_KEY.format("*"), lambda k: _review_time(client, k) < minid["review"])
    report["reviews"] = client.delete(*old_reviews) if old_reviews else 0
    report["console_actions"] = client.xtrim(ACTIONS_KEY, minid=minid["console_actions"])
    stopped = []
    for _, raw in client.xrange(COMMANDS, max=f"{minid['stop_commands'] - 1}"):
        fields = _fields(raw)
        key = STREAM_KEY.format(fields.get("stream_id", ""))
        if _text(client.hget(key, "penalty_id") or b"") == fields.get("penalty_id"):
            stopped.append(key)  # the stream's flag from this (old) command, not a newer one
    report["stopped_streams"] = client.delete(*stopped) if stopped else 0
    report["stop_commands"] = client.xtrim(COMMANDS, minid=minid["stop_commands"])
    markers = _scan_matching(client, ERASED_KEY.format("*"),
                             lambda k: int(client.get(k) or 0) < minid["erasure_markers"])
    report["erasure_markers"] = client.delete(*markers) if markers else 0
    return report


def _review_time(client, key: str) -> int:
    raw = client.get(key)
    try:
        return int(json.loads(raw).get("event_time_ms", 0)) if raw else 0
    except (ValueError, TypeError):
        return 0


def topic_retention(bootstrap: str, policy: Policy, prefix: str = "", apply: bool = False) -> dict[str, str]:
    """Each policed topic's retention.ms against the policy; with apply, set the longer ones."""
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap})
    out = {}
    for topic, days in sorted(policy.topics.items()):
        name, want = prefix + topic, days * DAY_MS
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        try:
            configs = admin.describe_configs([resource])[resource].result(timeout=10)
            have = int(configs["retention.ms"].value) if "retention.ms" in configs else -1
        except Exception as exc:  # noqa: BLE001 - reported per topic
            out[name] = f"unknown ({type(exc).__name__})"
            continue
        if 0 <= have <= want:
            out[name] = f"ok ({have} ms)"
        elif not apply:
            out[name] = f"TOO LONG: retention.ms {have}, policy {want}"
        else:
            entry = ConfigEntry("retention.ms", str(want), incremental_operation=AlterConfigOpType.SET)
            try:
                admin.incremental_alter_configs([ConfigResource(ConfigResource.Type.TOPIC, name,
                                                                incremental_configs=[entry])])[
                    ConfigResource(ConfigResource.Type.TOPIC, name)].result(timeout=10)
                out[name] = f"set to {want} ms (was {have})"
            except Exception as exc:  # noqa: BLE001 - reported per topic
                out[name] = f"TOO LONG ({have} ms), could not set: {type(exc).__name__}"
    return out


def _common(parser: argparse.ArgumentParser) -> None:
    from sinks.audit import add_key_store_arguments

    parser.add_argument("--policy", default=str(DEFAULT_POLICY))
    parser.add_argument("--archive-dir", help="the audit archive (sinks.audit)")
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:19092")
    parser.add_argument("--topic-prefix", default="")
    add_key_store_arguments(parser)


def main(argv=None) -> int:
    import redis

    from sinks.audit import checkpoint_key_from_env, keyring_from_args
    from sinks.sealing import PrivacyError, secret_from_env

    parser = argparse.ArgumentParser(prog="python -m sinks.privacy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("erase", help="erase one user's data")
    p.add_argument("user")
    p.add_argument("--reason", required=True, help="why (goes to the job's decision note, not to the audit entry)")
    p.add_argument("--operator", required=True, help="who asked for it (recorded in the audit entry)")
    _common(p)
    p = sub.add_parser("retain", help="delete what is past the policy's retention")
    p.add_argument("--topics", action="store_true", help="also set the topics' retention.ms to the policy")
    p.add_argument("--now-ms", type=int, default=None)
    _common(p)
    p = sub.add_parser("lift-ban", help="remove a ban kept by token after an erasure")
    p.add_argument("user")
    p.add_argument("--operator", required=True)
    _common(p)
    args = parser.parse_args(argv)
    policy = load_policy(Path(args.policy))
    client = redis.Redis.from_url(args.redis_url, socket_timeout=10, socket_connect_timeout=5)
    now_ms = int(time.time() * 1000)
    try:
        if args.cmd == "retain":
            report = retain(policy, client=client, now_ms=args.now_ms or now_ms,
                            archive_dir=Path(args.archive_dir) if args.archive_dir else None,
                            checkpoint_key=checkpoint_key_from_env())
            report["topics"] = topic_retention(args.bootstrap_servers, policy, args.topic_prefix, apply=args.topics)
            print(json.dumps(report, sort_keys=True))
            return 0
        token_key = secret_from_env(TOKEN_KEY_ENV, "it keys the pseudonymous tokens of erased users")
        if args.cmd == "lift-ban":
            print(json.dumps({"ban_lifted": lift_ban(client, token_key, args.user), "operator_id": args.operator}))
            return 0
        keyring = keyring_from_args(args)
    except PrivacyError as exc:
        print(f"privacy: {exc}", file=sys.stderr)
        return 2

    def send_decision(record: dict) -> None:
        from sinks.appeals import submit

        submit(args.bootstrap_servers, args.topic_prefix + "decisions", record)

    done = erase(args.user, reason=args.reason, operator_id=args.operator, client=client, keyring=keyring,
                 token_key=token_key, policy=policy, now_ms=now_ms,
                 archive_dir=Path(args.archive_dir) if args.archive_dir else None, send_decision=send_decision)
    _produce_audit(args.bootstrap_servers, args.topic_prefix + "audit", done.audit_record)
    print(json.dumps(done.report, sort_keys=True))
    if done.report["job_state"] != "requested":
        print("privacy: the job was not asked to forget the user's state (see job_state); everything else is done",
              file=sys.stderr)
        return 3
    return 0


def _produce_audit(bootstrap: str, topic: str, record: dict) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    producer.produce(topic, key=record["detail"]["erasure_id"].encode(), value=json.dumps(record).encode())
    if producer.flush(30):
        raise SystemExit(f"privacy: the erasure's audit record was not delivered to {topic}")


if __name__ == "__main__":
    sys.exit(main())
