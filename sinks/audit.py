"""Tamper-evident audit archive: the `audit` topic into append-only segment files, hash-chained.

    PENALTY_AUDIT_MASTER_KEY=... python -m sinks.audit archive --dir DIR [--redis-url URL | --key-file F]
        [--bootstrap-servers ...] [--topic audit]
    python -m sinks.audit verify DIR        exit 0 intact, 1 names the first broken entry
    PENALTY_AUDIT_MASTER_KEY=... python -m sinks.audit show USER --dir DIR   the user's entries, opened

Each line of a segment (`segment-000001.jsonl`, ...) is one entry:
    {"seq": N, "source": {"partition": P, "offset": O}, "record": {...}, "prev": H(N-1), "hash": H(N)}
with H(N) = sha256(H(N-1) + canonical JSON of seq, source and record). Editing an entry breaks
its hash; dropping one leaves a gap in seq; swapping two breaks the order and the chain. The
archiver resumes after the last archived offset of each partition, so a restart neither loses
nor repeats an entry.

Records that name a user are stored sealed (sinks/sealing.py): kind, outcome, rule and event
time in the clear, the rest encrypted under the user's data key, so an erasure destroys the key
and leaves the chain as it was. Entries archived before sealing existed stay plaintext and verify
as before. A retention run (`python -m sinks.privacy retain`) deletes the oldest segments and
appends a checkpoint to `checkpoints.jsonl` (the last removed entry's seq and hash, the archived
offsets, HMAC-SHA256 with PENALTY_AUDIT_CHECKPOINT_KEY); `verify` then starts from it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

GENESIS = "0" * 64
SEGMENT_ENTRIES = 100_000
CHECKPOINTS = "checkpoints.jsonl"
CHECKPOINT_KEY_ENV = "PENALTY_AUDIT_CHECKPOINT_KEY"


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


def checkpoint_mac(key: bytes, checkpoint: dict) -> str:
    body = canonical({k: v for k, v in checkpoint.items() if k != "mac"})
    return hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def read_checkpoints(directory: Path, key: bytes | None) -> tuple[dict | None, Problem | None]:
    """The newest checkpoint (None when retention never ran), each one's MAC and link to the one
    before it checked when `key` is given."""
    path = Path(directory) / CHECKPOINTS
    if not path.exists():
        return None, None
    newest, prev_mac = None, ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            checkpoint = json.loads(line)
            checkpoint["seq"], checkpoint["hash"], checkpoint["mac"], checkpoint["offsets"]
        except (ValueError, KeyError, TypeError):
            return None, Problem(CHECKPOINTS, number, None, "not a valid checkpoint (edited)")
        if key is not None:
            if not hmac.compare_digest(checkpoint["mac"], checkpoint_mac(key, checkpoint)):
                return None, Problem(CHECKPOINTS, number, checkpoint["seq"],
                                     "checkpoint signature does not match (edited, or another key)")
            if checkpoint.get("prev_mac", "") != prev_mac or (newest and checkpoint["seq"] < newest["seq"]):
                return None, Problem(CHECKPOINTS, number, checkpoint["seq"],
                                     "does not follow the checkpoint before it (dropped or reordered)")
        newest, prev_mac = checkpoint, checkpoint["mac"]
    return newest, None


def verify(directory: Path, checkpoint_key: bytes | None = None, require_signed: bool = False) -> tuple[int, Problem | None]:
    """Walk the chain from genesis, or from the newest checkpoint of a retention run; return
    (entries checked, first problem or None). `require_signed`: a checkpoint counts only with
    `checkpoint_key` (the CLI); the archiver continues from it either way."""
    if require_signed and checkpoint_key is None and (Path(directory) / CHECKPOINTS).exists():
        return 0, Problem(CHECKPOINTS, 1, None, f"retention cut the archive here: set {CHECKPOINT_KEY_ENV} "
                                                "to check the checkpoint it starts from")
    checkpoint, problem = read_checkpoints(directory, checkpoint_key)
    if problem is not None:
        return 0, problem
    prev, expected_seq, count = GENESIS, 1, 0
    if checkpoint is not None:
        prev, expected_seq = checkpoint["hash"], checkpoint["seq"] + 1
    for segment in segments(directory):
        with open(segment, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                try:
                    entry = json.loads(line)
                    seq, source, record = entry["seq"], entry["source"], entry["record"]
                except (ValueError, KeyError, TypeError):
                    return count, Problem(segment.name, number, None, "not a valid archive entry (edited)")
                if checkpoint is not None and isinstance(seq, int) and seq <= checkpoint["seq"]:
                    continue  # before the cut: a segment the retention run had not deleted yet
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

    def __init__(self, directory: Path, segment_entries: int = SEGMENT_ENTRIES, keyring=None,
                 checkpoint_key: bytes | None = None):
        """keyring: a sinks.sealing.KeyRing to seal records that name a user (None: plaintext, as
        archives were before sealing)."""
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_entries = segment_entries
        self.keyring = keyring
        self.prev, self.seq = GENESIS, 0
        self.offsets: dict[int, int] = {}  # partition -> last archived offset
        _, problem = verify(self.dir, checkpoint_key)
        if problem is not None:
            raise SystemExit(f"audit archive {directory} is broken, refusing to append: {problem}")
        checkpoint, _ = read_checkpoints(self.dir, None)
        if checkpoint is not None:
            self.prev, self.seq = checkpoint["hash"], checkpoint["seq"]
            self.offsets = {int(p): o for p, o in checkpoint["offsets"].items()}
        for segment in segments(self.dir):
            with open(segment, encoding="utf-8") as fh:
                for line in fh:
                    entry = json.loads(line)
                    if entry["seq"] <= self.seq:
                        continue
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
        return self.append_all([(partition, offset, record)]) == 1

    def append_all(self, items: list[tuple[int, int, dict]]) -> int:
        """Append (partition, offset, record) items not archived yet, sealed when the archive
        has a keyring (one key store read for the batch); returns how many were appended."""
        fresh, seen = [], dict(self.offsets)
        for partition, offset, record in items:
            if offset > seen.get(partition, -1):
                fresh.append((partition, offset, record))
                seen[partition] = offset
        if self.keyring is not None and fresh:
            sealed = self.keyring.seal_all([record for _, _, record in fresh])
            fresh = [(p, o, r) for (p, o, _), r in zip(fresh, sealed, strict=True)]
        for partition, offset, record in fresh:
            self._write(partition, offset, record)
        return len(fresh)

    def _write(self, partition: int, offset: int, record: dict) -> None:
        seq = self.seq + 1
        source = {"partition": partition, "offset": offset}
        digest = entry_hash(self.prev, seq, source, record)
        fh = self._segment()
        fh.write(canonical({"seq": seq, "source": source, "record": record, "prev": self.prev, "hash": digest}) + "\n")
        self.prev, self.seq = digest, seq
        self.offsets[partition] = offset

    def sync(self) -> None:
        if self.fh is not None:
            self.fh.flush()
            os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.sync()
            self.fh.close()
            self.fh = None


def archive(bootstrap: str, topic: str, directory: Path, stop=lambda: False, idle_exit_s: float | None = None,
            keyring=None) -> int:
    """Consume `topic` (read_committed) into the archive until stop() or idle_exit_s without records."""
    from confluent_kafka import Consumer, TopicPartition

    store = Archive(directory, keyring=keyring)
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
            written += store.append_all([(m.partition(), m.offset(), json.loads(m.value())) for m in batch])
            store.sync()
    finally:
        store.close()
        consumer.close()
    return written


@dataclass
class UserEntries:
    records: list[dict]  # the user's records as the job wrote them, oldest first
    key_state: str  # "key": opened with the user's data key; "erased": a tombstone; "none": no key
    plaintext: int  # how many of them are plaintext entries from before sealing


def user_entries(directory: Path, user_id: str, keyring=None) -> UserEntries:
    """The user's archived records: sealed ones opened with the user's data key (keyring given),
    plaintext ones from before sealing as they are."""
    from sinks.sealing import open_record

    found: list[dict] = []
    key, state, plaintext = None, "none", 0
    if keyring is not None:
        entry = keyring.entry(user_id)
        if entry and "wrapped" in entry:
            key, state = (entry["key_id"], keyring.unwrap(entry)), "key"
        elif entry and "erased_ms" in entry:
            state = "erased"
    plain_needle = '"user_id":' + json.dumps(user_id, ensure_ascii=False)
    key_needle = f'"key_id":"{key[0]}"' if key else None
    for segment in segments(Path(directory)):
        with open(segment, encoding="utf-8") as fh:
            for line in fh:
                if key_needle and key_needle in line:
                    found.append(open_record(json.loads(line)["record"], key[1]))
                elif plain_needle in line:
                    record = json.loads(line).get("record") or {}
                    if record.get("user_id") == user_id:
                        found.append(record)
                        plaintext += 1
    return UserEntries(found, state, plaintext)


def cut(directory: Path, before_ms: int, key: bytes, now_ms: int, keep_last: int = 1) -> dict | None:
    """Delete the oldest segments whose entries are all of events before `before_ms` (never the
    newest `keep_last`, which the archiver appends to), after a signed checkpoint of the last
    entry they hold. None when nothing was old enough. Entries without an event time are kept."""
    directory = Path(directory)
    _, problem = verify(directory, key, require_signed=True)
    if problem is not None:
        raise SystemExit(f"audit archive {directory} is broken, not cutting it: {problem}")
    previous, _ = read_checkpoints(directory, key)
    offsets = {str(p): o for p, o in (previous or {}).get("offsets", {}).items()}
    last, removable = None, []
    for segment in segments(directory)[:-keep_last or None]:
        entries = [json.loads(line) for line in segment.read_text(encoding="utf-8").splitlines()]
        times = [e["record"].get("event_time_ms") for e in entries]
        if not entries or any(not isinstance(t, int) or t >= before_ms for t in times):
            break
        for entry in entries:
            offsets[str(entry["source"]["partition"])] = entry["source"]["offset"]
        last = entries[-1]
        removable.append(segment)
    if last is None:
        return None
    checkpoint = {"seq": last["seq"], "hash": last["hash"], "offsets": offsets, "before_ms": before_ms,
                  "created_ms": now_ms, "removed": [p.name for p in removable],
                  "prev_mac": (previous or {}).get("mac", "")}
    checkpoint["mac"] = checkpoint_mac(key, checkpoint)
    with open(directory / CHECKPOINTS, "a", encoding="utf-8") as fh:
        fh.write(canonical(checkpoint) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    for segment in removable:  # after the checkpoint is on disk: a crash in between leaves extra segments only
        segment.unlink()
    return checkpoint


def keyring_from_args(args, clock=None):
    """A KeyRing from --redis-url or --key-file and PENALTY_AUDIT_MASTER_KEY (PrivacyError if unset)."""
    from sinks.sealing import FileKeyStore, KeyRing, RedisKeyStore, master_key_from_env

    master = master_key_from_env()
    if getattr(args, "key_file", None):
        store = FileKeyStore(Path(args.key_file))
    else:
        import redis

        store = RedisKeyStore(redis.Redis.from_url(args.redis_url, socket_timeout=5, socket_connect_timeout=5))
    return KeyRing(store, master) if clock is None else KeyRing(store, master, clock)


def add_key_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", default="redis://127.0.0.1:16379/0", help="the key store (default)")
    parser.add_argument("--key-file", help="a file key store instead of Redis (tests, trials)")


def checkpoint_key_from_env() -> bytes | None:
    value = os.environ.get(CHECKPOINT_KEY_ENV)
    return value.encode() if value else None


def show(directory: Path, user_id: str, keyring) -> int:
    """Print the user's records (JSON lines) and, on stderr, what could not be read and why."""
    found = user_entries(directory, user_id, keyring)
    for record in found.records:
        print(json.dumps(record, ensure_ascii=False, sort_keys=True))
    if found.key_state == "erased":
        entry = keyring.entry(user_id)
        print(f"ERASED: this user's data key was destroyed at {entry['erased_ms']} (erasure {entry['erasure_id']}); "
              "their sealed entries from before then cannot be read by anyone", file=sys.stderr)
    elif found.key_state == "none":
        print("no data key for this user in the key store: nothing of theirs was sealed", file=sys.stderr)
    elif "erased_ms" in (entry := keyring.entry(user_id)):
        print(f"ERASED before: this user's data key was destroyed at {entry['erased_ms']} (erasure "
              f"{entry['erasure_id']}); shown are only entries sealed since", file=sys.stderr)
    print(f"{len(found.records)} entries shown, {found.plaintext} of them plaintext from before sealing",
          file=sys.stderr)
    return 0


