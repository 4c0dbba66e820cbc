"""Shared fixtures: alert factories, the default policy, and the local stack on free ports."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from connectors import signing
from connectors.alerts import Alert
from rules.core import CoreConfig, PenaltyCore
from rules.loader import load_policy

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RULES = REPO / "rules" / "policies" / "default.yaml"
# The decision keys of every job, console and CLI the suite starts (they inherit the environment;
# set before any JVM starts, so the mini-cluster's Python operators see it too). The second key
# is the previous one, still accepted.
TEST_KEYS_TEXT = "test-k2=" + "2" * 40 + ",test-k1=" + "1" * 40
os.environ[signing.KEYS_ENV] = TEST_KEYS_TEXT
TEST_KEYS = signing.parse_keys(TEST_KEYS_TEXT)


def signed(doc: dict) -> bytes:
    """A decision record as the console writes it: signed with the current test key."""
    return json.dumps(signing.sign(doc, TEST_KEYS)).encode()


T0_MS = 1_700_000_000_000
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def make_alert(**overrides) -> Alert:
    fields = {"alert_id": "a-1", "stream_id": "s-1", "user_id": "u-1", "detector_id": "det-1",
              "violation_type": "hate_speech", "confidence": 0.95, "event_time_ms": T0_MS}
    fields.update(overrides)
    return Alert(**fields)


def alert_doc(**overrides) -> dict:
    return make_alert(**overrides).to_json_dict()


def alert_bytes(**overrides) -> bytes:
    return json.dumps(alert_doc(**overrides)).encode()


@pytest.fixture(scope="session")
def policy():
    return load_policy(DEFAULT_RULES)


@pytest.fixture
def core(policy):
    return PenaltyCore(policy, CoreConfig())


@pytest.fixture(scope="session")
def stack():
    """noida-db + redis-server on free loopback ports for the whole session."""
    from devtools import localstack

    data_dir = Path(tempfile.mkdtemp(prefix="penalty-stack-"))
    running = localstack.start_stack(data_dir)
    yield running
    running.stop()
    shutil.rmtree(data_dir, ignore_errors=True)
