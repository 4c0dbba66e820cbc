"""Checks of the sections inside a category of a policy file: rule ids, actions, confidence bands and
the strike ladder (rules/loader.py reads the file and the categories, and collects the problems)."""

from __future__ import annotations

import difflib
import itertools
from typing import Any

import yaml

from rules.model import (
    ACTIONS,
    DECISION_RANK,
    DECISIONS,
    PRIORITIES,
    Action,
    Band,
    GuardConfig,
    GuardLimits,
    Rung,
    parse_duration,
)

# Allowed keys per section: key -> short description (the catalog prints these).
BAND_KEYS = {
    "id": "rule id recorded on every decision (required, unique)",
    "min_confidence": "lowest confidence in this band, 0.0-1.0 (required)",
    "decision": "enforce | review | dismiss (required)",
    "priority": "review priority: " + " | ".join(PRIORITIES),
    "actions": "actions applied at once on a review band (stop_stream only)",
}
UNKNOWN_KEYS = {k: v for k, v in BAND_KEYS.items() if k in ("id", "decision", "priority")}
RUNG_KEYS = {
    "id": "rule id recorded on every decision (required, unique)",
    "strikes": "active strikes this rung covers: 2, 1-2 or 4+ (required)",
    "actions": "actions, e.g. [stop_stream, {suspend: 24h}] (required)",
}



