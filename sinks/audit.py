"""Tamper-evident audit archive: the `audit` topic into append-only segment files, hash-chained.

    python -m sinks.audit archive --dir DIR [--bootstrap-servers ...] [--topic audit]
    python -m sinks.audit verify DIR        exit 0 intact, 1 names the first broken entry

Each line of a segment (`segment-000001.jsonl`, ...) is one entry:
    {"seq": N, "source": {"partition": P, "offset": O}, "record": {...}, "prev": H(N-1), "hash": H(N)}
with H(N) = sha256(H(N-1) + canonical JSON of seq, source and record). Editing an entry breaks
its hash; dropping one leaves a gap in seq; swapping two breaks the order and the chain. The
archiver resumes after the last archived offset of each partition, so a restart neither loses
nor repeats an entry. Records hold ids only (user, alert, incident), no personal data.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64
SEGMENT_ENTRIES = 100_000


def canonical(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def entry_hash(prev: str, seq: int, source: dict, record: dict) -> str:
    body = canonical({"seq": seq, "source": source, "record": record})
    return hashlib.sha256((prev + body).encode("utf-8")).hexdigest()


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.jsonl"))


@dataclass
class Problem:
    file: str
    line: int
    seq: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: entry {self.seq}: {self.message}"


def verify(directory: Path) -> tuple[int, Problem | None]:
    """Walk the chain; return (entries checked, first problem or None)."""
    prev, expected_seq, count = GENESIS, 1, 0
    for segment in segments(directory):
        with open(segment, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                try:
                    entry = json.loads(line)
                    seq, source, record = entry["seq"], entry["source"], entry["record"]
                except (ValueError, KeyError, TypeError):
                    return count, Problem(segment.name, number, None, "not a valid archive entry (edited)")
                if seq != expected_seq:
                    later = seq > expected_seq and _appears_later(directory, expected_seq)
                    what = ("out of order (reordered)" if seq < expected_seq or later
                            else "missing before it (dropped)")
                    return count, Problem(segment.name, number, seq,
                                          f"expected entry {expected_seq}: entries {what}")
                if entry.get("prev") != prev:
                    return count, Problem(segment.name, number, seq, "does not chain to the entry before it")
                if entry.get("hash") != entry_hash(prev, seq, source, record):
                    return count, Problem(segment.name, number, seq, "content does not match its hash (edited)")
                prev, expected_seq, count = entry["hash"], seq + 1, count + 1
    return count, None


def _appears_later(directory: Path, seq: int) -> bool:
    for segment in segments(directory):
        with open(segment, encoding="utf-8") as fh:
            for line in fh:
                try:
                    if json.loads(line).get("seq") == seq:
                        return True
                except ValueError:
                    continue
    return False


class Archive:
    """Appends entries; knows where the chain ends and which offsets are archived."""

    def __init__(self, directory: Path, segment_entries: int = SEGMENT_ENTRIES):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_entries = segment_entries
        self.prev, self.seq = GENESIS, 0
        self.offsets: dict[int, int] = {}  # partition -> last archived offset
        _, problem = verify(directory)
        if problem is not None:
            raise SystemExit(f"audit archive {directory} is broken, refusing to append: {problem}")
        for segment in segments(directory):
            with open(segment, encoding="utf-8") as fh:
                for line in fh:
                    entry = json.loads(line)
                    self.prev, self.seq = entry["hash"], entry["seq"]
                    self.offsets[entry["source"]["partition"]] = entry["source"]["offset"]
        self.fh = None

    def _segment(self):
        index = self.seq // self.segment_entries + 1
        path = self.dir / f"segment-{index:06d}.jsonl"
        if self.fh is None or self.fh.name != str(path):
            if self.fh is not None:
                self.fh.close()
            self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - the open segment, closed on rollover
        return self.fh

    def append(self, partition: int, offset: int, record: dict) -> bool:
        """Append one record unless this partition/offset is archived already."""
        if offset <= self.offsets.get(partition, -1):
            return False
        seq = self.seq + 1
        source = {"partition": partition, "offset": offset}
        digest = entry_hash(self.prev, seq, source, record)
        fh = self._segment()
        fh.write(canonical({"seq": seq, "source": source, "record": record, "prev": self.prev, "hash": digest}) + "\n")
        self.prev, self.seq = digest, seq
        self.offsets[partition] = offset
        return True

    def sync(self) -> None:
        if self.fh is not None:
            self.fh.flush()
            os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.sync()
            self.fh.close()
            self.fh = None


def archive(bootstrap: str, topic: str, directory: Path, stop=lambda: False, idle_exit_s: float | None = None) -> int:
    """Consume `topic` (read_committed) into the archive until stop() or idle_exit_s without records."""
    from confluent_kafka import Consumer, TopicPartition

    store = Archive(directory)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "audit-archiver",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    # The archive, not the consumer group, says where to resume: it is what was fsynced.
    consumer.assign([TopicPartition(topic, p, store.offsets.get(p, -1) + 1) for p in partitions])
    written, last_record = 0, time.monotonic()
    try:
        while not stop():
            batch = [m for m in consumer.consume(500, timeout=0.5) if not m.error()]
            if not batch:
                if idle_exit_s is not None and time.monotonic() - last_record > idle_exit_s:
                    break
                continue
            last_record = time.monotonic()
            for msg in batch:
                written += store.append(msg.partition(), msg.offset(), json.loads(msg.value()))
            store.sync()
    finally:
        store.close()
        consumer.close()
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sinks.audit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("archive")
    p.add_argument("--dir", required=True)
    p.add_argument("--bootstrap-servers", default="127.0.0.1:19092")
    p.add_argument("--topic", default="audit")
    p.add_argument("--idle-exit-s", type=float, default=None, help="exit after this long without records")
    p = sub.add_parser("verify")
    p.add_argument("dir")
    args = parser.parse_args(argv)
    if args.cmd == "archive":
        n = archive(args.bootstrap_servers, args.topic, Path(args.dir), idle_exit_s=args.idle_exit_s)
        print(f"archived {n} audit records into {args.dir}")
        return 0
    count, problem = verify(Path(args.dir))
    if problem is not None:
        print(f"BROKEN after {count} good entries: {problem}")
        return 1
    print(f"ok: {count} entries, chain intact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