def main(argv=None) -> int:
    from sinks.sealing import PrivacyError

    parser = argparse.ArgumentParser(prog="python -m sinks.audit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("archive")
    p.add_argument("--dir", required=True)
    p.add_argument("--bootstrap-servers", default="127.0.0.1:19092")
    p.add_argument("--topic", default="audit")
    p.add_argument("--idle-exit-s", type=float, default=None, help="exit after this long without records")
    add_key_store_arguments(p)
    p = sub.add_parser("verify")
    p.add_argument("dir")
    p = sub.add_parser("show", help="a user's entries, opened with their data key")
    p.add_argument("user")
    p.add_argument("--dir", required=True)
    add_key_store_arguments(p)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "archive":
            n = archive(args.bootstrap_servers, args.topic, Path(args.dir), idle_exit_s=args.idle_exit_s,
                        keyring=keyring_from_args(args))
            print(f"archived {n} audit records into {args.dir}")
            return 0
        if args.cmd == "show":
            return show(Path(args.dir), args.user, keyring_from_args(args))
    except PrivacyError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    count, problem = verify(Path(args.dir), checkpoint_key_from_env(), require_signed=True)
    if problem is not None:
        print(f"BROKEN after {count} good entries: {problem}")
        return 1
    start = read_checkpoints(Path(args.dir), None)[0]
    print(f"ok: {count} entries, chain intact" + (f" from checkpoint at entry {start['seq']}" if start else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
