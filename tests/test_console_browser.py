"""The console in a real browser (headless Chromium driven by Selenium), on the real stack with the
running job: a moderator logs in, finds the review item a real alert produced through the job,
confirms it, and the ban appears in Redis; a streamer opens the appeal link from the notifier's
email, appeals, a moderator grants it, and the ban is lifted in Redis.

Screenshots of each page go to the test's tmp_path (never into the repository)."""

from __future__ import annotations

import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import redis

from console.accounts import Accounts, Moderator, hash_password
from console.app import KafkaDecisions, create_app
from console.config import ConsoleConfig
from console.desk import index_reviews
from devtools.localstack import create_topics, free_port
from jobs.config import Topics
from sinks import applier, notifier

from .conftest import TEST_KEYS, alert_bytes
from .stack_helpers import JobProcess, produce, read_committed
from .test_notifier import SECRET, smtp_server  # noqa: F401 - fixture

pytestmark = pytest.mark.stack

PASSWORD = "correct horse battery staple"


@pytest.fixture
def browser(tmp_path):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("chromium and chromedriver are missing: `make setup` installs them (Debian chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    # The driver given by path: Selenium never tries to download one.
    session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    session.set_page_load_timeout(30)
    session.implicitly_wait(10)  # find_element waits for the page a click led to
    yield session
    session.quit()


class Console:
    """The console app on a real loopback port (uvicorn in a thread), as `python -m console` runs it."""

    def __init__(self, app, port: int):
        import uvicorn

        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the console did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def wait_for(what: str, check, timeout_s: float = 90, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)


def test_moderator_and_streamer_in_a_real_browser(stack, smtp_server, browser, tmp_path: Path):  # noqa: F811
    from selenium.webdriver.common.by import By

    controller, inbox = smtp_server
    topics = Topics().prefixed("browser-")
    create_topics(stack.bootstrap, topics.partitions())
    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    now = int(time.time() * 1000)
    port = free_port()
    shots = iter(range(1, 100))

    def shows(text: str) -> None:
        wait_for(repr(text), lambda: text in browser.page_source, 15, 0.1)

    def shot(name: str) -> None:
        browser.save_screenshot(str(tmp_path / f"{next(shots):02d}-{name}.png"))

    def claim_and_decide(verdict: str, note: str) -> None:
        """On an incident page: claim it, write the note, press the verdict's button."""
        browser.find_element(By.XPATH, "//button[text()='Claim']").click()
        assert browser.find_element(By.ID, "holder").text == "mod-1"
        browser.find_element(By.NAME, "note").send_keys(note)
        shot(f"{verdict}-incident")
        browser.find_element(By.CSS_SELECTOR, f"#decide button[value='{verdict}']").click()
        shows("Decision sent")
        shot(verdict)

    def log_in() -> None:
        browser.find_element(By.NAME, "moderator_id").send_keys("mod-1")
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        shot("login")
        browser.find_element(By.CSS_SELECTOR, "form button").click()
        wait_for("the queue", lambda: browser.find_elements(By.ID, "summary"), 15)

    # Terrorism at 0.80: the stream stops and an urgent review is queued; CSAM at 0.99: banned.
    produce(stack.bootstrap, topics.alerts, [
        alert_bytes(alert_id="b1", user_id="u-review", stream_id="live-r", violation_type="terrorism",
                    confidence=0.8, event_time_ms=now - 60_000, evidence={"frame_ms": 4200}),
        alert_bytes(alert_id="b2", user_id="u-banned", stream_id="live-b", violation_type="csam",
                    confidence=0.99, event_time_ms=now - 50_000),
    ], partition=0)
    job = JobProcess(["--bootstrap-servers", stack.bootstrap, "--topic-prefix", "browser-", "--group-id",
                      "browser-job", "--transactional-id-prefix", "browser", "--starting-offsets", "earliest",
                      "--idleness-ms", "1000", "--checkpoint-dir", str(tmp_path / "ck")], tmp_path / "job.log")
    mailer = notifier.Notifier(client, notifier.SmtpConfig("127.0.0.1", controller.port), SECRET,
                               f"http://127.0.0.1:{port}/appeal")
    passes = iter(range(1, 100))

    def catch_up() -> None:
        """One pass of the applier, the notifier and the review indexer over what is committed
        (fresh consumer groups each time; all three are idempotent: tests/test_stack_end_to_end.py)."""
        n = next(passes)
        applier.run(stack.bootstrap, stack.redis_url, topics.enforcement, f"browser-applier-{n}", idle_exit_s=2)
        notifier.run(stack.bootstrap, mailer, topics.notifications, f"browser-notifier-{n}", idle_exit_s=2)
        index_reviews(stack.bootstrap, client, topics.review, f"browser-reviews-{n}", idle_exit_s=2)

    accounts = Accounts({"mod-1": Moderator("mod-1", hash_password(PASSWORD, n=16), "Ada")})
    config = ConsoleConfig(redis_url=stack.redis_url, bootstrap_servers=stack.bootstrap,
                           decisions_topic=topics.decisions, session_key="s" * 40, appeal_secret=SECRET,
                           decision_keys=TEST_KEYS, port=port)
    console = Console(create_app(config, client, KafkaDecisions(stack.bootstrap, topics.decisions, TEST_KEYS),
                                 accounts), port)
    try:
        first = read_committed(stack.bootstrap, topics.enforcement, 3, timeout_s=120)
        assert sorted((e["record"]["user_id"], e["record"]["action"]) for e in first) == [
            ("u-banned", "ban"), ("u-banned", "stop_stream"), ("u-review", "stop_stream")], job.tail()
        read_committed(stack.bootstrap, topics.review, 1, timeout_s=30)
        catch_up()
        assert client.hget("penalty:user:u-banned", "status") == b"banned"
        assert client.hget("penalty:user:u-review", "status") in (None, b"active")

        # The moderator logs in (the queue redirects to the login page first).
        browser.get(console.url + "/")
        assert "/login" in browser.current_url
        log_in()
        shot("queue")
        row = browser.find_element(By.CSS_SELECTOR, "#items tr.urgent")
        assert "u-review" in row.text and "terrorism" in row.text
        row.find_element(By.LINK_TEXT, "open").click()
        assert "frame_ms: 4200" in browser.find_element(By.ID, "evidence").text
        claim_and_decide("confirmed", "Extremist flag and chant in the clip: confirmed.")

        # The job applies the confirmed review (the severe ladder bans) and the applier writes it.
        confirmed = read_committed(stack.bootstrap, topics.enforcement, 5, timeout_s=120)
        assert ("u-review", "ban") in {(e["record"]["user_id"], e["record"]["action"]) for e in confirmed}, job.tail()
        catch_up()
        assert client.hget("penalty:user:u-review", "status") == b"banned"

        # The banned streamer opens the appeal link of their email and appeals.
        def ban_link() -> str | None:
            links = [re.search(r"appeal here: (\S+)", m).group(1) for m in inbox.messages if "appeal here:" in m]
            return next((link for link in links if "user=u-banned" in link), None)
        link = wait_for("the ban email's appeal link", ban_link, 30)
        assert link.startswith(console.url + "/appeal?")
        streamer = browser
        streamer.delete_all_cookies()  # another person, another session
        streamer.get(link)
        shows("csam")
        streamer.find_element(By.NAME, "statement").send_keys("The clip is a news report about a takedown.")
        shot("appeal")
        streamer.find_element(By.CSS_SELECTOR, "form button").click()
        shows("Appeal received")
        shot("appeal-received")

        # The moderator grants it; the job lifts the ban; the applier writes it to Redis.
        browser.get(console.url + "/login")
        log_in()
        row = wait_for("the appeal in the queue",
                       lambda: [r for r in browser.find_elements(By.CSS_SELECTOR, "#items tr") if "u-banned" in r.text], 15)[0]
        assert "appeal" in row.text
        row.find_element(By.LINK_TEXT, "open").click()
        assert "news report" in browser.find_element(By.ID, "statement").text
        claim_and_decide("granted", "News reporting, not the material itself.")
        lifted = read_committed(stack.bootstrap, topics.enforcement, 6, timeout_s=120)
        assert ("u-banned", "lift") in {(e["record"]["user_id"], e["record"]["action"]) for e in lifted}, job.tail()
        catch_up()
        assert client.hget("penalty:user:u-banned", "status") == b"active"
        assert client.hget("penalty:user:u-review", "status") == b"banned"  # the other decision stands
        actions = [f[b"action"] for _, f in client.xrange("penalty:console:actions")]
        assert actions.count(b"decide") == 2 and b"login" in actions
    finally:
        console.stop()
        job.kill(signal.SIGTERM)
