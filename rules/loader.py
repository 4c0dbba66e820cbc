"""Load and validate a policy YAML file.

Every problem is collected with `file:line` and a hint and raised once as RuleFileError, so a
rule author fixes a file in one pass. Nothing is checked lazily during evaluation: a Policy that
loads is complete. YAML is read with the safe loader only.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import os
from dataclasses import dataclass
from typing import Any

import yaml

from rules.model import (
    ACTIONS,
    DECISION_RANK,
    DECISIONS,
    PRIORITIES,
    Action,
    Band,
    Category,
    Policy,
    Rung,
    parse_duration,
)


class RuleError(Exception):
    """Base class of every error of the rules package."""


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str
    hint: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" + (f" (hint: {self.hint})" if self.hint else "")


class RuleFileError(RuleError):
    def __init__(self, file: str, problems: list[Problem]):
        self.file = file
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} {noun} in {file}:\n{lines}")


# Allowed keys per section: key -> short description (the catalog prints these).
TOP_KEYS = {
    "rule_set": "name of this rule set (string, required)",
    "description": "free text",
    "categories": "map of category name -> category (required)",
    "unknown_types": "band used for violation types no category lists: decision review or dismiss",
}
CATEGORY_KEYS = {
    "types": "violation types in this category (list of strings, required)",
    "strike_expiry": "how long a strike stays active after the violation's event time, e.g. 90d",
    "points": "strikes one violation adds (integer >= 1, default 1)",
    "bands": "confidence bands, highest min_confidence first, the last at 0.0 (required)",
    "ladder": "rungs by active strike count, the last open-ended like 4+ (required with enforce)",
    "counts_strikes_of": "categories whose active strikes this ladder counts (default: itself)",
}
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


def rule_set_version(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:12]


class _Checker:
    """Walks the composed YAML (for line numbers) next to the constructed data."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def add(self, node: yaml.Node | None, message: str, hint: str = "") -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(Problem(self.file, line, message, hint))

    def mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        if not isinstance(node, yaml.MappingNode):
            self.add(node, f"{what} must be a mapping of keys to values")
            return None
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                self.add(key_node, f"{what} has a key that is not a plain string")
                continue
            if key in out:
                self.add(key_node, f"duplicate key '{key}' in {what}", "YAML keeps only the last one; remove one")
            out[key] = (key_node, value_node)
        return out

    def known_keys(self, entries: dict, allowed: dict, what: str) -> None:
        for key, (key_node, _) in entries.items():
            if key not in allowed:
                close = difflib.get_close_matches(key, list(allowed), n=1)
                hint = f"did you mean '{close[0]}'?" if close else "allowed: " + ", ".join(allowed)
                self.add(key_node, f"unknown key '{key}' in {what}", hint)

    def required(self, entries: dict, keys: tuple[str, ...], node: yaml.Node, what: str) -> bool:
        ok = True
        for key in keys:
            if key not in entries:
                self.add(node, f"{what} is missing '{key}'")
                ok = False
        return ok

    def string(self, node: yaml.Node, what: str) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str" and node.value:
            return node.value
        self.add(node, f"{what} must be a non-empty string")
        return None


