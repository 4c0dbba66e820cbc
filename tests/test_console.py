"""The review console without Redis or Kafka: fakeredis (with Lua) stands in for Redis, a list for
the decisions topic, Starlette's TestClient for the browser."""

from __future__ import annotations

import json
import re

import fakeredis
import pytest
from starlette.testclient import TestClient

from console.accounts import (
    Accounts,
    AccountsError,
    Moderator,
    add_moderator,
    hash_password,
    verify_password,
)
from console.app import create_app
from console.appeal import APPEALED_KEY
from console.config import ConfigError, ConsoleConfig, from_args
from console.queue import ACTIONS_KEY, Queue, format_age, ordered, parse_entry
from console.security import LoginLimiter, csrf_ok, csrf_token
from sinks.notifier import INBOX_KEY, MODERATION_KEY, appeal_link

from .conftest import DAY_MS, T0_MS, TEST_KEYS, TEST_KEYS_TEXT

SECRET = b"test-appeal-secret"
BASE = "https://appeals.example.test/appeal"
INC = "inc_" + "1" * 24
INC2 = "inc_" + "2" * 24
FAST_HASH = {"n": 2**4, "r": 8, "p": 1}  # tests only: a real entry uses the defaults


def item(priority="normal", entry_id="1-0", **fields):
    return parse_entry(priority, entry_id, {"incident_id": INC, "user_id": "u-1", **fields})


# ---- pure pieces -------------------------------------------------------------------------------

def test_queue_order_is_urgent_first_then_oldest_within_a_priority():
    items = [item("low", "5-0"), item("normal", "9-0"), item("urgent", "7-1"), item("high", "1-0"),
             item("urgent", "7-0"), item("normal", "10-0"), item("urgent", "3-0")]
    assert [i.ref for i in ordered(items)] == ["urgent/3-0", "urgent/7-0", "urgent/7-1", "high/1-0",
                                               "normal/9-0", "normal/10-0", "low/5-0"]


def test_entries_written_before_the_user_id_field_name_the_user_in_the_body():
    old = parse_entry("urgent", b"1-0", {b"incident_id": INC.encode(),
                                         b"body": f"An incident ({INC}) of user u-9 needs human review.".encode()})
    assert (old.kind, old.user_id, old.incident_id) == ("review", "u-9", INC)


def test_ages_read_well():
    assert [format_age(x) for x in (None, 59_000, 61 * 60_000, 3 * DAY_MS + 3_600_000)] == \
        ["-", "0 min", "1 h 1 min", "3 d 1 h"]


def test_scrypt_hashes_carry_salt_and_parameters_and_verify():
    encoded = hash_password("correct horse", **FAST_HASH)
    assert encoded.startswith("scrypt$n=16,r=8,p=1$")
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct hors", encoded)
    assert hash_password("correct horse", **FAST_HASH) != encoded  # a new salt each time
    assert not verify_password("x", "plain-text") and not verify_password("x", "scrypt$n=3,r=8,p=1$AA==$AA==")


def test_add_moderator_appends_readable_entries_and_refuses_duplicates(tmp_path):
    path = tmp_path / "moderators.toml"
    add_moderator(path, "m-1", "a long password", name='Ada "the" moderator')
    add_moderator(path, "m-2", "another password")
    accounts = Accounts.load(path)
    assert accounts.authenticate("m-1", "a long password").name == 'Ada "the" moderator'
    assert accounts.authenticate("m-1", "another password") is None
    assert accounts.authenticate("nobody", "a long password") is None
    with pytest.raises(AccountsError, match="already"):
        add_moderator(path, "m-2", "x" * 12)
    with pytest.raises(AccountsError, match="ids are"):
        add_moderator(path, "m.3", "x" * 12)
    path.write_text('[moderators.m-4]\npassword_hash = "plain"\n')
    with pytest.raises(AccountsError, match="m-4: password_hash is not a scrypt hash"):
        Accounts.load(path)


def test_csrf_token_is_per_session_and_checked():
    session: dict = {}
    token = csrf_token(session)
    assert csrf_token(session) == token and csrf_ok(session, token)
    assert not csrf_ok(session, token + "x") and not csrf_ok(session, None) and not csrf_ok({}, token)