def construct_scalar(node: yaml.Node) -> Any:
    """The value of a scalar node, or None when the safe loader cannot build one (`!!int abc`, a
    plain `=`, a date like 2026-02-30): the caller then reports the key's problem as for any
    wrong value, instead of the loader's traceback."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        return None
    finally:
        loader.dispose()


def unique_rule_id(checker, node, ids) -> str | None:
    rule_id = checker.string(node, "id")
    if rule_id is None:
        return None
    if rule_id == GUARD_RULE_ID:
        checker.add(node, f"rule id '{rule_id}' is reserved", "the detector guard's reviews carry it; pick another id")
        return None
    if rule_id in ids:
        checker.add(node, f"rule id '{rule_id}' is used twice (first at line {ids[rule_id].start_mark.line + 1})",
                    "every band and rung needs its own id")
        return None
    ids[rule_id] = node
    return rule_id


def check_actions(checker, node, what, on_review: bool) -> tuple[Action, ...] | None:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        checker.add(node, f"{what}: actions must be a non-empty list", "e.g. [stop_stream, {suspend: 24h}]")
        return None
    out: list[Action] = []
    ok = True
    for item in node.value:
        if isinstance(item, yaml.ScalarNode):
            kind, param_node = item.value, None
        elif isinstance(item, yaml.MappingNode) and len(item.value) == 1:
            kind, param_node = item.value[0][0].value, item.value[0][1]
        else:
            checker.add(item, f"{what}: an action must be a name or {{name: parameter}}")
            ok = False
            continue
        spec = ACTIONS.get(kind)
        if spec is None:
            close = difflib.get_close_matches(str(kind), list(ACTIONS), n=1)
            checker.add(item, f"{what}: unknown action '{kind}'",
                        f"did you mean '{close[0]}'?" if close else "actions: " + ", ".join(ACTIONS))
            ok = False
            continue
        if on_review and not spec.on_review:
            checker.add(item, f"{what}: action '{kind}' is not allowed on a review band",
                        "only stop_stream may act before a moderator decides")
            ok = False
            continue
        if spec.param is None:
            if param_node is not None:
                checker.add(item, f"{what}: action '{kind}' takes no parameter")
                ok = False
                continue
            out.append(Action(kind))
        else:
            duration = parse_duration(construct_scalar(param_node)) if isinstance(param_node, yaml.ScalarNode) else None
            if duration is None:
                checker.add(item, f"{what}: action '{kind}' needs a {spec.param}", f"write {{{kind}: 24h}}")
                ok = False
                continue
            out.append(Action(kind, duration))
    return tuple(out) if ok else None


def check_band(checker, node, what, ids, allowed=BAND_KEYS) -> Band | None:
    entries = checker.mapping(node, what)
    if entries is None:
        return None
    checker.known_keys(entries, allowed, what)
    required = ("id", "decision") if allowed is UNKNOWN_KEYS else ("id", "min_confidence", "decision")
    ok = checker.required(entries, required, node, what)
    rule_id = unique_rule_id(checker, entries["id"][1], ids) if "id" in entries else None
    decision = None
    if "decision" in entries:
        dnode = entries["decision"][1]
        decision = dnode.value if isinstance(dnode, yaml.ScalarNode) else None
        if decision not in DECISIONS:
            checker.add(dnode, f"{what}: unknown decision '{decision}'", "use " + " | ".join(DECISIONS))
            decision = None
    min_conf = 0.0
    if "min_confidence" in entries:
        mnode = entries["min_confidence"][1]
        value = construct_scalar(mnode) if isinstance(mnode, yaml.ScalarNode) else None
        if type(value) not in (int, float) or not 0.0 <= value <= 1.0:
            checker.add(mnode, f"{what}: min_confidence must be a number from 0.0 to 1.0")
            ok = False
        else:
            min_conf = float(value)
    priority = "normal"
    if "priority" in entries:
        pnode = entries["priority"][1]
        priority = pnode.value if isinstance(pnode, yaml.ScalarNode) else None
        if priority not in PRIORITIES:
            checker.add(pnode, f"{what}: unknown priority '{priority}'", "use " + " | ".join(PRIORITIES))
            ok = False
        elif decision is not None and decision != "review":
            checker.add(pnode, f"{what}: priority only applies to review bands")
            ok = False
    actions: tuple[Action, ...] = ()
    if "actions" in entries:
        anode = entries["actions"][1]
        if decision != "review":
            checker.add(anode, f"{what}: only review bands take actions",
                        "enforce bands act through the ladder; dismiss does nothing")
            ok = False
        else:
            got = check_actions(checker, anode, what, on_review=True)
            ok = ok and got is not None
            actions = got or ()
    if not ok or rule_id is None or decision is None:
        return None
    return Band(rule_id, min_conf, decision, priority, actions)


def check_bands(checker, node, what, ids) -> tuple[bool, list[Band]]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        checker.add(node, f"{what}: bands must be a non-empty list")
        return False, []
    bands: list[tuple[Band, yaml.Node]] = []
    ok = True
    for index, item in enumerate(node.value):
        band = check_band(checker, item, f"{what} band {index + 1}", ids)
        if band is None:
            ok = False
        else:
            bands.append((band, item))
    for (prev, _), (band, bnode) in itertools.pairwise(bands):
        if band.min_confidence == prev.min_confidence:
            checker.add(bnode, f"{what}: bands '{prev.id}' and '{band.id}' overlap (both start at {band.min_confidence})",
                        "give each band its own min_confidence")
            ok = False
        elif band.min_confidence > prev.min_confidence:
            checker.add(bnode, f"{what}: band '{band.id}' ({band.min_confidence}) is listed after a lower band "
                        f"'{prev.id}' ({prev.min_confidence})", "list bands from the highest min_confidence down")
            ok = False
        elif DECISION_RANK[band.decision] > DECISION_RANK[prev.decision]:
            checker.add(bnode, f"{what}: bands are not monotonic: '{band.id}' ({band.decision}) is below "
                        f"'{prev.id}' ({prev.decision})", "a lower confidence may not lead to a stronger decision")
            ok = False
    if bands and bands[-1][0].min_confidence != 0.0:
        last, lnode = bands[-1]
        checker.add(lnode, f"{what}: confidences below {last.min_confidence} match no band",
                    "end with a band at min_confidence: 0.0 (usually dismiss)")
        ok = False
    return ok, [b for b, _ in bands]


def parse_strikes(value: Any) -> tuple[int, int | None] | None:
    if type(value) is int and value >= 1:
        return value, value
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("+") and text[:-1].isdigit() and int(text[:-1]) >= 1:
            return int(text[:-1]), None
        low, sep, high = text.partition("-")
        if sep and low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high):
            return int(low), int(high)
        if text.isdigit() and int(text) >= 1:
            return int(text), int(text)
    return None


def check_ladder(checker, node, what, ids) -> tuple[bool, list[Rung]]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        checker.add(node, f"{what}: ladder must be a non-empty list of rungs")
        return False, []
    rungs: list[tuple[Rung, yaml.Node]] = []
    ok = True
    for index, item in enumerate(node.value):
        rwhat = f"{what} ladder rung {index + 1}"
        entries = checker.mapping(item, rwhat)
        if entries is None:
            ok = False
            continue
        checker.known_keys(entries, RUNG_KEYS, rwhat)
        if not checker.required(entries, ("id", "strikes", "actions"), item, rwhat):
            ok = False
            continue
        rule_id = unique_rule_id(checker, entries["id"][1], ids)
        snode = entries["strikes"][1]
        span = parse_strikes(construct_scalar(snode)) if isinstance(snode, yaml.ScalarNode) else None
        if span is None:
            checker.add(snode, f"{rwhat}: strikes must be a count like 2, a range like 1-2, or open like 4+")
        actions = check_actions(checker, entries["actions"][1], rwhat, on_review=False)
        if rule_id is None or span is None or actions is None:
            ok = False
        if span is not None:  # still check coverage, so every gap is reported in one pass
            rungs.append((Rung(rule_id or "?", span[0], span[1], actions or ()), item))
    expected = 1
    for index, (rung, rnode) in enumerate(rungs):
        if expected is None:
            checker.add(rnode, f"{what}: rung '{rung.id}' comes after an open-ended rung and is never reached")
            ok = False
            continue
        if rung.min_strikes < expected:
            checker.add(rnode, f"{what}: rung '{rung.id}' overlaps the rung before it (strike {rung.min_strikes})",
                        "each strike count belongs to exactly one rung")
            ok = False
        elif rung.min_strikes > expected:
            checker.add(rnode, f"{what}: no rung covers {expected} strike(s) (gap before '{rung.id}')",
                        "rungs must cover 1, 2, 3, ... without gaps")
            ok = False
        expected = None if rung.max_strikes is None else rung.max_strikes + 1
    if rungs and expected is not None:
        last, lnode = rungs[-1]
        checker.add(lnode, f"{what}: the ladder has no end: nothing covers {expected}+ strikes",
                    f"make the last rung open-ended, e.g. strikes: {last.min_strikes}+")
        ok = False
    return ok, [r for r, _ in rungs]


# The detector guard (rules/guard.py): top-level key `detector_guard`.
GUARD_KEYS = {
    "window": "sliding event-time window the guard counts a detector's alerts in, whole minutes, e.g. 10m "
              "(required)",
    "baseline": "history before the window a detector's average per window comes from, whole minutes, "
                "e.g. 24h (required)",
    "cool_down": "event time a tripped detector must stay under its limits to be released, e.g. 30m (required)",
    "default": "limits of every detector not listed under detectors (required)",
    "detectors": "map of detector id -> limits; keys left out are taken from default",
}
GUARD_LIMIT_KEYS = {
    "ratio": "a window may hold up to ratio x the detector's average per window over the baseline "
             "(number >= 1)",
    "alerts": "{floor, ceiling} for every alert of the detector in the window",
    "enforcements": "{floor, ceiling} for its enforce-band alerts (automatic penalties) in the window",
}
GUARD_COUNT_KEYS = {
    "floor": "the limit is never below this, whatever the baseline (whole number >= 0)",
    "ceiling": "the limit is never above this; the only limit before a full baseline (whole number >= 1)",
}
GUARD_RULE_ID = "detector_guard"  # reserved: the rule id of reviews a tripped guard sends


def _minutes(checker, node, what) -> int | None:
    value = parse_duration(construct_scalar(node)) if isinstance(node, yaml.ScalarNode) else None
    if value is None or value % 60_000:
        checker.add(node, f"{what} must be a whole number of minutes", "like 10m, 24h, 1d")
        return None
    return value


def _guard_counts(checker, node, what, base: tuple[int, int] | None, required: bool) -> tuple[int, int] | None:
    entries = checker.mapping(node, what)
    if entries is None:
        return None
    checker.known_keys(entries, GUARD_COUNT_KEYS, what)
    ok = not required or checker.required(entries, ("floor", "ceiling"), node, what)
    got = list(base or (0, 0))
    for index, key in enumerate(("floor", "ceiling")):
        if key in entries:
            vnode = entries[key][1]
            value = construct_scalar(vnode) if isinstance(vnode, yaml.ScalarNode) else None
            if type(value) is not int or value < index:
                checker.add(vnode, f"{what}: {key} must be a whole number >= {index}")
                ok = False
            else:
                got[index] = value
    if ok and (base is not None or len(entries) == 2) and got[0] > got[1]:
        checker.add(node, f"{what}: floor {got[0]} is above ceiling {got[1]}", "the floor may be at most the ceiling")
        ok = False
    return (got[0], got[1]) if ok and (base is not None or required) else None


def _guard_limits(checker, node, what, base: GuardLimits | None, required: bool) -> GuardLimits | None:
    """Limits of `detector_guard default` (required: every key) or of one detector (the keys it
    gives replace the default's; base None when the default itself is broken: checked, not built)."""
    entries = checker.mapping(node, what)
    if entries is None:
        return None
    checker.known_keys(entries, GUARD_LIMIT_KEYS, what)
    ok = not required or checker.required(entries, tuple(GUARD_LIMIT_KEYS), node, what)
    ratio = base.ratio if base else 0.0
    if "ratio" in entries:
        rnode = entries["ratio"][1]
        value = construct_scalar(rnode) if isinstance(rnode, yaml.ScalarNode) else None
        if type(value) not in (int, float) or not 1 <= value <= 1_000_000:
            checker.add(rnode, f"{what}: ratio must be a number from 1 to 1000000", "e.g. ratio: 5")
            ok = False
        else:
            ratio = float(value)
    counts = {}
    for key in ("alerts", "enforcements"):
        previous = None if base is None else (getattr(base, f"{key}_floor"), getattr(base, f"{key}_ceiling"))
        if key in entries:
            counts[key] = _guard_counts(checker, entries[key][1], f"{what} {key}", previous, required)
            ok = ok and counts[key] is not None
        else:
            counts[key] = previous
    if not ok or base is None and not required:
        return None
    return GuardLimits(ratio, *counts["alerts"], *counts["enforcements"])


def check_guard(checker, node) -> tuple[bool, GuardConfig | None]:
    """The `detector_guard` section: (ok, its config)."""
    what = "detector_guard"
    entries = checker.mapping(node, what)
    if entries is None:
        return False, None
    checker.known_keys(entries, GUARD_KEYS, what)
    ok = checker.required(entries, ("window", "baseline", "cool_down", "default"), node, what)
    durations = {}
    for key in ("window", "baseline", "cool_down"):
        if key in entries:
            durations[key] = _minutes(checker, entries[key][1], f"{what}: {key}")
            ok = ok and durations[key] is not None
    default = None
    if "default" in entries:
        default = _guard_limits(checker, entries["default"][1], f"{what} default", None, required=True)
        ok = ok and default is not None
    detectors = []
    if "detectors" in entries:
        dnodes = checker.mapping(entries["detectors"][1], f"{what} detectors")
        if dnodes is None:
            ok = False
        for name, (_, dnode) in (dnodes or {}).items():
            limits = _guard_limits(checker, dnode, f"{what} detector '{name}'", default, required=False)
            if limits is None:
                ok = False
            else:
                detectors.append((name, limits))
    if not ok or default is None:
        return False, None
    return True, GuardConfig(durations["window"], durations["baseline"], durations["cool_down"], default,
                             tuple(detectors))
