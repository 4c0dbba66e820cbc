"""What every decision by one band or rung repeats, worked out once per rule set: the actions'
descriptions the records carry (Action.describe) and the metric events of the step.

The decision core asks for these on every review and enforcement; they depend on the rule alone,
so building them per alert was work thrown away.
"""

from __future__ import annotations

from typing import NamedTuple

from rules.model import Band, Policy, Rung


class Prepared(NamedTuple):
    rule: Band | Rung
    described: tuple[str, ...]  # Action.describe() of each action, in order
    events: tuple[str, ...]  # "rule.<id>", then "action.<kind>" per action


def prepare(rule: Band | Rung) -> Prepared:
    return Prepared(rule, tuple(a.describe() for a in rule.actions),
                    (f"rule.{rule.id}", *(f"action.{a.kind}" for a in rule.actions)))


class PreparedRules:
    """Prepared of every band and rung of one policy."""

    def __init__(self, policy: Policy):
        rules = [policy.unknown_types]
        for category in policy.categories:
            rules += category.bands
            rules += category.ladder
        # By identity: bands and rungs are frozen, but hashing one would hash all its fields.
        self._by_id = {id(rule): prepare(rule) for rule in rules}

    def of(self, rule: Band | Rung) -> Prepared:
        prepared = self._by_id.get(id(rule))
        # A rule made on the fly (a confirmed review's band) is not in the policy: work it out.
        return prepared if prepared is not None and prepared.rule is rule else prepare(rule)
