"""Audit archive: hash chain, resume without loss or repeats, and tamper detection that names
the broken entry."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devtools.localstack import create_topics
from jobs.config import Topics
from sinks.audit import Archive, archive, verify

from .conftest import REPO
from .stack_helpers import produce


def fill(directory, n=30, segment_entries=10):
    store = Archive(directory, segment_entries=segment_entries)
    for i in range(n):
        store.append(i % 2, i // 2, {"audit_id": f"aud_{i:024x}", "user_id": f"u-{i % 5}", "kind": "decision"})
    store.close()


def lines_of(path):
    return path.read_text().splitlines(keepends=True)


def verify_cli(directory):
    return subprocess.run([sys.executable, "-m", "sinks.audit", "verify", str(directory)], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=60)


def test_intact_archive_verifies_and_spans_segments(tmp_path):
    fill(tmp_path)
    assert [p.name for p in sorted(tmp_path.iterdir())] == [
        "segment-000001.jsonl", "segment-000002.jsonl", "segment-000003.jsonl"]
    assert verify(tmp_path) == (30, None)
    result = verify_cli(tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok: 30 entries, chain intact"


def test_reopening_continues_the_chain_and_skips_archived_offsets(tmp_path):
    fill(tmp_path, n=12)
    store = Archive(tmp_path, segment_entries=10)
    assert store.append(0, 5, {"again": True}) is False  # partition 0 offset 5 is archived
    assert store.append(0, 6, {"new": True}) is True
    store.close()
    assert verify(tmp_path)[0] == 13


def edit_line(path, index, change):
    lines = lines_of(path)
    lines[index] = change(lines[index])
    path.write_text("".join(lines))


@pytest.mark.parametrize("tamper, expected", [
    ("edit", "segment-000002.jsonl:3: entry 13: content does not match its hash (edited)"),
    ("delete", "segment-000002.jsonl:3: entry 14: expected entry 13: entries missing before it (dropped)"),
    ("swap", "segment-000002.jsonl:3: entry 14: expected entry 13: entries out of order (reordered)"),
])
def test_tampering_is_detected_and_named(tmp_path, tamper, expected):
    fill(tmp_path)
    segment = tmp_path / "segment-000002.jsonl"
    if tamper == "edit":
        edit_line(segment, 2, lambda line: line.replace('"kind":"decision"', '"kind":"dismissal"'))
    elif tamper == "delete":
        lines = lines_of(segment)
        del lines[2]
        segment.write_text("".join(lines))
    else:
        lines = lines_of(segment)
        lines[2], lines[3] = lines[3], lines[2]
        segment.write_text("".join(lines))
    count, problem = verify(tmp_path)
    assert count == 12 and str(problem) == expected
    result = verify_cli(tmp_path)
    assert result.returncode == 1 and expected.split(": entry")[0] in result.stdout
    with pytest.raises(SystemExit, match="refusing to append"):
        Archive(tmp_path)


def test_recomputed_hashes_still_break_the_chain(tmp_path):
    # An editor who recomputes the edited entry's hash breaks the link to the next entry.
    from sinks.audit import entry_hash

    fill(tmp_path)
    segment = tmp_path / "segment-000001.jsonl"

    def forge(line):
        entry = json.loads(line)
        entry["record"]["kind"] = "dismissal"
        entry["hash"] = entry_hash(entry["prev"], entry["seq"], entry["source"], entry["record"])
        return json.dumps(entry) + "\n"

    edit_line(segment, 4, forge)
    assert str(verify(tmp_path)[1]) == "segment-000001.jsonl:6: entry 6: does not chain to the entry before it"


@pytest.mark.stack
def test_archiver_consumes_the_audit_topic_once_across_restarts(stack, tmp_path):
    topics = Topics().prefixed("arch-")
    create_topics(stack.bootstrap, topics.partitions())
    records = [json.dumps({"audit_id": f"aud_{i:024x}", "user_id": f"u-{i}"}).encode() for i in range(40)]
    produce(stack.bootstrap, topics.audit, records[:25], key=b"k1")
    assert archive(stack.bootstrap, topics.audit, tmp_path, idle_exit_s=3) == 25
    produce(stack.bootstrap, topics.audit, records[25:], key=b"k2")
    assert archive(stack.bootstrap, topics.audit, tmp_path, idle_exit_s=3) == 15
    count, problem = verify(tmp_path)
    assert (count, problem) == (40, None)
    archived = [json.loads(line)["record"]["audit_id"] for p in sorted(tmp_path.glob("segment-*")) for line in p.open()]
    assert sorted(archived) == sorted(json.loads(r)["audit_id"] for r in records)
