"""The review console on the real stack: the job's outputs for two users (from the pure decision
core, as the job writes them) go through the notifier into Redis and the review indexer; a
moderator logs in, claims the urgent review and confirms it; the decision is on the real
`decisions` topic with the session's moderator id; a streamer appeals through the signed link the
notifier made, and the appeal reaches the queue once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from connectors import signing
from console.accounts import Accounts, Moderator, hash_password
from console.app import KafkaDecisions, create_app
from console.config import ConsoleConfig
from console.desk import index_reviews
from devtools.localstack import create_topics
from jobs.config import Topics
from rules.simulate import run as simulate
from sinks.audit import Archive
from sinks.notifier import Notifier, SmtpConfig
from sinks.notifier import run as notify

from .conftest import DAY_MS, T0_MS, TEST_KEYS, alert_bytes
from .stack_helpers import produce, read_committed
from .test_console import csrf_of

pytestmark = pytest.mark.stack

SECRET = b"console-stack-secret"


def job_outputs(policy) -> dict[str, list[dict]]:
    alerts = [alert_bytes(alert_id="c1", user_id="u-review", stream_id="s-r", violation_type="terrorism",
                          confidence=0.8, evidence={"frame_ms": 1200}),
              alert_bytes(alert_id="c2", user_id="u-appeal", stream_id="s-a", violation_type="copyright")]
    by_kind: dict[str, list[dict]] = {}
    for line in simulate(policy, alerts):
        out = json.loads(line)
        by_kind.setdefault(out["kind"], []).append(out["record"])
    return by_kind


def test_moderator_confirms_a_review_and_a_streamer_appeals(stack, policy, tmp_path: Path):
    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    topics = Topics().prefixed("console-")
    create_topics(stack.bootstrap, topics.partitions())
    outputs = job_outputs(policy)
    in_app = [r for r in outputs["notification"] if r["channel"] == "in_app"]  # no SMTP in this test
    produce(stack.bootstrap, topics.notifications, [json.dumps(r).encode() for r in in_app], key_field="user_id")
    produce(stack.bootstrap, topics.review, [json.dumps(r).encode() for r in outputs["review"]], key_field="user_id")
    archive = Archive(tmp_path / "audit")
    for offset, record in enumerate(outputs["audit"]):
        archive.append(0, offset, record)
    archive.close()
    notifier = Notifier(client, SmtpConfig("127.0.0.1", 1), SECRET, "https://appeals.example.test/appeal")
    notify(stack.bootstrap, notifier, topics.notifications, "console-notifier", idle_exit_s=2)
    assert index_reviews(stack.bootstrap, client, topics.review, "console-reviews", idle_exit_s=2) == 1

    accounts = Accounts({"mod-7": Moderator("mod-7", hash_password("pw-mod-7", n=16), "Grace")})
    config = ConsoleConfig(redis_url=stack.redis_url, bootstrap_servers=stack.bootstrap,
                           decisions_topic=topics.decisions, archive_dir=tmp_path / "audit",
                           session_key="k" * 32, appeal_secret=SECRET, decision_keys=TEST_KEYS)
    app = create_app(config, client, KafkaDecisions(stack.bootstrap, topics.decisions, TEST_KEYS), accounts,
                     clock=lambda: T0_MS + DAY_MS)

    moderator = TestClient(app)
    login = moderator.get("/login")
    moderator.post("/login", data={"csrf_token": csrf_of(login.text), "moderator_id": "mod-7",
                                   "password": "pw-mod-7"})
    queue = moderator.get("/").text
    [ref] = re.findall(r'data-ref="(urgent/[0-9-]+)"', queue)
    token = csrf_of(queue)
    moderator.post(f"/items/{ref}/claim", data={"csrf_token": token})
    incident = moderator.get(f"/items/{ref}").text
    assert 'id="holder">mod-7<' in incident
    assert "frame_ms: 1200" in incident and "det-1" in incident  # the alert's detector and evidence
    assert re.search(r"policy version</th><td>\S+", incident)
    review = outputs["review"][0]
    done = moderator.post(f"/items/{ref}/decide", data={"csrf_token": token, "verdict": "confirmed",
                                                        "note": "clearly extremist imagery"})
    assert "Decision sent" in done.text
    [decision] = [d["record"] for d in read_committed(stack.bootstrap, topics.decisions, 1, timeout_s=30)]
    assert {k: decision[k] for k in ("kind", "verdict", "user_id", "incident_id", "moderator_id", "note")} == {
        "kind": "review", "verdict": "confirmed", "user_id": "u-review", "incident_id": review["incident_id"],
        "moderator_id": "mod-7", "note": "clearly extremist imagery"}
    assert signing.verify(decision, TEST_KEYS) is None and decision["key_id"] == TEST_KEYS.current_id
    assert 'data-ref="urgent/' not in moderator.get("/").text

    # The streamer of the copyright strike appeals through the link in their in-app message.
    [link] = [f[b"appeal_url"].decode() for _, f in client.xrange("penalty:inbox:u-appeal") if f[b"appeal_url"]][:1]
    streamer = TestClient(app)
    page = streamer.get("/appeal?" + link.split("?", 1)[1])
    assert page.status_code == 200 and "copyright" in page.text
    form = {"csrf_token": csrf_of(page.text), "link": link, "statement": "I hold the licence for this track."}
    assert "Appeal received" in streamer.post("/appeal", data=form).text
    assert streamer.post("/appeal", data=form).status_code == 409
    forged = streamer.get("/appeal?" + link.split("?", 1)[1].replace("u-appeal", "u-other"))
    assert forged.status_code == 403
    queue = moderator.get("/").text
    [appeal_ref] = re.findall(r'data-ref="(normal/[0-9-]+)"', queue)
    assert "I hold the licence" in moderator.get(f"/items/{appeal_ref}").text
