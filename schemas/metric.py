"""The Metric event: a custom metric value any process publishes on ``tierstream.metrics``.

Alert rules with ``source = "metric"`` watch these by ``name`` and label set
(see ``tierstream.sinks.rules``). ``ts`` is the event time the value refers
to; evaluation uses it, never the wall clock of the evaluator.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import ValidationError
from .spec import Field, Record, validate

METRIC_VERSION = 1
METRIC_TYPE = "metric"

#: What a metric name may look like (Prometheus names plus dots).
METRIC_NAME_PATTERN = r"^[A-Za-z_:][A-Za-z0-9_:.]*$"

METRIC_RECORD = Record(
    name=METRIC_TYPE,
    title="Metric",
    version=METRIC_VERSION,
    description="One value of a named metric with labels, at a time.",
    fields=(
        Field(
            "schema_version", "integer", "Version of this record's schema.", const=METRIC_VERSION
        ),
        Field("record_type", "string", "Always metric.", const=METRIC_TYPE),
        Field("name", "string", "Metric name ([A-Za-z_:][A-Za-z0-9_:.]*).", max_length=256),
        Field("value", "number", "The value (finite)."),
        Field("labels", "object", "Labels, string to string.", required=False),
        Field(
            "ts", "number", "Time the value refers to, epoch seconds.", minimum=1e9, maximum=1e10
        ),
        Field(
            "source", "string", "Who published it.", required=False, nullable=True, max_length=256
        ),
    ),
)


def metric_event(
    name: str,
    value: float,
    ts: float,
    labels: dict[str, str] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """A valid Metric event (raises ``ValidationError`` when it is not)."""
    rec = {
        "schema_version": METRIC_VERSION,
        "record_type": METRIC_TYPE,
        "name": name,
        "value": value,
        "labels": dict(labels or {}),
        "ts": ts,
        "source": source,
    }
    return validate_metric(rec)


def validate_metric(obj: Any) -> dict[str, Any]:
    """Check one Metric event (including its name and labels); return it or raise."""
    validate(METRIC_RECORD, obj)
    if not re.match(METRIC_NAME_PATTERN, obj["name"]):
        raise ValidationError("name", f"must match {METRIC_NAME_PATTERN}, got {obj['name']!r}")
    for k, v in (obj.get("labels") or {}).items():
        if not isinstance(v, str) or not k:
            raise ValidationError(f"labels.{k}", "labels must map non-empty strings to strings")
    return dict(obj)
