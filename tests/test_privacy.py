"""Privacy without a broker: the key store, sealing, the chain before and after an erasure,
retention checkpoints, what an erasure removes from Redis, and logs without user ids (fakeredis
with Lua stands in for Redis)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import smtplib
import subprocess
import sys
import time

import fakeredis
import pytest

from console.appeal import AppealDesk
from console.desk import store_review
from console.logs import RedactAccess, redact_path
from console.queue import ACTIONS_KEY, log_action
from sinks import audit, privacy
from sinks.applier import Applier
from sinks.audit import Archive, cut, user_entries, verify
from sinks.notifier import (
    INBOX_KEY,
    MODERATION_KEY,
    Notifier,
    SmtpConfig,
    appeal_link,
    failure,
)
from sinks.sealing import (
    MASTER_KEY_ENV,
    FileKeyStore,
    KeyRing,
    PrivacyError,
    RedisKeyStore,
    master_key_from_env,
    open_record,
)
from sinks.tokens import BAN_KEY, ERASED_KEY, standing, user_token

from .conftest import DAY_MS, REPO, T0_MS

MASTER = bytes(range(32))
MASTER_TEXT = base64.urlsafe_b64encode(MASTER).decode()
TOKEN_KEY = b"t" * 40
CHECKPOINT_KEY = b"c" * 40
SECRET = b"appeal-secret"
INC = "inc_" + "a" * 24


def audit_record(user_id: str | None, i: int, event_time_ms: int | None = None, **extra) -> dict:
    return {"schema_version": 1, "audit_id": f"aud_{i:024x}", "kind": "decision", "user_id": user_id,
            "incident_id": INC if user_id else None, "alert_ids": [f"alert-{i}"], "outcome": "enforced",
            "rule_id": "standard.1", "rule_set": "default", "rule_set_version": "sha256:000000000000",
            "ledger_before": {"strike_points": {"standard": i}}, "ledger_after": None,
            "detail": {"confidence": 0.97}, "event_time_ms": T0_MS + i if event_time_ms is None else event_time_ms,
            **extra}


@pytest.fixture
def client():
    return fakeredis.FakeRedis()


@pytest.fixture(params=["redis", "file"])
def keyring(request, client, tmp_path):
    store = RedisKeyStore(client) if request.param == "redis" else FileKeyStore(tmp_path / "keys.json")
    return KeyRing(store, MASTER, clock=lambda: T0_MS)


def fill(directory, keyring, users=("u-1", "u-2"), n=30, segment_entries=10, start=0):
    store = Archive(directory, segment_entries=segment_entries, keyring=keyring)
    store.append_all([(0, start + i, audit_record(users[i % len(users)], start + i)) for i in range(n)])
    store.close()


def lines(directory) -> str:
    return "".join(p.read_text() for p in sorted(directory.glob("segment-*.jsonl")))


# ---- keys and sealing ----------------------------------------------------------------------------

def test_master_key_comes_from_the_environment_with_a_clear_error():
    assert master_key_from_env({MASTER_KEY_ENV: MASTER_TEXT}) == MASTER
    assert master_key_from_env({MASTER_KEY_ENV: MASTER.hex()}) == MASTER
    with pytest.raises(PrivacyError, match=f"set {MASTER_KEY_ENV} to 32 random bytes"):
        master_key_from_env({})
    with pytest.raises(PrivacyError, match="holds 16 bytes, not 32"):
        master_key_from_env({MASTER_KEY_ENV: base64.b64encode(b"x" * 16).decode()})


def test_cli_without_the_master_key_exits_2_and_names_it(tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "sinks.audit", "show", "u-1", "--dir", str(tmp_path),
                             "--key-file", str(tmp_path / "k.json")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 2 and MASTER_KEY_ENV in result.stderr


def test_each_user_gets_one_wrapped_key_named_by_a_keyed_hash(keyring, tmp_path):
    fill(tmp_path, keyring)
    stored = lines(tmp_path)
    # As JSON strings (quoted): the sealed blobs are base64url, which may spell "u-1" by chance.
    assert '"u-1"' not in stored and '"u-2"' not in stored and f'"{INC}"' not in stored and '"alert-' not in stored
    assert '"outcome":"enforced"' in stored and '"rule_id":"standard.1"' in stored  # what stays readable
    first, second = keyring.entry("u-1"), keyring.entry("u-2")
    assert first["key_id"] != second["key_id"] and keyring.name("u-1") != "u-1"
    assert len(keyring.name("u-1")) == 40 and set(first) == {"key_id", "wrapped", "created_ms"}
    assert stored.count(first["key_id"]) == 15
    other = KeyRing(keyring.store, bytes(32))
    with pytest.raises(PrivacyError, match="not wrapped by this"):
        other.unwrap(first)


def test_sealed_entries_open_to_the_records_the_job_wrote(keyring, tmp_path):
    fill(tmp_path, keyring, n=6)
    found = user_entries(tmp_path, "u-1", keyring)
    assert found.key_state == "key" and found.plaintext == 0
    assert found.records == [audit_record("u-1", i) for i in (0, 2, 4)]
    entry = json.loads((tmp_path / "segment-000001.jsonl").read_text().splitlines()[0])["record"]
    entry["outcome"] = "dismissed"  # the visible part is bound to the ciphertext
    with pytest.raises(PrivacyError, match="does not open"):
        open_record(entry, keyring.key_of("u-1")[1])


def test_records_naming_nobody_stay_plain(keyring, tmp_path):
    store = Archive(tmp_path, keyring=keyring)
    store.append(0, 0, audit_record(None, 1, kind="erasure"))
    store.close()
    assert json.loads(lines(tmp_path))["record"] == audit_record(None, 1, kind="erasure")


# ---- erasure and the chain ------------------------------------------------------------------------

def test_erasure_leaves_the_chain_intact_and_the_user_unreadable(keyring, tmp_path):
    fill(tmp_path, keyring)
    before = lines(tmp_path)
    assert verify(tmp_path) == (30, None)
    old = keyring.destroy("u-1", "ers_1", T0_MS + 100)
    assert "wrapped" in old and keyring.entry("u-1") == {"erased_ms": T0_MS + 100, "erasure_id": "ers_1"}
    assert lines(tmp_path) == before and verify(tmp_path) == (30, None)
    gone = user_entries(tmp_path, "u-1", keyring)
    assert gone.records == [] and gone.key_state == "erased"
    assert len(user_entries(tmp_path, "u-2", keyring).records) == 15  # others untouched
    # In flight from before the erasure: sealed under a key nobody keeps; new records: a new key.
    fill(tmp_path, keyring, users=("u-1",), n=2, start=30)  # event times T0+30, T0+31: before it
    store = Archive(tmp_path, segment_entries=10, keyring=keyring)
    store.append(0, 40, audit_record("u-1", 40, event_time_ms=T0_MS + 200))
    store.close()
    assert verify(tmp_path) == (33, None)
    after = user_entries(tmp_path, "u-1", keyring)
    assert [r["event_time_ms"] for r in after.records] == [T0_MS + 200]
    assert keyring.entry("u-1")["erasure_id"] == "ers_1"


def test_show_says_what_was_erased(keyring, tmp_path, capsys):
    fill(tmp_path, keyring, n=4)
    keyring.destroy("u-1", "ers_9", T0_MS + 50)
    audit.show(tmp_path, "u-1", keyring)
    out, err = capsys.readouterr()
    assert out == "" and "ERASED" in err and "ers_9" in err and "cannot be read by anyone" in err
    audit.show(tmp_path, "u-2", keyring)
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and "2 entries shown" in err
    store = Archive(tmp_path, keyring=keyring)
    store.append(0, 10, audit_record("u-1", 10, event_time_ms=T0_MS + 60))  # after the erasure: a new key
    store.close()
    audit.show(tmp_path, "u-1", keyring)
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "ERASED before" in err and "only entries sealed since" in err


def test_an_archive_from_before_sealing_verifies_and_continues_sealed(keyring, tmp_path):
    fill(tmp_path, None, n=12)  # the old archiver: plaintext
    assert verify(tmp_path) == (12, None)
    fill(tmp_path, keyring, n=4, start=12)
    assert verify(tmp_path) == (16, None)
    found = user_entries(tmp_path, "u-1", keyring)
    assert found.plaintext == 6 and len(found.records) == 8
    keyring.destroy("u-1", "ers_2", T0_MS + 1000)
    found = user_entries(tmp_path, "u-1", keyring)
    assert found.plaintext == 6 and len(found.records) == 6 and found.key_state == "erased"


# ---- retention -------------------------------------------------------------------------------------

def old_and_new(tmp_path, keyring):
    store = Archive(tmp_path, segment_entries=10, keyring=keyring)
    for i in range(35):  # segments 1-2 old, 3 mixed, 4 new
        t = T0_MS + i if i < 20 else T0_MS + 400 * DAY_MS + i
        store.append(i % 2, i // 2, audit_record(f"u-{i % 3}", i, event_time_ms=t))
    store.close()


def test_retention_cuts_old_segments_and_verify_starts_from_the_signed_checkpoint(keyring, tmp_path):
    old_and_new(tmp_path, keyring)
    checkpoint = cut(tmp_path, T0_MS + 100 * DAY_MS, CHECKPOINT_KEY, T0_MS + 500 * DAY_MS)
    assert checkpoint["removed"] == ["segment-000001.jsonl", "segment-000002.jsonl"]
    assert checkpoint["seq"] == 20 and checkpoint["offsets"] == {"0": 9, "1": 9}
    assert sorted(p.name for p in tmp_path.glob("segment-*")) == ["segment-000003.jsonl", "segment-000004.jsonl"]
    assert verify(tmp_path, CHECKPOINT_KEY) == (15, None)
    _, problem = verify(tmp_path, None, require_signed=True)
    assert "set PENALTY_AUDIT_CHECKPOINT_KEY" in str(problem)
    assert "signature does not match" in str(verify(tmp_path, b"x" * 40)[1])
    # The archiver continues after the cut: seq, chain and archived offsets.
    store = Archive(tmp_path, segment_entries=10, keyring=keyring)
    assert store.seq == 35 and store.append(0, 5, audit_record("u-1", 99)) is False
    assert store.append(0, 18, audit_record("u-1", 100, event_time_ms=T0_MS + 401 * DAY_MS)) is True
    store.close()
    assert verify(tmp_path, CHECKPOINT_KEY) == (16, None)
    # Nothing more is old enough; the newest segment is never cut.
    assert cut(tmp_path, T0_MS + 100 * DAY_MS, CHECKPOINT_KEY, T0_MS) is None
    second = cut(tmp_path, T0_MS + 1000 * DAY_MS, CHECKPOINT_KEY, T0_MS + 1001 * DAY_MS)
    assert second["removed"] == ["segment-000003.jsonl"] and second["prev_mac"] == checkpoint["mac"]
    assert verify(tmp_path, CHECKPOINT_KEY) == (6, None)


def test_a_forged_checkpoint_or_a_dropped_segment_fails_verification(keyring, tmp_path):
    old_and_new(tmp_path, keyring)
    cut(tmp_path, T0_MS + 100 * DAY_MS, CHECKPOINT_KEY, T0_MS)
    path = tmp_path / audit.CHECKPOINTS
    saved = path.read_text()
    path.write_text(saved.replace('"seq":20', '"seq":30'))
    assert "signature does not match" in str(verify(tmp_path, CHECKPOINT_KEY)[1])
    path.write_text(saved)
    (tmp_path / "segment-000003.jsonl").unlink()
    assert "dropped" in str(verify(tmp_path, CHECKPOINT_KEY)[1])


def test_verify_cli_checks_from_the_checkpoint(keyring, tmp_path):
    old_and_new(tmp_path, keyring)
    cut(tmp_path, T0_MS + 100 * DAY_MS, CHECKPOINT_KEY, T0_MS)
    run = lambda env: subprocess.run([sys.executable, "-m", "sinks.audit", "verify", str(tmp_path)], cwd=REPO,
                                     env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                                     timeout=60, check=False)
    ok = run({"PENALTY_AUDIT_CHECKPOINT_KEY": CHECKPOINT_KEY.decode()})
    assert ok.returncode == 0 and ok.stdout.strip() == "ok: 15 entries, chain intact from checkpoint at entry 20"
    missing = run({})
    assert missing.returncode == 1 and "PENALTY_AUDIT_CHECKPOINT_KEY" in missing.stdout


def test_the_policy_file_is_complete_and_checked(tmp_path):
    policy = privacy.load_policy()
    assert policy.days["audit"] == 730 and policy.keep_active_bans is True
    assert policy.topics["alerts.dlq"] == policy.days["dlq"] and policy.version.startswith("sha256:")
    bad = tmp_path / "p.toml"
    bad.write_text("[retention]\naudit_days = 0\nfoo_days = 3\n[erasure]\n")
    with pytest.raises(SystemExit, match=r"problems in .*dlq_days is missing.*foo_days: unknown.*audit_days = 0"):
        privacy.load_policy(bad)


# ---- erasure in Redis -------------------------------------------------------------------------------

class NoSmtp(Notifier):
    def _email(self, *args):
        raise AssertionError("no email in this test")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:23]


def services_write_about(client, user_id: str, stream: str, incident: str, t: int, action: str = "ban") -> None:
    """What the applier, notifier and console keep about one user."""
    Applier(client, TOKEN_KEY).apply({"user_id": user_id, "user_version": t, "action": "stop_stream",
                                      "until_ms": None, "active_strikes": 1, "penalty_id": f"pen-{user_id}-1",
                                      "rule_id": "r1", "event_time_ms": t, "stream_id": stream})
    Applier(client, TOKEN_KEY).apply({"user_id": user_id, "user_version": t + 1, "action": action,
                                      "until_ms": t + DAY_MS, "active_strikes": 2, "penalty_id": f"pen-{user_id}-2",
                                      "rule_id": "r2", "event_time_ms": t, "stream_id": None})
    mailer = NoSmtp(client, SmtpConfig(), SECRET, "https://a.test/appeal", TOKEN_KEY)
    base = {"actions": [], "violation_type": "hate_speech", "rule_id": "r1", "incident_id": incident,
            "event_time_ms": t, "user_id": user_id, "channel": "in_app", "penalty_ids": []}
    assert mailer.deliver({**base, "notification_id": "ntf_1" + sha(user_id), "recipient_role": "streamer",
                           "recipient_id": user_id, "topic": "enforcement",
                           "appeal": {"incident_id": incident, "user_id": user_id}})
    assert mailer.deliver({**base, "notification_id": "ntf_2" + sha(user_id), "recipient_role": "moderator",
                           "recipient_id": "queue:urgent", "topic": "review_request", "appeal": None})
    store_review(client, {"incident_id": incident, "user_id": user_id, "stream_id": stream, "event_time_ms": t,
                          "evidence": [{"alert_id": "a", "evidence": {"frame": 1}}]})
    link = appeal_link("https://a.test/appeal", SECRET, incident, user_id, t + 30 * DAY_MS)
    AppealDesk(client, SECRET).submit(link, f"I am {user_id} and this is wrong", t)
    log_action(client, {"action": "decide", "moderator_id": "m-1", "user_id": user_id, "incident_id": incident,
                        "note": f"note about {user_id}", "time_ms": t})


def all_values(client) -> str:
    out = []
    for key in client.scan_iter("*"):
        kind = client.type(key)
        out.append(key.decode())
        if kind == b"string":
            out.append(client.get(key).decode())
        elif kind == b"hash":
            out.append(json.dumps({k.decode(): v.decode() for k, v in client.hgetall(key).items()}))
        elif kind == b"stream":
            out += [json.dumps({k.decode(): v.decode() for k, v in f.items()}) for _, f in client.xrange(key)]
    return "\n".join(out)


def test_erasure_removes_every_key_about_the_user_and_keeps_a_ban_by_token(client, tmp_path):
    keyring = KeyRing(RedisKeyStore(client), MASTER)
    inc2 = "inc_" + "b" * 24
    services_write_about(client, "u-gone", "live-9", INC, T0_MS)
    services_write_about(client, "u-stay", "live-8", inc2, T0_MS, action="suspend")
    fill(tmp_path, keyring, users=("u-gone", "u-stay"), n=4)
    keep = all_values(client)
    sent = []
    done = privacy.erase("u-gone", reason="user request", operator_id="op-1", client=client, keyring=keyring,
                         token_key=TOKEN_KEY, policy=privacy.load_policy(), now_ms=T0_MS + 10,
                         archive_dir=tmp_path, send_decision=sent.append)
    text = all_values(client)
    assert "u-gone" not in text and INC not in text and "live-9" not in text
    assert "u-gone" not in json.dumps(done.audit_record) and "user request" not in json.dumps(done.audit_record)
    assert done.report["ban_kept"] and done.report["data_key_destroyed"] and done.report["job_state"] == "requested"
    assert done.report["redis_removed"]["stop_commands"] == 1 and done.report["redis_removed"]["console_actions"] == 1
    assert done.report["redis_removed"]["moderation_entries"] == 2  # the review request and the appeal
    # Others untouched: every line about u-stay is still there.
    assert [x for x in keep.splitlines() if "u-stay" in x] == [x for x in text.splitlines() if "u-stay" in x]
    token = user_token(TOKEN_KEY, "u-gone")
    assert client.hgetall(BAN_KEY.format(token))[b"status"] == b"banned"
    assert standing(client, "u-gone", TOKEN_KEY)["status"] == "banned"
    assert int(client.get(ERASED_KEY.format(token))) == T0_MS + 10
    # The job's forgotten state starts the user over: a later warning does not unban them, and a
    # record from before the erasure (in flight) is not applied at all.
    applier = Applier(client, TOKEN_KEY)
    assert not applier.apply({"user_id": "u-gone", "user_version": 5, "action": "warning", "until_ms": None,
                              "active_strikes": 1, "penalty_id": "p", "rule_id": "r", "event_time_ms": T0_MS})
    assert applier.apply({"user_id": "u-gone", "user_version": 6, "action": "lift", "until_ms": None,
                          "active_strikes": 0, "penalty_id": "p2", "rule_id": "r", "event_time_ms": T0_MS + 20})
    assert client.hget("penalty:user:u-gone", "status") == b"banned"
    mailer = NoSmtp(client, SmtpConfig(), SECRET, "https://a.test/appeal", TOKEN_KEY)
    assert not mailer.deliver({"notification_id": "ntf-late", "user_id": "u-gone", "event_time_ms": T0_MS + 5,
                               "channel": "email", "recipient_id": "u-gone"})
    assert [(r["kind"], r["user_id"], r["note"], r["keep_ban"]) for r in sent] == [("erasure", "u-gone", "user request", True)]
    assert user_entries(tmp_path, "u-gone", keyring).records == []
    assert len(user_entries(tmp_path, "u-stay", keyring).records) == 2
    assert privacy.lift_ban(client, TOKEN_KEY, "u-gone") and standing(client, "u-gone", TOKEN_KEY)["status"] == "banned"


def test_without_keep_active_bans_nothing_of_a_banned_user_stays(client, tmp_path):
    keyring = KeyRing(RedisKeyStore(client), MASTER)
    services_write_about(client, "u-gone", "live-9", INC, T0_MS)
    policy = privacy.load_policy()
    policy = privacy.Policy(policy.days, policy.topics, False, policy.version)
    done = privacy.erase("u-gone", reason="r", operator_id="op-1", client=client, keyring=keyring,
                         token_key=TOKEN_KEY, policy=policy, now_ms=T0_MS + 10, send_decision=None)
    assert not done.report["ban_kept"] and not client.keys("penalty:ban:*")
    assert standing(client, "u-gone", TOKEN_KEY) == {}
    assert "not requested" in done.report["job_state"]


def test_the_erasure_decision_failure_is_reported_without_the_user_id(client):
    keyring = KeyRing(RedisKeyStore(client), MASTER)

    def broken(record):
        raise RuntimeError(f"broker down while sending {record['user_id']}")

    done = privacy.erase("u-gone", reason="r", operator_id="op-1", client=client, keyring=keyring,
                         token_key=TOKEN_KEY, policy=privacy.load_policy(), now_ms=T0_MS, send_decision=broken)
    assert done.report["job_state"].startswith("not requested") and "u-gone" not in json.dumps(done.report)


def test_retention_trims_what_redis_keeps(client):
    # Stream entries are timed by arrival (their ids): the run looks 200 days ahead.
    later = int(time.time() * 1000) + 200 * DAY_MS
    services_write_about(client, "u-old", "live-1", INC, T0_MS)
    client.xadd(INBOX_KEY.format("u-new"), {"subject": "x"}, id=f"{later}-0")
    report = privacy.retain(privacy.load_policy(), client=client, now_ms=later + DAY_MS)
    assert report["inbox_entries"] == 1 and report["stop_commands"] == 1 and report["stopped_streams"] == 1
    assert client.xlen(INBOX_KEY.format("u-new")) == 1 and client.xlen(INBOX_KEY.format("u-old")) == 0
    assert client.xlen(MODERATION_KEY.format("urgent")) == 0 and client.xlen(MODERATION_KEY.format("normal")) == 0
    assert report["reviews"] == 1 and client.xlen(ACTIONS_KEY) == 1  # actions are kept 365 days


# ---- logs --------------------------------------------------------------------------------------------

def test_access_log_and_smtp_failures_name_no_user():
    assert redact_path("/users/u-77") == "/users/-" and redact_path("/appeal?incident=i&user=u-77") == "/appeal"
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("10.0.0.9:5", "GET", "/users/u-77?q=u-77", "1.1", 200), None)
    RedactAccess().filter(record)
    assert "u-77" not in record.getMessage() and "10.0.0.9" not in record.getMessage()
    refused = smtplib.SMTPRecipientsRefused({"u-77@users.example": (550, b"no such user u-77")})
    assert failure(refused) == "SMTPRecipientsRefused 550"
    assert "u-77" not in failure(smtplib.SMTPDataError(554, b"rejected for u-77"))


def test_a_retention_run_cuts_the_archive_and_verify_passes_from_its_checkpoint(client, tmp_path):
    keyring = KeyRing(RedisKeyStore(client), MASTER)
    old_and_new(tmp_path, keyring)
    policy = privacy.load_policy()
    now_ms = T0_MS + 300 * DAY_MS + policy.days["audit"] * DAY_MS  # the old segments are past audit_days
    report = privacy.retain(policy, client=client, now_ms=now_ms, archive_dir=tmp_path, checkpoint_key=CHECKPOINT_KEY)
    assert report["audit_segments_removed"] == ["segment-000001.jsonl", "segment-000002.jsonl"]
    assert verify(tmp_path, CHECKPOINT_KEY) == (15, None)
    with pytest.raises(SystemExit, match="PENALTY_AUDIT_CHECKPOINT_KEY"):
        privacy.retain(policy, client=client, now_ms=now_ms, archive_dir=tmp_path, checkpoint_key=None)
