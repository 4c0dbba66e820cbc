"""A field nested deeper than the job can write back out (review records carry evidence) or than
the JVM key extractor reads is refused as `schema` with its reason, instead of crashing the operator
or being judged differently by the two readers."""

import json

from connectors.alerts import MAX_EVIDENCE_DEPTH, Alert, Rejection, Source, parse_alert
from rules.compact_json import encoder
from tests.conftest import alert_doc


def nested(levels: int) -> str:
    """JSON text of an object `levels` deep (written by hand: json.dumps itself overflows)."""
    return '{"k":' * (levels - 1) + "{}" + "}" * (levels - 1)


def parse(doc: dict, evidence: str | None = None):
    text = json.dumps(doc)
    if evidence is not None:
        text = text[:-1] + ', "evidence": ' + evidence + "}"
    return parse_alert(text.encode(), Source("alerts", 0, 1, None))


def test_evidence_at_the_limit_is_decided_and_encodes():
    alert = parse(alert_doc(), nested(MAX_EVIDENCE_DEPTH))
    assert isinstance(alert, Alert)
    assert encoder()(alert.evidence)


def test_evidence_one_level_deeper_or_a_thousand_is_refused_with_the_reason():
    for levels in (MAX_EVIDENCE_DEPTH + 1, 1000):
        rejected = parse(alert_doc(), nested(levels))
        assert isinstance(rejected, Rejection)
        assert (rejected.reason, rejected.detail) == ("schema", f"evidence: nested deeper than {MAX_EVIDENCE_DEPTH} levels")
        assert rejected.user_id == "u-1"


def test_lists_count_as_levels_and_many_shallow_brackets_pass():
    deep_lists = {"k": [[[[]]]]}
    for _ in range(MAX_EVIDENCE_DEPTH):
        deep_lists = {"k": [deep_lists]}
    assert isinstance(parse(alert_doc(evidence=deep_lists)), Rejection)
    wide = {f"k{i}": [{"a": []}] for i in range(200)}  # 600 brackets, 4 levels
    assert isinstance(parse(alert_doc(evidence=wide)), Alert)


def test_an_extra_field_nested_deeper_is_refused_too_before_or_after_user_id():
    """Extra fields are ignored, but the JVM's key extractor gives up on a document deeper than it
    reads (1,000 levels) and orjson does not (1,024): both readers must see the same alerts."""
    for levels in (MAX_EVIDENCE_DEPTH + 1, 1010):
        after = json.dumps(alert_doc())[:-1] + ', "extra": ' + nested(levels) + "}"
        before = '{"extra": ' + nested(levels) + ", " + json.dumps(alert_doc())[1:]
        for text in (after, before):
            rejected = parse_alert(text.encode(), Source("alerts", 0, 1, None))
            assert isinstance(rejected, Rejection)
            assert (rejected.reason, rejected.detail) == ("schema", f"extra: nested deeper than {MAX_EVIDENCE_DEPTH} levels")
    assert isinstance(parse_alert((json.dumps(alert_doc())[:-1] + ', "extra": ' + nested(MAX_EVIDENCE_DEPTH) + "}").encode(),
                                  Source("alerts", 0, 1, None)), Alert)