def test_secrets_come_from_the_environment():
    import argparse

    from console.config import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--topic-prefix", "t-"])
    keys = {"PENALTY_DECISION_KEYS": TEST_KEYS_TEXT}
    with pytest.raises(ConfigError, match="PENALTY_CONSOLE_SESSION_KEY"):
        from_args(args, {"PENALTY_APPEAL_SECRET": "s", **keys})
    with pytest.raises(ConfigError, match="PENALTY_APPEAL_SECRET"):
        from_args(args, {"PENALTY_CONSOLE_SESSION_KEY": "k" * 32, **keys})
    with pytest.raises(ConfigError, match="set PENALTY_DECISION_KEYS"):
        from_args(args, {"PENALTY_CONSOLE_SESSION_KEY": "k" * 32, "PENALTY_APPEAL_SECRET": "s"})
    with pytest.raises(ConfigError, match="use at least 32"):
        from_args(args, {"PENALTY_CONSOLE_SESSION_KEY": "k" * 32, "PENALTY_APPEAL_SECRET": "s",
                         "PENALTY_DECISION_KEYS": "k=short"})
    config = from_args(args, {"PENALTY_CONSOLE_SESSION_KEY": "k" * 32, "PENALTY_APPEAL_SECRET": "s", **keys})
    assert (config.decisions_topic, config.host, config.appeal_secret) == ("t-decisions", "127.0.0.1", b"s")
    assert config.decision_keys == TEST_KEYS


def test_a_claim_is_held_by_one_moderator_until_released_or_expired():
    client = fakeredis.FakeRedis()
    queue = Queue(client, claim_ttl_ms=60_000)
    it = item()
    assert queue.claim(it, "m-1") == "m-1"
    assert queue.claim(it, "m-2") == "m-1" and queue.holder(it) == "m-1"
    assert not queue.release(it, "m-2") and queue.holder(it) == "m-1"
    assert queue.release(it, "m-1") and queue.holder(it) is None
    assert queue.claim(it, "m-2") == "m-2"
    assert 0 < client.pttl("penalty:console:claim:review:" + INC) <= 60_000


def test_login_limit_counts_per_account_and_address():
    limiter = LoginLimiter(fakeredis.FakeRedis(), max_failures=3)
    for _ in range(3):
        limiter.failed("m-1", "10.0.0.1")
    assert limiter.blocked("m-1", "10.0.0.1")
    assert not limiter.blocked("m-1", "10.0.0.2") and not limiter.blocked("m-2", "10.0.0.1")
    limiter.succeeded("m-1", "10.0.0.1")
    assert not limiter.blocked("m-1", "10.0.0.1")


# ---- the application ---------------------------------------------------------------------------

class Decisions(list):
    def send(self, record):
        self.append(record)


@pytest.fixture
def desk():
    client = fakeredis.FakeRedis()
    accounts = Accounts({m: Moderator(m, hash_password("pw-" + m, **FAST_HASH), m) for m in ("m-1", "m-2")})
    decisions = Decisions()
    now = {"ms": T0_MS + DAY_MS}
    app = create_app(ConsoleConfig(session_key="s" * 32, appeal_secret=SECRET), client, decisions, accounts,
                     clock=lambda: now["ms"])
    return client, decisions, app, now


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(app, moderator: str) -> TestClient:
    browser = TestClient(app)
    page = browser.get("/login")
    done = browser.post("/login", data={"csrf_token": csrf_of(page.text), "moderator_id": moderator,
                                        "password": "pw-" + moderator}, follow_redirects=False)
    assert done.status_code == 303, done.text
    return browser


def review_entry(client, priority="urgent", user="u-1", incident=INC) -> str:
    return client.xadd(MODERATION_KEY.format(priority), {
        "notification_id": "ntf_1", "subject": "Review needed: terrorism", "body": "...", "incident_id": incident,
        "appeal_url": "", "kind": "review", "user_id": user, "violation_type": "terrorism"}).decode()


