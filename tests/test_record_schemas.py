"""Every output record the core produces matches its published JSON Schema."""

from __future__ import annotations

import json
from collections import Counter

import fastjsonschema
import pytest

from connectors import record_schemas
from devtools.generator import AlertGenerator
from rules.simulate import run

from .conftest import T0_MS


@pytest.fixture(scope="module")
def outputs(policy):
    lines = list(AlertGenerator(seed=5, users=200, start_ms=T0_MS, step_ms=600_000).payloads(5000))
    return [json.loads(line) for line in run(policy, lines, order="input")]


def test_every_output_record_matches_its_schema(outputs):
    seen = Counter()
    for out in outputs:
        if out["kind"] == "rejection":
            continue
        record_schemas.validate(out["kind"], out["record"])
        seen[out["kind"]] += 1
        if out["kind"] == "audit":
            seen[f"audit.{out['record']['kind']}"] += 1
    for kind in ("enforcement", "notification", "review", "audit", "audit.decision", "audit.dismissal",
                 "audit.merge", "audit.strike_expired"):
        assert seen[kind] > 0, kind


def test_schemas_reject_a_broken_record(outputs):
    enforcement = next(o["record"] for o in outputs if o["kind"] == "enforcement")
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        record_schemas.validate("enforcement", {**enforcement, "action": "shadowban"})
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        record_schemas.validate("enforcement", {**enforcement, "action": "suspend", "until_ms": None})
    audit = next(o["record"] for o in outputs if o["kind"] == "audit" and o["record"]["ledger_before"])
    with pytest.raises(fastjsonschema.JsonSchemaValueException):
        record_schemas.validate("audit", {**audit, "ledger_before": {"strike_points": {"x": 0}, "active_strikes": []}})


def test_dlq_records_match_their_schema():
    from connectors.alerts import Rejection, Source, parse_alert
    from rules.records import dead_letter

    for payload in (b"", b"{x", b"\xff", b'{"alert_id": 1}', b"x" * 70_000):
        rejection = parse_alert(payload, Source("alerts", 0, 7, T0_MS))
        assert isinstance(rejection, Rejection)
        out = dead_letter(reason=rejection.reason, detail=rejection.detail, raw=rejection.raw,
                          size_bytes=rejection.size_bytes, topic="alerts", partition=0, offset=7,
                          timestamp_ms=T0_MS, user_id=rejection.user_id)
        record_schemas.validate("dlq", out.record)


def test_ids_are_deterministic_across_replays(policy):
    lines = list(AlertGenerator(seed=9, users=30, start_ms=T0_MS, step_ms=600_000).payloads(800))
    ids = [[json.loads(x)["record"].get(k) for x in run(policy, lines) for k in ("penalty_id", "audit_id")]
           for _ in range(2)]
    assert ids[0] == ids[1]