def _construct(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Load and validate one policy file; raise RuleFileError listing every problem."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise RuleFileError(path, [Problem(path, 1, f"cannot read rule file: {exc.strerror}")]) from exc
    return parse_policy(data, path)


def parse_policy(data: bytes, file: str = "<rules>") -> Policy:
    policy, problems = check_policy(data, file)
    if problems or policy is None:
        raise RuleFileError(file, problems)
    return policy


def check_policy(data: bytes, file: str = "<rules>") -> tuple[Policy | None, list[Problem]]:
    """Validate; return (policy or None, problems). Never raises on content."""
    checker = _Checker(file)
    try:
        root = yaml.compose(data.decode("utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError:
        return None, [Problem(file, 1, "rule file is not UTF-8 text")]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        return None, [Problem(file, line, f"YAML syntax error: {exc.problem}", "check indentation and quoting")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, 1, f"YAML error: {exc}")]
    if root is None:
        return None, [Problem(file, 1, "rule file is empty", "start from rules/policies/default.yaml")]
    top = checker.mapping(root, "the rule file")
    if top is None:
        return None, checker.problems
    checker.known_keys(top, TOP_KEYS, "the rule file")
    checker.required(top, ("rule_set", "categories", "unknown_types"), root, "the rule file")

    name = checker.string(top["rule_set"][1], "rule_set") if "rule_set" in top else None
    description = ""
    if "description" in top:
        description = checker.string(top["description"][1], "description") or ""

    ids: dict[str, yaml.Node] = {}
    categories: list[Category] = []
    type_owner: dict[str, str] = {}
    reference_nodes: list[tuple[str, str, yaml.Node]] = []
    cats = None
    if "categories" in top:
        cats = checker.mapping(top["categories"][1], "categories")
        for cat_name, (cat_key, cat_node) in (cats or {}).items():
            category = _category(checker, cat_name, cat_key, cat_node, ids, type_owner, reference_nodes)
            if category is not None:
                categories.append(category)
        if cats is not None and not cats:
            checker.add(top["categories"][1], "categories is empty", "define at least one category")
    known = set(cats or ())
    for cat_name, ref, node in reference_nodes:
        if ref not in known:
            close = difflib.get_close_matches(ref, sorted(known), n=1)
            checker.add(node, f"category '{cat_name}' counts strikes of undefined category '{ref}'",
                        f"did you mean '{close[0]}'?" if close else "defined: " + ", ".join(sorted(known)))

    unknown = None
    if "unknown_types" in top:
        unknown = _band(checker, top["unknown_types"][1], "unknown_types", ids, UNKNOWN_KEYS)
        if unknown is not None and unknown.decision == "enforce":
            checker.add(top["unknown_types"][1], "unknown_types may not enforce",
                        "an unknown violation type never gets an automatic penalty: use review")
            unknown = None

    problems = sorted(checker.problems, key=lambda p: p.line)
    if problems or name is None or unknown is None:
        return None, problems
    policy = Policy(
        name=name,
        version=rule_set_version(data),
        source=file,
        categories=tuple(categories),
        unknown_types=unknown,
        description=description,
    )
    return policy, []


def _category(checker, name, key_node, node, ids, type_owner, reference_nodes) -> Category | None:
    what = f"category '{name}'"
    entries = checker.mapping(node, what)
    if entries is None:
        return None
    checker.known_keys(entries, CATEGORY_KEYS, what)
    ok = checker.required(entries, ("types", "strike_expiry", "bands"), key_node, what)

    types: list[str] = []
    if "types" in entries:
        tnode = entries["types"][1]
        if not isinstance(tnode, yaml.SequenceNode) or not tnode.value:
            checker.add(tnode, f"{what}: types must be a non-empty list of violation types")
            ok = False
        else:
            for item in tnode.value:
                t = checker.string(item, f"{what}: a type")
                if t is None:
                    ok = False
                elif t in type_owner:
                    checker.add(item, f"violation type '{t}' is in both '{type_owner[t]}' and '{name}'",
                                "a type belongs to exactly one category")
                    ok = False
                else:
                    type_owner[t] = name
                    types.append(t)

    expiry_ms = None
    if "strike_expiry" in entries:
        enode = entries["strike_expiry"][1]
        expiry_ms = parse_duration(_construct(enode)) if isinstance(enode, yaml.ScalarNode) else None
        if expiry_ms is None:
            checker.add(enode, f"{what}: strike_expiry must be a duration", "like 90d, 24h, 30m")
            ok = False

    points = 1
    if "points" in entries:
        pnode = entries["points"][1]
        value = _construct(pnode) if isinstance(pnode, yaml.ScalarNode) else None
        if type(value) is not int or value < 1:
            checker.add(pnode, f"{what}: points must be a whole number >= 1")
            ok = False
        else:
            points = value

    bands: list[Band] = []
    if "bands" in entries:
        bands_ok, bands = _bands(checker, entries["bands"][1], what, ids)
        ok = ok and bands_ok

    ladder: list[Rung] = []
    enforces = any(b.decision == "enforce" for b in bands)
    if "ladder" in entries:
        ladder_ok, ladder = _ladder(checker, entries["ladder"][1], what, ids)
        ok = ok and ladder_ok
    elif enforces:
        checker.add(key_node, f"{what} has an enforce band but no ladder", "add a ladder ending in a rung like 3+")
        ok = False

    counts = (name,)
    if "counts_strikes_of" in entries:
        cnode = entries["counts_strikes_of"][1]
        if not isinstance(cnode, yaml.SequenceNode) or not cnode.value:
            checker.add(cnode, f"{what}: counts_strikes_of must be a non-empty list of categories")
            ok = False
        else:
            refs = []
            for item in cnode.value:
                ref = checker.string(item, f"{what}: counts_strikes_of entry")
                if ref is not None:
                    refs.append(ref)
                    reference_nodes.append((name, ref, item))
            counts = tuple(refs)
    if not ok or expiry_ms is None:
        return None
    return Category(name, tuple(types), expiry_ms, points, tuple(bands), tuple(ladder), counts)


def _unique_id(checker, node, ids) -> str | None:
    rule_id = checker.string(node, "id")
    if rule_id is None:
        return None
    if rule_id in ids:
        checker.add(node, f"rule id '{rule_id}' is used twice (first at line {ids[rule_id].start_mark.line + 1})",
                    "every band and rung needs its own id")
        return None
    ids[rule_id] = node
    return rule_id


def _actions(checker, node, what, on_review: bool) -> tuple[Action, ...] | None:
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
            duration = parse_duration(_construct(param_node)) if isinstance(param_node, yaml.ScalarNode) else None
            if duration is None:
                checker.add(item, f"{what}: action '{kind}' needs a {spec.param}", f"write {{{kind}: 24h}}")
                ok = False
                continue
            out.append(Action(kind, duration))
    return tuple(out) if ok else None


def _band(checker, node, what, ids, allowed=BAND_KEYS) -> Band | None:
    entries = checker.mapping(node, what)
    if entries is None:
        return None
    checker.known_keys(entries, allowed, what)
    required = ("id", "decision") if allowed is UNKNOWN_KEYS else ("id", "min_confidence", "decision")
    ok = checker.required(entries, required, node, what)
    rule_id = _unique_id(checker, entries["id"][1], ids) if "id" in entries else None
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
        value = _construct(mnode) if isinstance(mnode, yaml.ScalarNode) else None
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
            got = _actions(checker, anode, what, on_review=True)
            ok = ok and got is not None
            actions = got or ()
    if not ok or rule_id is None or decision is None:
        return None
    return Band(rule_id, min_conf, decision, priority, actions)


def _bands(checker, node, what, ids) -> tuple[bool, list[Band]]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        checker.add(node, f"{what}: bands must be a non-empty list")
        return False, []
    bands: list[tuple[Band, yaml.Node]] = []
    ok = True
    for index, item in enumerate(node.value):
        band = _band(checker, item, f"{what} band {index + 1}", ids)
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


def _strikes(value: Any) -> tuple[int, int | None] | None:
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


def _ladder(checker, node, what, ids) -> tuple[bool, list[Rung]]:
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
        rule_id = _unique_id(checker, entries["id"][1], ids)
        snode = entries["strikes"][1]
        span = _strikes(_construct(snode)) if isinstance(snode, yaml.ScalarNode) else None
        if span is None:
            checker.add(snode, f"{rwhat}: strikes must be a count like 2, a range like 1-2, or open like 4+")
        actions = _actions(checker, entries["actions"][1], rwhat, on_review=False)
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
