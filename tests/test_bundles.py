"""Bundles of raw records (connectors/bundles.py) and the operator deciding one bundle: the layout
the JVM bundler writes, read back exactly; a bad record in a bundle goes to the DLQ with its reason
while the records around it are decided as if they had come one at a time."""

from __future__ import annotations

import json

import pytest

from connectors import bundles
from jobs.config import DEFAULT_RULES
from jobs.operators import PenaltyFunction
from rules.core import CoreConfig

from .conftest import T0_MS, alert_bytes
from .test_operator_timers import FakeContext, operator_and_context  # noqa: F401 - the fixture


def record(offset: int, payload: bytes, user_id: str = "u-1", topic_index: int = 0) -> bundles.BundledRecord:
    return bundles.BundledRecord(topic_index, 3, offset, T0_MS + offset, len(payload), user_id, payload)


def test_a_bundle_reads_back_exactly_what_was_packed():
    items = [record(0, alert_bytes()), record(1, b""), record(2, "é\xff".encode("latin-1"), user_id="ü-2"),
             record(3, b'{"decision_id":"d"}', topic_index=1), record(4, b"x" * 70_000, user_id="")]
    assert list(bundles.records(bundles.pack(items))) == items


def test_an_empty_bundle_has_no_records():
    assert list(bundles.records(bundles.pack([]))) == []


@pytest.mark.parametrize("cut", [3, 10, 40])
def test_a_truncated_bundle_is_an_error_not_data(cut):
    packed = bundles.pack([record(0, alert_bytes())])
    with pytest.raises(bundles.BundleError, match="breaks the layout"):
        list(bundles.records(packed[:-cut]))


def test_trailing_bytes_are_an_error():
    with pytest.raises(bundles.BundleError, match="ending at byte"):
        list(bundles.records(bundles.pack([record(0, alert_bytes())]) + b"\x00"))


def triples(batches) -> list[tuple[str, str, str]]:
    return [tuple(batch[i:i + 3]) for batch in batches for i in range(0, len(batch), 3)]


def test_a_bad_record_in_a_bundle_goes_to_the_dlq_and_the_others_are_decided(operator_and_context):  # noqa: F811
    operator, ctx = operator_and_context
    good = [alert_bytes(alert_id=f"a{i}", user_id=f"u-{i}", stream_id=f"s{i}", event_time_ms=T0_MS + i)
            for i in range(3)]
    items = [record(0, good[0], "u-0"), record(1, b"not json", ""), record(2, good[1], "u-1"),
             record(3, alert_bytes(alert_id="x", user_id="u-9"), "u-other"),  # the JVM keyed it elsewhere
             record(4, good[2], "u-2")]
    ctx.key = "\x00shard-0"
    out = triples(operator.process_element(bundles.pack(items), ctx))
    dlq = [json.loads(value) for kind, _, value in out if kind == "dlq"]
    assert [(d["reason"], d["source"]["offset"], d["source"]["partition"]) for d in dlq] == [
        ("not_json", 1, 3), ("schema", 3, 3)]
    assert dlq[0]["source"]["topic"] == "alerts"

    # The good ones decided exactly as one record per bundle would decide them.
    alone = PenaltyFunction(DEFAULT_RULES.read_bytes(), DEFAULT_RULES.name, CoreConfig(), ("alerts", "decisions"),
                            65_536, 300_000)
    alone_ctx = FakeContext()
    alone.open(alone_ctx)
    expected = []
    for item in (items[0], items[2], items[4]):
        expected += triples(alone.process_element(bundles.pack([item]), alone_ctx))
    decided = [t for t in out if t[0] not in ("dlq", "count")]
    assert decided == [t for t in expected if t[0] != "count"] and decided
    # Counters arrive once per name per bundle, with their totals.
    counts = {name: int(n or 1) for kind, name, n in out if kind == "count"}
    assert counts["alerts_in"] == 5 and counts["alerts_valid"] == 3
    assert counts["alerts_rejected.not_json"] == 1 and counts["alerts_rejected.schema"] == 1
    for user in ("u-0", "u-1", "u-2"):
        assert operator.users.load(user).state is not None


class TaskInfoContext(FakeContext):
    """A runtime context that answers like the JVM's: the operator's subtasks and key groups."""

    def __init__(self, parallelism: int, max_parallelism: int):
        super().__init__()

        class TaskInfo:
            def getNumberOfParallelSubtasks(self):
                return parallelism

            def getMaxNumberOfParallelSubtasks(self):
                return max_parallelism

        class Java:
            def getTaskInfo(self):
                return TaskInfo()

        self._runtime_context = Java()


@pytest.mark.parametrize(("running", "message"), [
    ((2, 128), None),
    ((3, 128), "runs at parallelism 3 but its bundles were cut for 2"),
    ((2, 256), "runs with max parallelism 256 but its bundles were cut for 128"),
])
def test_the_operator_refuses_bundles_cut_for_another_layout(running, message):
    # A bundle holds the users of every key group one subtask owns: at another parallelism some of
    # them belong to another subtask, and deciding them here would write state that is not ours.
    operator = PenaltyFunction(DEFAULT_RULES.read_bytes(), DEFAULT_RULES.name, CoreConfig(), ("alerts", "decisions"),
                               65_536, 300_000, max_parallelism=128, parallelism=2)
    ctx = TaskInfoContext(*running)
    if message is None:
        operator.open(ctx)
        return
    with pytest.raises(RuntimeError, match=message):
        operator.open(ctx)
