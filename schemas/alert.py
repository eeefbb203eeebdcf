"""The Alert record: one per state change of an alert (it fires, escalates, resolves).

Produced by ``tierstream.sinks.alerts.AlertEvaluator`` and published on
``tierstream.alerts``. An alert is one firing episode of one rule for one
label set; ``id`` is derived from the rule, the labels and ``started_at``, so
the firing record and the resolved record of an episode share it.

- ``state`` ``firing``: the value breached a threshold for the rule's ``for``
  duration (or the severity rose: an escalation is a new firing record with
  the higher ``severity``). ``resolved``: the value came back past the least
  severe threshold by the rule's hysteresis; ``resolved_at`` is set.
- ``value`` is the value that caused this record; ``threshold`` the threshold
  of ``severity``; ``comparison`` how the value is compared with it (the
  alert condition is ``value <comparison> threshold``).
- Times are event times (window ends), not wall clock, so replays give the
  same records.
"""

from __future__ import annotations

from typing import Any

from .spec import Field, Record, validate

ALERT_VERSION = 1
ALERT_TYPE = "alert"
SEVERITIES = ("info", "warning", "error", "critical")
COMPARISONS = ("<", "<=", ">", ">=")
ALERT_STATES = ("firing", "resolved")

ALERT_RECORD = Record(
    name=ALERT_TYPE,
    title="Alert",
    version=ALERT_VERSION,
    description="A state change of an alert rule for one label set.",
    fields=(
        Field("schema_version", "integer", "Version of this record's schema.", const=ALERT_VERSION),
        Field("record_type", "string", "Always alert.", const=ALERT_TYPE),
        Field(
            "id", "string", "Id of the firing episode (rule, labels, started_at).", max_length=128
        ),
        Field("rule", "string", "Name of the rule.", max_length=256),
        Field("metric", "string", "Metric the rule watches.", max_length=256),
        Field("labels", "object", "Label set of this alert (string to string)."),
        Field("severity", "string", "Severity of the breached threshold.", enum=SEVERITIES),
        Field("state", "string", "firing or resolved.", enum=ALERT_STATES),
        Field("value", "number", "Value that caused this record."),
        Field("threshold", "number", "Threshold of this severity."),
        Field(
            "comparison",
            "string",
            "The condition is value <comparison> threshold.",
            enum=COMPARISONS,
        ),
        Field("hysteresis", "number", "Margin past the threshold needed to resolve.", minimum=0),
        Field("for_s", "number", "Seconds the breach must last before firing.", minimum=0),
        Field("started_at", "number", "When the breach began (epoch seconds)."),
        Field("fired_at", "number", "When it fired (epoch seconds)."),
        Field("resolved_at", "number", "When it resolved; null while firing.", nullable=True),
        Field("ts", "number", "Evaluation time of this record (epoch seconds)."),
        Field(
            "previous_severity",
            "string",
            "On an escalation, the severity before; else null.",
            nullable=True,
            enum=SEVERITIES,
        ),
        Field("message", "string", "One sentence for an operator.", max_length=2000),
    ),
)


def validate_alert(obj: Any) -> dict[str, Any]:
    """Check one Alert; return it, or raise ``ValidationError``."""
    validate(ALERT_RECORD, obj)
    return dict(obj)
