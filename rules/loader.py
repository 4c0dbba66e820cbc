"""Load and validate a policy YAML file.

Every problem is collected with `file:line` and a hint and raised once as RuleFileError, so a
rule author fixes a file in one pass. Nothing is checked lazily during evaluation: a Policy that
loads is complete. YAML is read with the safe loader only, after rules/yaml_screen.py has refused
what a rule file never needs (over 1 MiB, not UTF-8, tags, anchors and aliases, deep nesting).
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass
from stat import S_ISREG

import yaml

from rules import yaml_screen
from rules.model import (
    Band,
    Category,
    Policy,
    Rung,
    parse_duration,
)
from rules.sections import (  # noqa: F401 - the *_KEYS: part of this module's interface
    BAND_KEYS,
    GUARD_COUNT_KEYS,
    GUARD_KEYS,
    GUARD_LIMIT_KEYS,
    RUNG_KEYS,
    UNKNOWN_KEYS,
    check_band,
    check_bands,
    check_guard,
    check_ladder,
    construct_scalar,
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
    "detector_guard": "limits per detector; a detector over them sends its enforce-band alerts to urgent "
                      "review instead of penalising (optional, docs/rules.md)",
}
CATEGORY_KEYS = {
    "types": "violation types in this category (list of strings, required)",
    "strike_expiry": "how long a strike stays active after the violation's event time, e.g. 90d",
    "points": "strikes one violation adds (integer >= 1, default 1)",
    "bands": "confidence bands, highest min_confidence first, the last at 0.0 (required)",
    "ladder": "rungs by active strike count, the last open-ended like 4+ (required with enforce)",
    "counts_strikes_of": "categories whose active strikes this ladder counts (default: itself)",
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


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Load and validate one policy file; raise RuleFileError listing every problem."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            # One byte past the limit is enough to refuse it: a huge file (or /dev/zero) is never read whole.
            data = fh.read(yaml_screen.MAX_RULE_FILE_BYTES + 1)
            stat = os.fstat(fh.fileno())
    except OSError as exc:
        raise RuleFileError(path, [Problem(path, 1, f"cannot read rule file: {exc.strerror}")]) from exc
    if len(data) > yaml_screen.MAX_RULE_FILE_BYTES:
        size = stat.st_size if S_ISREG(stat.st_mode) else None
        raise RuleFileError(path, [Problem(path, *yaml_screen.too_large(size))])
    return parse_policy(data, path)


def parse_policy(data: bytes, file: str = "<rules>") -> Policy:
    policy, problems = check_policy(data, file)
    if problems or policy is None:
        raise RuleFileError(file, problems)
    return policy


def check_policy(data: bytes, file: str = "<rules>") -> tuple[Policy | None, list[Problem]]:
    """Validate; return (policy or None, problems). Never raises on content."""
    checker = _Checker(file)
    text, found = yaml_screen.decode(data)
    if text is not None:
        found = yaml_screen.screen(text)
    if found:
        return None, sorted((Problem(file, *f) for f in found), key=lambda p: p.line)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        return None, [Problem(file, line, f"YAML syntax error: {exc.problem}", "check indentation and quoting")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, 1, f"YAML error: {exc}", "check the file against rules/policies/default.yaml")]
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
        unknown = check_band(checker, top["unknown_types"][1], "unknown_types", ids, UNKNOWN_KEYS)
        if unknown is not None and unknown.decision == "enforce":
            checker.add(top["unknown_types"][1], "unknown_types may not enforce",
                        "an unknown violation type never gets an automatic penalty: use review")
            unknown = None

    guard_ok, guard = check_guard(checker, top["detector_guard"][1]) if "detector_guard" in top else (True, None)

    problems = sorted(checker.problems, key=lambda p: p.line)
    if problems or name is None or unknown is None or not guard_ok:
        return None, problems
    policy = Policy(
        name=name,
        version=rule_set_version(data),
        source=file,
        categories=tuple(categories),
        unknown_types=unknown,
        description=description,
        detector_guard=guard,
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
        expiry_ms = parse_duration(construct_scalar(enode)) if isinstance(enode, yaml.ScalarNode) else None
        if expiry_ms is None:
            checker.add(enode, f"{what}: strike_expiry must be a duration", "like 90d, 24h, 30m")
            ok = False

    points = 1
    if "points" in entries:
        pnode = entries["points"][1]
        value = construct_scalar(pnode) if isinstance(pnode, yaml.ScalarNode) else None
        if type(value) is not int or value < 1:
            checker.add(pnode, f"{what}: points must be a whole number >= 1")
            ok = False
        else:
            points = value

    bands: list[Band] = []
    if "bands" in entries:
        bands_ok, bands = check_bands(checker, entries["bands"][1], what, ids)
        ok = ok and bands_ok

    ladder: list[Rung] = []
    enforces = any(b.decision == "enforce" for b in bands)
    if "ladder" in entries:
        ladder_ok, ladder = check_ladder(checker, entries["ladder"][1], what, ids)
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