def test_pages_need_a_login_and_forms_need_the_csrf_token(desk):
    client, decisions, app, _ = desk
    anonymous = TestClient(app)
    assert anonymous.get("/", follow_redirects=False).headers["location"] == "/login?next=/"
    refused = anonymous.post("/login", data={"moderator_id": "m-1", "password": "pw-m-1"})
    assert refused.status_code == 403 and "security token" in refused.text
    browser = login(app, "m-1")
    entry = review_entry(client)
    assert browser.post(f"/items/urgent/{entry}/decide", data={"verdict": "confirmed", "note": "n"}).status_code == 403
    assert decisions == []


def test_login_is_rate_limited(desk):
    client, _, app, _ = desk
    browser = TestClient(app)
    token = csrf_of(browser.get("/login").text)
    codes = [browser.post("/login", data={"csrf_token": token, "moderator_id": "m-1", "password": "wrong"}).status_code
             for _ in range(6)]
    assert codes == [401] * 5 + [429]
    right = browser.post("/login", data={"csrf_token": token, "moderator_id": "m-1", "password": "pw-m-1"})
    assert right.status_code == 429  # even the right password, until the window ends
    assert [f[b"action"] for _, f in client.xrange(ACTIONS_KEY)][-1] == b"login_blocked"


def test_queue_claim_and_decision_with_the_session_moderator(desk):
    client, decisions, app, _ = desk
    low = review_entry(client, "low", "u-2", INC2)
    urgent = review_entry(client, "urgent")
    m1, m2 = login(app, "m-1"), login(app, "m-2")
    page = m1.get("/").text
    assert page.index(f"urgent/{urgent}") < page.index(f"low/{low}")
    token = csrf_of(page)
    m1.post(f"/items/urgent/{urgent}/claim", data={"csrf_token": token})
    assert "claimed by" in m1.get(f"/items/urgent/{urgent}").text.lower()
    blocked = m2.post(f"/items/urgent/{urgent}/decide",
                      data={"csrf_token": csrf_of(m2.get("/").text), "verdict": "rejected", "note": "no"})
    assert blocked.status_code == 409 and decisions == []
    no_note = m1.post(f"/items/urgent/{urgent}/decide", data={"csrf_token": token, "verdict": "confirmed"})
    assert "note" in no_note.text and decisions == []
    done = m1.post(f"/items/urgent/{urgent}/decide",
                   data={"csrf_token": token, "verdict": "confirmed", "note": "clear violation",
                         "moderator_id": "forged-by-form"})
    assert done.status_code == 200 and "Decision sent" in done.text
    assert decisions == [{"schema_version": 1, "decision_id": decisions[0]["decision_id"], "kind": "review",
                          "verdict": "confirmed", "user_id": "u-1", "incident_id": INC, "moderator_id": "m-1",
                          "event_time_ms": T0_MS + DAY_MS, "note": "clear violation"}]
    assert decisions[0]["decision_id"].startswith("review-")
    assert client.xlen(MODERATION_KEY.format("urgent")) == 0
    log = [{k.decode(): v.decode() for k, v in f.items()} for _, f in client.xrange(ACTIONS_KEY)]
    assert [a["action"] for a in log if a["moderator_id"] == "m-1"] == ["login", "claim", "decide"]
    assert log[-1]["note"] == "clear violation" and log[-1]["verdict"] == "confirmed"


