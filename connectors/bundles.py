"""Bundles of raw records, as the JVM's ShardBundler (connectors/java) packs them: the keyed Python
operator is entered once per bundle, not once per record. Pure Python, no pyflink.

Layout (big-endian): int count, then per record: byte topic index (-1: none of the job's input
topics), int partition, long offset, long timestamp_ms, int size (original payload size, -1 for a
null value), int length + UTF-8 user id (as the JVM key extractor read it, "" if none), int
length + payload.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

# Topic indexes beyond the job's input topics, written by the detector guard stage
# (jobs/guard_operator.py) into the bundles it passes on: an alert its detector's guard holds back
# from automatic penalties, one record carrying the guard's own outputs, and a record of the
# decisions topic the guard stage dealt with (an operator's guard release: not a decision).
GUARDED_ALERT, GUARD_OUTPUTS, GUARD_HANDLED = 2, 3, 4

_COUNT = struct.Struct(">i")
_HEADER = struct.Struct(">biqqii")  # topic, partition, offset, timestamp, size, user length
_LENGTH = struct.Struct(">i")


class BundledRecord(NamedTuple):
    topic_index: int
    partition: int
    offset: int
    timestamp_ms: int
    size: int
    user_id: str
    payload: bytes


class BundleError(ValueError):
    """A bundle that does not follow the layout: a bug between the JVM and Python, never data."""


def records(bundle: bytes) -> Iterator[BundledRecord]:
    """The records of one bundle, in the order they arrived."""
    end, pos = len(bundle), 4
    header, length = _HEADER.unpack_from, _LENGTH.unpack_from
    try:
        (count,) = _COUNT.unpack_from(bundle, 0)
        for _ in range(count):
            topic, partition, offset, timestamp_ms, size, user_len = header(bundle, pos)
            pos += 29
            user = bundle[pos:pos + user_len].decode("utf-8")
            (payload_len,) = length(bundle, pos + user_len)
            pos += user_len + 4
            if pos + payload_len > end or user_len < 0 or payload_len < 0:
                raise BundleError(f"bundle of {end} bytes breaks the layout at byte {pos}: a length past its end")
            yield BundledRecord(topic, partition, offset, timestamp_ms, size, user, bundle[pos:pos + payload_len])
            pos += payload_len
    except (struct.error, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle of {end} bytes breaks the layout at byte {pos}: {exc}") from exc
    if pos != end:
        raise BundleError(f"bundle of {end} bytes holds {count} records ending at byte {pos}")


def positioned(bundle: bytes) -> Iterator[tuple[int, BundledRecord]]:
    """(byte position of the record's topic index, record) for each record of a valid bundle."""
    pos = 4
    for record in records(bundle):
        yield pos, record
        pos += 29 + len(record.user_id.encode("utf-8")) + 4 + len(record.payload)


def rewritten(bundle: bytes, guarded: list[int], extra: BundledRecord | None, handled: tuple[int, ...] = ()) -> bytes:
    """The bundle with the topic index at each of `guarded` (positions) set to GUARDED_ALERT, at
    each of `handled` to GUARD_HANDLED, and `extra` appended."""
    if not guarded and extra is None and not handled:
        return bundle
    out = bytearray(bundle)
    for pos in guarded:
        out[pos] = GUARDED_ALERT
    for pos in handled:
        out[pos] = GUARD_HANDLED
    if extra is not None:
        _COUNT.pack_into(out, 0, _COUNT.unpack_from(bundle, 0)[0] + 1)
        out += pack([extra])[4:]
    return bytes(out)


def pack(items: Iterable[BundledRecord]) -> bytes:
    """The bundle the JVM would send for these records (tests and the pure benchmark)."""
    parts, count = [b""], 0
    for r in items:
        user = r.user_id.encode("utf-8")
        parts.append(_HEADER.pack(r.topic_index, r.partition, r.offset, r.timestamp_ms, r.size, len(user)))
        parts += (user, _LENGTH.pack(len(r.payload)), r.payload)
        count += 1
    parts[0] = _COUNT.pack(count)
    return b"".join(parts)
