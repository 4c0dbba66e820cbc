"""Shadow rules: a second rule set evaluated on the same state as the live one, never enforced.

For each alert the live core decides (and its state is kept); the shadow core decides the same
alert from the same state before it, and only a comparison leaves: one audit record of kind
"shadow" saying what the shadow rules would have done, what the live rules did, and whether they
agree. The shadow's state is thrown away, so it can never drift into enforcement.
"""

from __future__ import annotations

from connectors.alerts import Alert
from rules import records
from rules.core import PenaltyCore, Step
from rules.ledger import UserState

DECISION_EVENTS = ("enforced", "review", "dismissed", "suppressed_banned")


def outcome_of(step: Step) -> dict | None:
    """What one decision did: decision, rule id and actions. None when the alert decided nothing
    (duplicate, merged without upgrade, too late)."""
    decision = next((e for e in step.events if e in DECISION_EVENTS), None)
    if decision is None:
        return None
    rule_id = next((e.split(".", 1)[1] for e in step.events if e.startswith("rule.")), None)
    actions = [{"action": o.record["action"], "until_ms": o.record["until_ms"]}
               for o in step.outputs if o.kind == "enforcement"]
    return {"decision": decision, "rule_id": rule_id, "actions": actions}


def agree(live: dict, shadow: dict) -> bool:
    # Rule ids may differ between rule sets; what matters is what would happen to the streamer.
    return live["decision"] == shadow["decision"] and live["actions"] == shadow["actions"]


def compare(shadow_core: PenaltyCore, live_policy_version: str, state_before: UserState | None, alert: Alert,
            watermark_ms: int | None, live_step: Step) -> tuple[records.Output | None, str | None]:
    """The shadow audit record for one alert, and the metric event ("shadow.agree.<rule>" or
    "shadow.disagree.<rule>"), or (None, None) when the live core decided nothing."""
    live = outcome_of(live_step)
    if live is None:
        return None, None
    shadow = outcome_of(shadow_core.on_alert(state_before, alert, watermark_ms))
    if shadow is None:  # e.g. a shadow rule set with another incident window merged it
        shadow = {"decision": "none", "rule_id": None, "actions": []}
    same = agree(live, shadow)
    verdict = "agree" if same else "disagree"
    policy = shadow_core.policy
    out = records.audit(
        kind="shadow", user_id=alert.user_id, cause=f"alert:{alert.alert_id}:{policy.version}",
        event_time_ms=alert.event_time_ms, outcome=verdict, rule_id=shadow["rule_id"],
        policy_name=policy.name, policy_version=policy.version, alert_ids=[alert.alert_id],
        detail={"shadow": shadow, "live": {**live, "rule_set_version": live_policy_version}},
    )
    return out, f"shadow.{verdict}.{shadow['rule_id']}"
