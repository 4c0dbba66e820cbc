"""Bad rule files: every command that loads a policy exits 2 with
`FILE:LINE: problem (hint: ...)`, never a traceback. The exact lines `validate` prints are golden
files in tests/data/rule_file_faults/<kind>.expected."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.loader import check_policy
from rules.yaml_screen import MAX_RULE_FILE_BYTES

from .conftest import DEFAULT_RULES, REPO

GOLDEN = REPO / "tests" / "data" / "rule_file_faults"
# A small valid policy of its own, so the goldens do not move when default.yaml is edited.
POLICY = """\
rule_set: faults
description: Default policy, cut down
categories:
  standard:
    types: [hate_speech, nudity]
    strike_expiry: 90d
    bands:
      - {id: std-auto, min_confidence: 0.90, decision: enforce}
      - {id: std-dismiss, min_confidence: 0.0, decision: dismiss}
    ladder:
      - {id: std-warning, strikes: 1+, actions: [warning]}
unknown_types: {id: unknown-review, decision: review}
"""
BILLION_LAUGHS = "rule_set: lol\n" + 'a0: &a0 ["lol"]\n' + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 10)) + "categories: *a9\n"


def with_expiry(value: str) -> bytes:
    """POLICY with the strike_expiry on line 6 replaced."""
    text = POLICY.replace("    strike_expiry: 90d\n", f"    strike_expiry: {value}\n", 1)
    assert text != POLICY
    return text.encode()


BAD_FILES = {
    "tag_python_name": with_expiry("!!python/name:os.system 90d"),
    "tag_python_apply": with_expiry("!!python/object/apply:os.system [echo pwned]"),
    "tag_other": with_expiry("!duration 90d"),
    "alias_bomb": BILLION_LAUGHS.encode(),
    # Comment lines after a valid policy: refused on size alone, before anything is parsed.
    "too_large": POLICY.encode() + b"# padding\n" * (MAX_RULE_FILE_BYTES // 10),
    "not_utf8": POLICY.replace("description: Default", "description: D\xe9fault").encode("latin-1"),
    "empty": b"",
    "syntax_error": POLICY.replace("decision: enforce}", "decision: enforce", 1).encode(),
}


def write(tmp_path, kind: str):
    path = tmp_path / f"{kind}.yaml"
    path.write_bytes(BAD_FILES[kind])
    return path


def run(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, check=False, timeout=120)


@pytest.mark.faults
@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_validate_prints_the_golden_problems_and_exits_2(kind, tmp_path):
    write(tmp_path, kind)
    # Run from the file's folder so the golden names the file as an author would type it.
    result = run("-m", "rules", "validate", f"{kind}.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stderr.decode()
    assert b"Traceback" not in result.stderr and result.stderr == b""
    assert result.stdout.decode() == (GOLDEN / f"{kind}.expected").read_text()
    for line in result.stdout.decode().splitlines():
        file, number, rest = line.split(":", 2)
        assert file == f"{kind}.yaml" and int(number) >= 1 and " (hint: " in rest


@pytest.mark.faults
@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_every_command_that_loads_a_policy_exits_2_with_the_same_problems(kind, tmp_path):
    from jobs.penalty_job import main as job_main
    from rules.__main__ import main as rules_main

    path = str(write(tmp_path, kind))
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_bytes(b"")
    golden = (GOLDEN / f"{kind}.expected").read_text().replace(f"{kind}.yaml:", f"{path}:")
    commands = {
        "simulate": lambda: rules_main(["simulate", "--rules", path, "--alerts", str(alerts)]),
        "simulate --shadow-rules": lambda: rules_main(["simulate", "--rules", str(DEFAULT_RULES),
                                                        "--shadow-rules", path, "--alerts", str(alerts)]),
        "diff": lambda: rules_main(["diff", "--old", str(DEFAULT_RULES), "--new", path, "--alerts", str(alerts)]),
        # The job validates its rules before it builds anything (no JVM is started).
        "penalty_job": lambda: job_main(["--rules", path]),
    }
    for name, command in commands.items():
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert command() == 2, name
        problems = [line.strip() for line in err.getvalue().splitlines()[1:]]
        assert err.getvalue().startswith(f"{len(problems)} problem") and f" in {path}:" in err.getvalue(), name
        assert problems == golden.splitlines(), name


@pytest.mark.faults
def test_the_test_policy_itself_is_valid():
    policy, problems = check_policy(POLICY.encode(), "faults.yaml")
    assert problems == [] and policy is not None


@pytest.mark.faults
def test_an_endless_stream_is_refused_after_reading_just_past_the_limit():
    result = run("-m", "rules", "validate", "/dev/zero", cwd=REPO)
    assert result.returncode == 2
    assert result.stdout.decode() == ("/dev/zero:1: rule file is over the 1 MiB limit (1048576 bytes) "
                                      "(hint: a policy is a few KiB: check that this is the rule file you meant)\n")


@pytest.mark.faults
@pytest.mark.parametrize("value", ["=", "2026-02-30", "!!int abc", "!!float 1e999999", "!!null", "!", "*undefined"])
def test_values_the_safe_loader_cannot_build_are_problems_not_crashes(value):
    policy, problems = check_policy(with_expiry(value), "p.yaml")
    assert policy is None and problems and all(p.file == "p.yaml" and p.line == 6 for p in problems)


def _yaml_values():
    scalars = st.one_of(st.text(max_size=12), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none())
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                        max_leaves=20)


@pytest.mark.faults
@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["rule_set", "categories", "unknown_types", "standard", "bands", "ladder", "actions",
                        "types", "strike_expiry", "points", "min_confidence", "strikes", "id", "decision"]),
       _yaml_values())
def test_any_value_anywhere_in_a_policy_gives_problems_never_an_exception(key, value):
    """Replace the first value of `key` in the default policy by random YAML: the checker must
    report (or accept), never raise."""
    doc = yaml.safe_load(POLICY)

    def replace(node) -> bool:
        if isinstance(node, dict):
            for k in node:
                if k == key:
                    node[k] = value
                    return True
                if replace(node[k]):
                    return True
        elif isinstance(node, list):
            return any(replace(item) for item in node)
        return False

    replace(doc)
    policy, problems = check_policy(yaml.safe_dump(doc, allow_unicode=True).encode(), "p.yaml")
    assert (policy is None) == bool(problems)