def test_appeal_through_a_signed_link_reaches_the_queue_once(desk):
    client, decisions, app, _ = desk
    client.xadd(INBOX_KEY.format("u-1"), {"notification_id": "ntf_2", "subject": "Community guidelines: hate speech",
                                          "body": "We detected hate speech on your stream.", "incident_id": INC,
                                          "appeal_url": "x"})
    link = appeal_link(BASE, SECRET, INC, "u-1", T0_MS + 30 * DAY_MS)
    streamer = TestClient(app)
    page = streamer.get("/appeal?" + link.split("?", 1)[1])
    assert page.status_code == 200 and "We detected hate speech" in page.text
    form = {"csrf_token": csrf_of(page.text), "link": link, "statement": "It was a quote from the news."}
    assert "Appeal received" in streamer.post("/appeal", data=form).text
    again = streamer.post("/appeal", data=form)
    assert again.status_code == 409 and "appealed already" in again.text
    entries = client.xrange(MODERATION_KEY.format("normal"))
    assert len(entries) == 1 and entries[0][1][b"kind"] == b"appeal"
    assert entries[0][1][b"statement"] == b"It was a quote from the news."
    moderator = login(app, "m-1")
    ref = f"normal/{entries[0][0].decode()}"
    assert "It was a quote from the news." in moderator.get(f"/items/{ref}").text
    moderator.post(f"/items/{ref}/decide", data={"csrf_token": csrf_of(moderator.get("/").text),
                                                 "verdict": "granted", "note": "satire"})
    assert [(d["kind"], d["verdict"], d["moderator_id"]) for d in decisions] == [("appeal", "granted", "m-1")]


@pytest.mark.parametrize("tamper, status, says", [
    (lambda link: link.replace("u-1", "u-2"), 403, "not valid"),
    (lambda link: link.split("&sig=")[0], 403, "not valid"),
    (lambda link: link, 403, "expired"),  # with the clock after the expiry
])
def test_forged_or_expired_links_get_a_clear_page_and_write_nothing(desk, tamper, status, says):
    client, _, app, now = desk
    link = appeal_link(BASE, SECRET, INC, "u-1", T0_MS + 30 * DAY_MS)
    if says == "expired":
        now["ms"] = T0_MS + 31 * DAY_MS
    streamer = TestClient(app)
    page = streamer.get("/appeal?" + tamper(link).split("?", 1)[1])
    assert page.status_code == status and says in page.text and "Nothing was submitted" in page.text
    token = csrf_of(streamer.get("/login").text)
    posted = streamer.post("/appeal", data={"csrf_token": token, "link": tamper(link), "statement": "please"})
    assert posted.status_code == status
    assert client.xlen(MODERATION_KEY.format("normal")) == 0 and not client.exists(APPEALED_KEY.format(INC))


def test_active_strikes_show_their_expiry_from_the_record_that_made_them(policy):
    from console.desk import active_strikes, latest_ledger
    from rules.simulate import run

    from .conftest import HOUR_MS, alert_bytes

    alerts = [alert_bytes(alert_id=f"a-{i}", stream_id=f"s-{i}", event_time_ms=T0_MS + i * HOUR_MS) for i in range(2)]
    audit = [o["record"] for o in map(json.loads, run(policy, alerts, drain=False)) if o["kind"] == "audit"]
    newest_first = audit[::-1]
    strikes = active_strikes(newest_first, latest_ledger(newest_first))
    # hate speech: standard category, strikes expire after 90 days
    assert [expires for _, expires in strikes] == [T0_MS + 90 * DAY_MS, T0_MS + HOUR_MS + 90 * DAY_MS]
    # An archive without the record that made a strike (cut by retention) shows no expiry for it.
    first = strikes[0][0]
    cut = [r for r in newest_first if r.get("incident_id") != first]
    assert active_strikes(cut, latest_ledger(newest_first)) == [(first, None), strikes[1]]


def test_the_queue_page_shows_the_newest_detector_guard_notices(desk):
    client, _, app, _ = desk
    m1 = login(app, "m-1")
    assert 'id="guard"' not in m1.get("/").text  # nothing tripped: no section
    stream = MODERATION_KEY.format("detector_guard")
    client.xadd(stream, {"notification_id": "ntf_g1", "kind": "detector_guard", "detector_id": "vision-v5",
                         "subject": "Detector guard tripped: vision-v5", "body": "Its alerts now go to urgent review."})
    client.xadd(stream, {"notification_id": "ntf_g2", "kind": "detector_guard", "detector_id": "vision-v5",
                         "subject": "Detector guard released: vision-v5", "body": "It penalises automatically again."})
    page = m1.get("/").text
    section = page[page.index('id="guard"'):]
    assert section.index("released: vision-v5") < section.index("tripped: vision-v5")  # newest first
    assert "Nothing waits for review." in page  # notices are not items to decide
