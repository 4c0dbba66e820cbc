"""Command line for rule authors.

    python -m rules validate PATH...                       exit 0 ok, 2 with every problem
    python -m rules simulate --rules PATH --alerts FILE    one JSON line per output record
    python -m rules catalog                                the vocabulary of the YAML format
    python -m rules diff --old A --new B --alerts FILE     what-if: exit 0 same, 1 changes, 2 invalid
    python -m rules release-guard --detector D --operator O   a signed release of a tripped guard

The output of `simulate` is a contract: the job's operator runs the same core, and tests compare
the two record for record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from connectors import signing
from rules import loader, simulate
from rules.model import ACTIONS, DECISIONS, PRIORITIES

DEFAULT_RULES = Path(__file__).parent / "policies" / "default.yaml"


def cmd_validate(args) -> int:
    failed = False
    for path in args.paths:
        try:
            policy = loader.load_policy(path)
        except loader.RuleFileError as exc:
            failed = True
            for problem in exc.problems:
                print(problem)
            continue
        except OSError as exc:
            failed = True
            print(f"{path}:0: cannot read the file: {exc.strerror}")
            continue
        rules = sum(len(c.bands) + len(c.ladder) for c in policy.categories)
        types = sum(len(c.types) for c in policy.categories)
        print(f"{path}: ok: rule set {policy.name!r} {policy.version}, {len(policy.categories)} categories, "
              f"{types} violation types, {rules} rules")
    return 2 if failed else 0


def cmd_simulate(args) -> int:
    try:
        policy = loader.load_policy(args.rules)
    except loader.RuleFileError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        # stdin or a file, closed by `with source` below
        source = sys.stdin.buffer if args.alerts == "-" else open(args.alerts, "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"{args.alerts}: cannot read the file: {exc.strerror}", file=sys.stderr)
        return 2
    shadow_policy = None
    if args.shadow_rules:
        try:
            shadow_policy = loader.load_policy(args.shadow_rules)
        except loader.RuleFileError as exc:
            print(exc, file=sys.stderr)
            return 2
    try:
        decision_keys = signing.keys_from_env()  # decision lines count only when signed, as in the job
    except signing.SigningError as exc:
        print(exc, file=sys.stderr)
        return 2
    config = simulate.core_config(args.dedupe_horizon_ms, args.incident_window_ms)
    with source:
        lines = list(source)
    out = sys.stdout
    for line in simulate.run(policy, lines, config, drain=not args.no_drain, order=args.order,
                             max_out_of_orderness_ms=args.max_out_of_orderness_ms, shadow_policy=shadow_policy,
                             decision_keys=decision_keys):
        out.write(line)
        out.write("\n")
    return 0


def cmd_diff(args) -> int:
    from rules import diff

    policies = []
    for path in (args.old, args.new):
        try:
            policies.append(loader.load_policy(path))
        except loader.RuleFileError as exc:
            print(exc, file=sys.stderr)
            return 2
    try:
        with (sys.stdin.buffer if args.alerts == "-" else open(args.alerts, "rb")) as source:
            lines = list(source)
    except OSError as exc:
        print(f"{args.alerts}: cannot read the file: {exc.strerror}", file=sys.stderr)
        return 2
    summary = diff.diff(policies[0], policies[1], lines)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)
    print(diff.report(summary, args.limit))
    print(json.dumps({k: v for k, v in summary.items() if k != "changed"}
                     | {"changed_users": [c["user_id"] for c in summary["changed"]]}, sort_keys=True))
    return 1 if summary["users_changed"] else 0


def cmd_catalog(args) -> int:
    catalog = {
        "file": {k: v for k, v in loader.TOP_KEYS.items()},
        "category": dict(loader.CATEGORY_KEYS),
        "band": dict(loader.BAND_KEYS),
        "unknown_types": dict(loader.UNKNOWN_KEYS),
        "ladder_rung": dict(loader.RUNG_KEYS),
        "detector_guard": dict(loader.GUARD_KEYS),
        "guard_limits": dict(loader.GUARD_LIMIT_KEYS),
        "guard_counts": dict(loader.GUARD_COUNT_KEYS),
        "decisions": {
            "enforce": "add a strike and apply the ladder rung for the active strikes",
            "review": "send to human review (no strike yet); optional immediate actions",
            "dismiss": "no action; audited as dismissed",
        },
        "priorities": list(PRIORITIES),
        "actions": {name: {"parameter": spec.param, "description": spec.description,
                           "allowed_on_review_band": spec.on_review} for name, spec in ACTIONS.items()},
        "durations": "integer + unit: ms, s, m, h, d, w (e.g. 90d, 24h)",
        "alert_fields": ["alert_id", "stream_id", "user_id", "detector_id", "violation_type",
                         "confidence", "event_time_ms", "model_version", "evidence", "schema_version"],
    }
    assert tuple(catalog["decisions"]) == tuple(reversed(DECISIONS))
    if args.json:
        print(json.dumps(catalog, indent=2, sort_keys=True))
        return 0
    for section, entries in catalog.items():
        print(f"{section}:")
        if isinstance(entries, dict):
            for key, value in entries.items():
                if isinstance(value, dict):
                    value = f"{value['description']} (parameter: {value['parameter'] or '-'}" \
                            f"{', also on review bands' if value['allowed_on_review_band'] else ''})"
                print(f"  {key:<18} {value}")
        elif isinstance(entries, list):
            print("  " + ", ".join(entries))
        else:
            print(f"  {entries}")
    return 0


def cmd_release_guard(args) -> int:
    """Sign an operator's release of a tripped detector guard; print it, and write it to the
    decisions topic with --bootstrap-servers."""
    import time

    from connectors.guard_release import make_release

    try:
        keys = signing.signing_keys()
    except signing.SigningError as exc:
        print(f"release-guard: {exc}", file=sys.stderr)
        return 2
    now_ms = args.event_time_ms if args.event_time_ms is not None else int(time.time() * 1000)
    record = signing.sign(make_release(args.detector, args.operator, now_ms), keys)
    value = json.dumps(record, separators=(",", ":"), sort_keys=True)
    if args.bootstrap_servers:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": args.bootstrap_servers, "enable.idempotence": True})
        producer.produce(args.topic, key=args.detector.encode(), value=value.encode())
        if producer.flush(30):
            print(f"release-guard: not delivered to {args.bootstrap_servers}", file=sys.stderr)
            return 1
    print(value)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rules", description="rule author tools")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("validate", help="check rule files; exit 2 with every problem as file:line")
    p.add_argument("paths", nargs="+")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("simulate", help="run the job's decision core over alert v1 JSON lines")
    p.add_argument("--rules", default=str(DEFAULT_RULES))
    p.add_argument("--alerts", required=True, help="alert v1 JSON lines file, or - for stdin")
    p.add_argument("--shadow-rules", help="a second rule set evaluated in shadow, as the job's --shadow-rules")
    p.add_argument("--dedupe-horizon-ms", type=int, default=None)
    p.add_argument("--incident-window-ms", type=int, default=None)
    p.add_argument("--order", choices=("event_time", "input"), default="event_time",
                   help="event_time (default): sorted by event time; input: as the job sees one "
                        "partition, with a watermark and too_late rejections")
    p.add_argument("--max-out-of-orderness-ms", type=int, default=5_000, help="watermark lag for --order input")
    p.add_argument("--no-drain", action="store_true",
                   help="do not fire the pending strike-expiry timers at the end of input")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("diff", help="what-if replay of alerts through two rule sets")
    p.add_argument("--old", required=True)
    p.add_argument("--new", required=True)
    p.add_argument("--alerts", required=True, help="alert v1 JSON lines, or a topic dump (value/payload field)")
    p.add_argument("--limit", type=int, default=20, help="users listed in the report")
    p.add_argument("--json-out", help="write the full summary (every changed user) to this file")
    p.set_defaults(func=cmd_diff)
    p = sub.add_parser("release-guard", help="release a tripped detector guard (a signed record for the "
                                             "decisions topic; keys from PENALTY_DECISION_KEYS)")
    p.add_argument("--detector", required=True, help="the detector_id whose guard to release")
    p.add_argument("--operator", required=True, help="who releases it (recorded in the audit record)")
    p.add_argument("--event-time-ms", type=int, default=None, help="default: now")
    p.add_argument("--bootstrap-servers", help="write it to the decisions topic there (else only print it)")
    p.add_argument("--topic", default="decisions")
    p.set_defaults(func=cmd_release_guard)
    p = sub.add_parser("catalog", help="print the vocabulary of the rule format")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_catalog)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `... | head`
        sys.exit(0)
