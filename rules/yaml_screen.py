"""Screen a rule file before it is composed into YAML nodes: size, encoding, tags, anchors, depth.

A rule file is small, hand-written data: strings, numbers, lists and mappings. Everything else
YAML can express is refused here, from the parser's event stream, before any node is built:

- files over MAX_RULE_FILE_BYTES (checked before the bytes are even decoded);
- bytes that are not UTF-8, and characters YAML forbids (NUL and other control characters);
- explicit tags other than the core ones (`!!python/name:os.system`, `!!binary`, `!foo`, ...):
  the safe loader would refuse to construct most of them anyway, but half-way through the checks
  and with a traceback; here the author gets the line of the tag;
- anchors and aliases, refused outright rather than up to a limit: no policy needs them, one
  alias can stand for an exponential amount of data (the "billion laughs" file is ten lines),
  and a limit would be one more number to get right. Reported once per anchor, so even a bomb
  gives a short list;
- nesting deeper than MAX_DEPTH (a policy needs five levels; composing is recursive, so a
  file of 100,000 `[` would otherwise end in a RecursionError).

Problems are (line, message, hint) tuples; rules/loader.py turns them into Problems.
"""

from __future__ import annotations

import yaml

MAX_RULE_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32
# The explicit tags a rule file may carry: the core schema's, which construct plain values.
ALLOWED_TAGS = frozenset(f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "seq", "map"))
_SHORT = "tag:yaml.org,2002:"

Found = tuple[int, str, str]


def too_large(size: int | None) -> Found:
    """size: the file's size when known (a regular file), None for a stream cut at the limit."""
    what = f"rule file is {size} bytes," if size is not None else "rule file is"
    return (1, f"{what} over the 1 MiB limit ({MAX_RULE_FILE_BYTES} bytes)",
            "a policy is a few KiB: check that this is the rule file you meant")


def decode(data: bytes) -> tuple[str | None, list[Found]]:
    """The text of a rule file, or the problem with its bytes."""
    if len(data) > MAX_RULE_FILE_BYTES:
        return None, [too_large(len(data))]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, [(line, f"rule file is not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column})",
                       "save the file as UTF-8")]


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_SHORT):] if tag.startswith(_SHORT) else tag


def screen(text: str) -> list[Found]:
    """Every tag, anchor and alias problem in `text`, or the first syntax error; [] if it is plain
    YAML that is safe to compose."""
    found: list[Found] = []
    anchors: dict[str, int] = {}  # anchor -> line where it is defined
    uses: dict[str, int] = {}  # anchor -> aliases naming it
    undefined: dict[str, int] = {}  # alias naming no anchor before it -> its first line
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            line = event.start_mark.line + 1
            if isinstance(event, yaml.AliasEvent):
                uses[event.anchor] = uses.get(event.anchor, 0) + 1
                if event.anchor not in anchors:
                    undefined.setdefault(event.anchor, line)
                continue
            anchor = getattr(event, "anchor", None)
            if anchor is not None and anchor not in anchors:
                anchors[anchor] = line
            tag = getattr(event, "tag", None)
            # "!" alone is YAML's non-specific tag: the value stays a plain string.
            if tag is not None and tag != "!" and tag not in ALLOWED_TAGS:
                found.append((line, f"YAML tag '{_tag_name(tag)}' is not allowed in a rule file",
                              "rule files hold plain strings, numbers, lists and mappings: remove the tag"))
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    found.append((line, f"nesting deeper than {MAX_DEPTH} levels",
                                  "a policy needs about five levels: check the brackets and indentation"))
                    break
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        found.append((mark.line + 1 if mark else 1, f"YAML syntax error: {exc.problem}", "check indentation and quoting"))
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        found.append((line, f"character U+{ord(char):04X} is not allowed in YAML",
                      "remove control characters; save the file as plain UTF-8 text"))
    except yaml.YAMLError as exc:  # any other parser error: still the author's file, not a crash
        found.append((1, f"YAML error: {exc}", "check the file against rules/policies/default.yaml"))
    for anchor, line in anchors.items():
        used = uses.get(anchor, 0)
        aliases = f"{used} alias{'' if used == 1 else 'es'}"
        found.append((line, f"YAML anchor '&{anchor}' ({aliases}): anchors and aliases are not allowed in a rule file",
                      "write the value out in full where it is used"))
    for anchor, line in undefined.items():
        if anchor not in anchors:
            found.append((line, f"YAML alias '*{anchor}' names no anchor (and aliases are not allowed in a rule file)",
                          "write the value out in full; quote it if it is text starting with '*'"))
    return found
