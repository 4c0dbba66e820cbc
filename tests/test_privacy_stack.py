"""Erasure on the real stack (broker, Redis, sealed archive): the services run as their own
processes on the job's outputs (from `rules simulate`), one user is erased mid-history, records
of theirs still in flight arrive after it, and then: nothing of theirs is readable anywhere the
inventory lists, the chain verifies, the other user is untouched, the ban is found by token,
and no service's log names either user."""

from __future__ import annotations

import base64
import http.cookiejar
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import redis

from devtools.localstack import create_topics, free_port
from jobs.config import Topics
from rules.simulate import run as simulate
from sinks.tokens import BAN_KEY, standing, user_token

from .conftest import DAY_MS, REPO, T0_MS, alert_bytes
from .stack_helpers import produce, read_committed
from .test_console import csrf_of
from .test_notifier import SECRET, smtp_server  # noqa: F401 - fixture
from .test_privacy import all_values

pytestmark = pytest.mark.stack

TOKEN_KEY = "k" * 40
ENV = {"PENALTY_AUDIT_MASTER_KEY": base64.urlsafe_b64encode(bytes(range(32))).decode(),
       "PENALTY_PRIVACY_TOKEN_KEY": TOKEN_KEY, "PENALTY_AUDIT_CHECKPOINT_KEY": "c" * 40,
       "PENALTY_APPEAL_SECRET": SECRET.decode()}
GONE, STAY = "u-erased-7", "u-stays-8"
KIND_TOPIC = {"enforcement": "enforcement", "notification": "notifications", "review": "review", "audit": "audit",
              "dlq": "dlq"}


def outputs(policy) -> list[dict]:
    # GONE: 4 hate-speech strikes a day apart (banned at the 4th) and a review-band alert; STAY: 2
    # copyright strikes (7-day suspension).
    lines = [alert_bytes(alert_id=f"g{i}", user_id=GONE, stream_id=f"live-g{i}", event_time_ms=T0_MS + i * DAY_MS)
             for i in range(4)]
    lines.append(alert_bytes(alert_id="g-review", user_id=GONE, stream_id="live-gr", confidence=0.7,
                             event_time_ms=T0_MS + 2 * DAY_MS + 3_600_000))
    lines += [alert_bytes(alert_id=f"s{i}", user_id=STAY, stream_id=f"live-s{i}", violation_type="copyright",
                          event_time_ms=T0_MS + i * 3_600_000) for i in range(2)]
    return [json.loads(x) for x in simulate(policy, lines)]


def publish(bootstrap: str, topics: Topics, records: list[dict]) -> None:
    for out in records:
        topic = getattr(topics, KIND_TOPIC[out["kind"]])
        produce(bootstrap, topic, [json.dumps(out["record"]).encode()], key=(out["key"] or "-").encode())


def service(args: list[str], log_dir, name: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=180, check=False)
    with open(log_dir / f"{name}.log", "a") as fh:
        fh.write(result.stdout + result.stderr)
    assert result.returncode in (0, 3), f"{name}: {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


