"""Realistic demo/test/benchmark traffic for the alerts topic.

A seeded generator of alert v1 payloads: many users with a Zipf-like skew of repeat offenders,
several detectors per violation type, retries of the same alert (same alert_id), several
detectors reporting one moment (same stream + type, different alert ids), mixed confidences
across every band, and a share of malformed records of every kind the DLQ knows.

`python -m devtools.generator --count N --out FILE.jsonl` writes lines (for `rules simulate`);
`produce()` writes to Kafka (key = stream_id, as detectors do).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

TYPES = {
    # type: (weight, detectors)
    "hate_speech": (14, ("text-hate-v3", "audio-hate-v2")),
    "nudity": (14, ("vision-nsfw-v5", "vision-nsfw-v4")),
    "harassment": (10, ("text-harass-v2",)),
    "violence": (8, ("vision-violence-v1",)),
    "self_harm": (3, ("vision-selfharm-v1",)),
    "copyright": (20, ("audio-fingerprint-v7", "video-fingerprint-v2")),
    "spam": (20, ("chat-spam-v4",)),
    "misleading_metadata": (6, ("meta-check-v1",)),
    "csam": (0.5, ("vision-csam-v2",)),
    "terrorism": (0.5, ("vision-extremism-v1", "audio-extremism-v1")),
    "violent_extremism": (0.5, ("text-extremism-v1",)),
    "gambling_promo": (1, ("chat-gambling-v0",)),  # not in any category: human review
}
MALFORMED = (
    b"",
    b"not json at all",
    b"\xff\xfe\x00garbage",
    b'{"alert_id": "x"}',
    (b'{"alert_id":"m1","stream_id":"s","user_id":"u","detector_id":"d","violation_type":"spam",'
     b'"confidence":1.7,"event_time_ms":1}'),
    b'{"schema_version": 2, "alert_id": "m2"}',
    b"[1, 2, 3]",
)


@dataclass(frozen=True)
class Mix:
    retry: float = 0.10  # share of records that are a retry of an earlier alert
    multi_detector: float = 0.10  # share of records that are a second detector on one moment
    malformed: float = 0.02
    oversized: float = 0.001


def _confidence(rng: random.Random) -> float:
    # Every band: most alerts are clear, a real share are borderline, some are noise.
    r = rng.random()
    if r < 0.55:
        return round(rng.uniform(0.90, 1.0), 4)
    if r < 0.80:
        return round(rng.uniform(0.60, 0.90), 4)
    return round(rng.uniform(0.05, 0.60), 4)


class AlertGenerator:
    def __init__(self, seed: int = 7, users: int = 5000, zipf_s: float = 1.2, start_ms: int | None = None,
                 step_ms: int = 50, mix: Mix = Mix(), streams_per_user: int = 3):
        self.rng = random.Random(seed)
        # Zipf-like weights: user rank r gets 1 / r^s, so a few users offend repeatedly.
        self.users = [f"user-{i:06d}" for i in range(users)]
        self.user_weights = list(itertools.accumulate(1.0 / (rank + 1) ** zipf_s for rank in range(users)))
        self.type_names = list(TYPES)
        self.type_weights = [TYPES[t][0] for t in self.type_names]
        self.now_ms = start_ms if start_ms is not None else int(time.time() * 1000)
        self.step_ms = step_ms
        self.mix = mix
        self.streams_per_user = streams_per_user
        self.sent: list[dict] = []  # recent alerts, for retries and multi-detector reports
        self.counter = 0

    def _fresh(self) -> dict:
        rng = self.rng
        user = rng.choices(self.users, cum_weights=self.user_weights)[0]
        vtype = rng.choices(self.type_names, self.type_weights)[0]
        detector = rng.choice(TYPES[vtype][1])
        self.counter += 1
        return {
            "alert_id": f"{detector}-{self.counter:09d}",
            "stream_id": f"live-{user[5:]}-{rng.randrange(self.streams_per_user)}",
            "user_id": user,
            "detector_id": detector,
            "violation_type": vtype,
            "confidence": _confidence(rng),
            "event_time_ms": self.now_ms - rng.randrange(0, 2000),
            "model_version": detector.rsplit("-", 1)[-1],
            "evidence": {"clip_start_ms": rng.randrange(0, 3_600_000), "clip_len_ms": 5000},
        }

    def next_payload(self) -> bytes:
        """One record value; the clock advances by step_ms per record."""
        rng = self.rng
        self.now_ms += self.step_ms
        r = rng.random()
        mix = self.mix
        if r < mix.malformed:
            return rng.choice(MALFORMED)
        if r < mix.malformed + mix.oversized:
            return json.dumps({"alert_id": "big", "pad": "x" * 70_000}).encode()
        r -= mix.malformed + mix.oversized
        if self.sent and r < mix.retry:
            doc = dict(rng.choice(self.sent))  # a retry: byte-identical alert again
        elif self.sent and r < mix.retry + mix.multi_detector:
            base = rng.choice(self.sent)
            self.counter += 1
            detector = rng.choice(TYPES[base["violation_type"]][1])
            doc = dict(base, alert_id=f"{detector}-{self.counter:09d}", detector_id=detector,
                       confidence=_confidence(rng),
                       event_time_ms=base["event_time_ms"] + rng.randrange(0, 20_000))
        else:
            doc = self._fresh()
            self.sent.append(doc)
            if len(self.sent) > 500:
                self.sent.pop(0)
        return json.dumps(doc, separators=(",", ":")).encode()

    def payloads(self, count: int) -> Iterator[bytes]:
        for _ in range(count):
            yield self.next_payload()


def key_of(payload: bytes) -> bytes | None:
    try:
        return json.loads(payload)["stream_id"].encode()
    except Exception:  # noqa: BLE001 - malformed records have no key
        return None


def produce(bootstrap: str, topic: str, payloads, rate_per_s: float | None = None,
            stop=lambda: False) -> int:
    """Write payloads to Kafka, optionally paced; returns how many were written."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True,
                         "compression.type": "lz4"})
    started = time.monotonic()
    sent = 0
    for payload in payloads:
        if stop():
            break
        while True:
            try:
                producer.produce(topic, value=payload, key=key_of(payload))
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        producer.poll(0)
        if rate_per_s:
            ahead_s = sent / rate_per_s - (time.monotonic() - started)
            if ahead_s > 0:
                time.sleep(ahead_s)
    remaining = producer.flush(30)
    if remaining:
        raise RuntimeError(f"{remaining} alerts were not delivered to {bootstrap}")
    return sent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.generator", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--start-ms", type=int, default=None, help="event time of the first alert (default now)")
    parser.add_argument("--out", default="-", help="JSON lines file (default stdout)")
    parser.add_argument("--bootstrap", help="produce to this broker instead of writing lines")
    parser.add_argument("--topic", default="alerts")
    parser.add_argument("--rate", type=float, default=None, help="alerts per second when producing")
    args = parser.parse_args(argv)
    gen = AlertGenerator(seed=args.seed, users=args.users, start_ms=args.start_ms)
    if args.bootstrap:
        print(produce(args.bootstrap, args.topic, gen.payloads(args.count), args.rate), "alerts produced")
        return 0
    out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115 - closed by the with below
    with out:
        for payload in gen.payloads(args.count):
            out.write(payload.replace(b"\n", b" ") + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
