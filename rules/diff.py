"""What-if replay: the same alerts through two rule sets, and what changes for whom.

Input lines may be alert v1 JSON, or a dump of the alerts topic where each line is an object
with the record value as a string under "value" or "payload" (kcat -J style).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

from rules.model import Policy
from rules.simulate import run


def alert_lines(lines: Iterable[bytes]) -> list[bytes]:
    out = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        try:
            doc = json.loads(stripped)
        except ValueError:
            out.append(stripped)  # the simulator reports it as a rejection
            continue
        if isinstance(doc, dict) and "alert_id" not in doc:
            value = doc.get("value", doc.get("payload"))
            if isinstance(value, str):
                out.append(value.encode("utf-8"))
                continue
        out.append(stripped)
    return out


def outcomes(policy: Policy, lines: list[bytes]) -> tuple[dict[str, list[dict]], Counter]:
    """Per user, the enforcement actions in event-time order; and totals per action."""
    per_user: dict[str, list[dict]] = {}
    totals: Counter = Counter()
    for line in run(policy, lines):
        out = json.loads(line)
        if out["kind"] != "enforcement":
            continue
        record = out["record"]
        totals[record["action"]] += 1
        per_user.setdefault(record["user_id"], []).append(
            {"action": record["action"], "until_ms": record["until_ms"], "rule_id": record["rule_id"],
             "event_time_ms": record["event_time_ms"]})
    return per_user, totals


def _effect(actions: list[dict]) -> list[tuple]:
    # What happens to the streamer; rule ids may be renamed without changing anything.
    return [(a["action"], a["until_ms"], a["event_time_ms"]) for a in actions]


def diff(old: Policy, new: Policy, lines: Iterable[bytes]) -> dict:
    alerts = alert_lines(lines)
    old_users, old_totals = outcomes(old, alerts)
    new_users, new_totals = outcomes(new, alerts)
    changed = []
    for user in sorted(set(old_users) | set(new_users)):
        before, after = old_users.get(user, []), new_users.get(user, [])
        if _effect(before) != _effect(after):
            changed.append({"user_id": user, "before": before, "after": after})
    actions = sorted(set(old_totals) | set(new_totals))
    return {
        "old": {"rule_set": old.name, "version": old.version},
        "new": {"rule_set": new.name, "version": new.version},
        "alerts": len(alerts),
        "totals": {a: {"old": old_totals[a], "new": new_totals[a]} for a in actions},
        "users_changed": len(changed),
        "changed": changed,
    }


def describe(actions: list[dict]) -> str:
    if not actions:
        return "nothing"
    return ", ".join(f"{a['action']}({a['rule_id']})" for a in actions)


def report(summary: dict, limit: int) -> str:
    lines = [(f"{summary['alerts']} alerts; old {summary['old']['rule_set']} {summary['old']['version']} "
              f"-> new {summary['new']['rule_set']} {summary['new']['version']}"), "",
             f"{'action':<12} {'old':>8} {'new':>8} {'change':>8}"]
    for action, n in summary["totals"].items():
        lines.append(f"{action:<12} {n['old']:>8} {n['new']:>8} {n['new'] - n['old']:>+8}")
    lines.append("")
    lines.append(f"{summary['users_changed']} users with a different outcome"
                 + (f" (first {limit}):" if summary["users_changed"] > limit else ":" if summary["changed"] else ""))
    for change in summary["changed"][:limit]:
        before, after = change["before"], change["after"]
        same = 0  # show the outcome from where it starts to differ
        while same < min(len(before), len(after)) and _effect(before[same:same + 1]) == _effect(after[same:same + 1]):
            same += 1
        prefix = f"after {same} same action(s): " if same else ""
        lines.append(f"  {change['user_id']}: {prefix}{describe(before[same:])} -> {describe(after[same:])}")
    return "\n".join(lines)