class Console:
    """`python -m console` as its own process (its log in a file), and a moderator's browser."""

    def __init__(self, args: list[str], env: dict, log_path):
        self.port = free_port()
        self.log = open(log_path, "ab")  # noqa: SIM115 - the server's log while it runs
        self.proc = subprocess.Popen([sys.executable, "-m", "console", *args, "--port", str(self.port)], cwd=REPO,
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline and self.proc.poll() is None, "the console did not start"
                time.sleep(0.2)

    def get(self, path: str) -> str:
        try:
            return self.browser.open(f"http://127.0.0.1:{self.port}{path}", timeout=10).read().decode()
        except urllib.error.HTTPError as exc:  # a refusal page is a page too
            return exc.read().decode()

    def login(self, moderator: str, password: str) -> None:
        form = {"csrf_token": csrf_of(self.get("/login")), "moderator_id": moderator, "password": password}
        self.browser.open(f"http://127.0.0.1:{self.port}/login", urllib.parse.urlencode(form).encode(), timeout=10)

    def history_rows(self, user_id: str) -> int:
        page = self.get(f"/users/{urllib.parse.quote(user_id)}")
        table = re.search(r'<table id="history">(.*?)</table>', page, re.DOTALL)
        return table.group(1).count("<tr>") - 1 if table else 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def test_erasure_mid_history_on_the_real_stack(stack, smtp_server, policy, tmp_path):  # noqa: F811
    controller, _ = smtp_server
    topics = Topics().prefixed("priv-")
    create_topics(stack.bootstrap, topics.partitions())
    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    archive, logs = tmp_path / "audit", tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, **ENV}
    common = ["--bootstrap-servers", stack.bootstrap]
    keystore = ["--redis-url", stack.redis_url]

    def catch_up(n: int) -> None:
        service(["sinks.applier", *common, *keystore, "--topic", topics.enforcement, "--group-id", f"priv-app-{n}",
                 "--idle-exit-s", "2"], logs, "applier", env)
        service(["sinks.notifier", *common, *keystore, "--topic", topics.notifications, "--smtp-host", "127.0.0.1",
                 "--smtp-port", str(controller.port), "--idle-exit-s", "2"], logs, "notifier", env)
        service(["sinks.audit", "archive", "--dir", str(archive), *common, *keystore, "--topic", topics.audit,
                 "--idle-exit-s", "2"], logs, "audit", env)
        service(["console", "index-reviews", *common, *keystore, "--review-topic", topics.review,
                 "--idle-exit-s", "2"], logs, "console-reviews", env)

    records = outputs(policy)
    [review] = [o["record"] for o in records if o["kind"] == "review"]
    # GONE's review incident is still in flight when the erasure runs: its records come after it.
    in_flight = [o for o in records if o["record"].get("incident_id") == review["incident_id"]]
    publish(stack.bootstrap, topics, [o for o in records if o not in in_flight])
    catch_up(1)
    assert client.hget(f"penalty:user:{GONE}", "status") == b"banned"
    assert client.exists(f"penalty:inbox:{GONE}") and GONE in all_values(client)
    assert service(["sinks.audit", "verify", str(archive)], logs, "verify", env).stdout.startswith("ok: ")
    shown = service(["sinks.audit", "show", GONE, "--dir", str(archive), *keystore], logs, "show", env)
    assert len(shown.stdout.splitlines()) >= 4  # the operator's own output: the user's records, opened
    stay_before = [x for x in all_values(client).splitlines() if STAY in x]
    # The console, as moderators and streamers use it: the user pages open sealed history.
    accounts = tmp_path / "moderators.toml"
    service(["console", "add-moderator", "--accounts", str(accounts), "--id", "m-1", "--password-env", "MOD_PW"],
            logs, "console-admin", {**env, "MOD_PW": "a long moderator password"})
    console_env = {**env, "PENALTY_CONSOLE_SESSION_KEY": "s" * 40}
    console = Console(["--accounts", str(accounts), "--archive-dir", str(archive), *common, *keystore],
                      console_env, logs / "console.log")
    try:
        console.login("m-1", "a long moderator password")
        assert console.history_rows(GONE) >= 4 and console.history_rows(STAY) >= 2
        [stay_link] = [v.decode() for _, f in client.xrange(f"penalty:inbox:{STAY}")
                       for k, v in f.items() if k == b"appeal_url" and v][:1]
        # The link's 30 days are long over (events of 2023): the streamer gets the page saying so.
        assert "expired" in console.get("/appeal?" + stay_link.split("?", 1)[1])
    except BaseException:
        console.stop()
        raise

    erased = service(["sinks.privacy", "erase", GONE, "--reason", "erasure request 42", "--operator", "op-1",
                      "--archive-dir", str(archive), "--topic-prefix", "priv-", *common, *keystore], logs, "erase", env)
    report = json.loads(erased.stdout)
    assert erased.returncode == 0 and report["job_state"] == "requested" and report["ban_kept"]
    publish(stack.bootstrap, topics, in_flight)
    catch_up(2)

    try:
        assert console.history_rows(GONE) == 0 and console.history_rows(STAY) >= 2
    finally:
        console.stop()
    # Redis: nothing names GONE; STAY's keys are as they were; the ban is found by token.
    text = all_values(client)
    assert GONE not in text
    assert [x for x in text.splitlines() if STAY in x] == stay_before
    assert standing(client, GONE, TOKEN_KEY.encode())["status"] == "banned"
    assert client.exists(BAN_KEY.format(user_token(TOKEN_KEY.encode(), GONE)))
    # Archive: the chain verifies, GONE's entries cannot be opened, STAY's can; the erasure is
    # archived naming nobody.
    assert service(["sinks.audit", "verify", str(archive)], logs, "verify", env).stdout.startswith("ok: ")
    gone = service(["sinks.audit", "show", GONE, "--dir", str(archive), *keystore], logs, "show", env)
    assert gone.stdout == "" and "ERASED" in gone.stderr
    stays = service(["sinks.audit", "show", STAY, "--dir", str(archive), *keystore], logs, "show", env)
    assert len(stays.stdout.splitlines()) == sum(1 for o in records if o["kind"] == "audit" and o["key"] == STAY)
    stored = "".join(p.read_text() for p in archive.glob("segment-*.jsonl"))
    assert GONE not in stored and STAY not in stored and '"kind":"erasure"' in stored
    # The job is asked to forget GONE (the decision carries the id; it is the job's input).
    [decision] = [d["record"] for d in read_committed(stack.bootstrap, topics.decisions, 1, timeout_s=20)]
    assert (decision["kind"], decision["user_id"], decision["note"]) == ("erasure", GONE, "erasure request 42")
    # Retention on the same stack: nothing is old enough in one young segment; verify still passes;
    # the topics' retention (none locally) is set to the policy's.
    retained = service(["sinks.privacy", "retain", "--archive-dir", str(archive), "--topic-prefix", "priv-", "--topics",
                        *common, *keystore], logs, "retain", env)
    assert json.loads(retained.stdout)["topics"]["priv-alerts.dlq"] == "set to 1209600000 ms (was -1)"
    assert service(["sinks.audit", "verify", str(archive)], logs, "verify", env).returncode == 0
    # Logs of every service (the operator's show output apart, which is the user's data on request).
    for log in logs.glob("*.log"):
        if log.name not in ("show.log", "console-admin.log"):
            content = log.read_text()
            assert GONE not in content and STAY not in content, f"{log.name} names a user:\n{content}"
    assert not client.keys("penalty:review:*") and client.xlen("penalty:moderation:high") == 0
