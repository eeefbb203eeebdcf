"""Alert evaluation: rules (``sinks.rules``) over window summaries and Metric events.

Pure: no I/O, no clock. The caller passes the evaluation time (a summary's
window end, a Metric event's ``ts``), so the same inputs always give the
same Alert records (``schemas/alert.py``).

Per rule and label set an alert is *inactive*, *pending* or *firing*:

- inactive -> pending when a value breaches a threshold. The breach is
  taken to start at ``window_start`` for a summary (the value describes the
  whole window) and at ``ts`` for a Metric event.
- pending -> firing when ``now - started_at >= for``: one ``firing`` record
  with the severity breached at that time. With ``for = 0`` a single
  breaching value fires. A value that no longer breaches while pending sends
  it back to inactive without any record.
- firing: a value breaching a *more* severe threshold emits one more
  ``firing`` record (an escalation; ``previous_severity`` says from what).
  Severity never goes down while firing. A value past the least severe
  threshold by the hysteresis (``Rule.cleared``) emits one ``resolved``
  record and the alert becomes inactive; a later breach is a new episode
  with a new id.
- Nothing else emits records: no repeats while nothing changes. A missing
  value (null: a rate with no reads, a tier absent from the window) changes
  nothing.

Summaries of another view than ``views`` and summaries not newer than the
last one evaluated are ignored, so replaying old windows adds no records.
State is JSON-safe (``to_dict``/``from_dict``) for keeping in a table.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..schemas.alert import ALERT_TYPE, ALERT_VERSION
from .rules import SEVERITY_RANK, Rule
from .tiers import tier_order

STATE_VERSION = 1
_LAT_FIELD = {
    f"latency_{q}_ms": f"{q}_ms" for q in ("mean", "p50", "p90", "p95", "p99", "p999", "max")
}


def alert_id(rule: str, labels: Mapping[str, str], started_at: float) -> str:
    """Id of one firing episode: derived from the rule, the labels and the start."""
    raw = orjson.dumps([rule, dict(sorted(labels.items())), started_at])
    return "al-" + hashlib.blake2b(raw, digest_size=8).hexdigest()


def summary_values(
    rule: Rule, summary: Mapping[str, Any], tier_order_hint: Sequence[str] = ()
) -> list[tuple[dict[str, str], float | None]]:
    """``(labels, value)`` of every series ``rule`` watches in ``summary``."""
    metric = rule.metric
    if "tier" in rule.labels:
        sel = rule.labels["tier"]
        tiers = summary.get("tiers") or {}
        if sel == "@first":
            order = tier_order(summary, tier_order_hint)
            names = order[:1]
        elif sel == "*":
            names = sorted(tiers)
        else:
            names = [sel] if sel in tiers else []
        return [({"tier": n}, _tier_value(metric, tiers[n])) for n in names]
    if "agent" in rule.labels:
        sel = rule.labels["agent"]
        agents = summary.get("agents") or {}
        names = sorted(agents) if sel == "*" else [sel] if sel in agents else []
        return [({"agent": n}, _level_value(metric, agents[n])) for n in names]
    if metric in _LAT_FIELD:
        return [({}, (summary.get("latency") or {}).get(_LAT_FIELD[metric]))]
    return [({}, _level_value(metric, summary))]


def _tier_value(metric: str, t: Mapping[str, Any]) -> float | None:
    if metric in _LAT_FIELD:
        return t["latency"][_LAT_FIELD[metric]]
    if metric == "hit_rate":
        return t["hit_rate"]
    if metric == "error_rate":
        return t["errors"] / t["attempts"] if t["attempts"] else None
    return None


def _level_value(metric: str, level: Mapping[str, Any]) -> float | None:
    if metric == "error_rate":
        return level["errors"] / level["reads"] if level.get("reads") else None
    v = level.get(metric)
    return None if v is None else float(v)


class AlertEvaluator:
    """Evaluates rules; returns the Alert records to publish (see module docstring)."""

    def __init__(
        self,
        rules: Sequence[Rule],
        tier_order: Sequence[str] = (),
        views: Sequence[str] = ("tumbling",),
    ) -> None:
        self.rules = list(rules)
        self.tier_order = tuple(tier_order)
        self.views = tuple(views)
        #: instance key -> {"state", "started_at", "fired_at", "severity", "id", "labels", "last"}
        self.instances: dict[str, dict[str, Any]] = {}
        self.last_window_end: float | None = None

    def observe(self, summary: Mapping[str, Any], now: float | None = None) -> list[dict[str, Any]]:
        """Evaluate the summary rules on one window summary (``now`` = its window end)."""
        if summary.get("view", self.views[0]) not in self.views:
            return []
        end = float(summary["window_end"])
        if self.last_window_end is not None and end <= self.last_window_end:
            return []
        self.last_window_end = end
        at = end if now is None else now
        start = float(summary["window_start"])
        out: list[dict[str, Any]] = []
        for rule in self.rules:
            if rule.source != "summary":
                continue
            for labels, value in summary_values(rule, summary, self.tier_order):
                out += self._step(rule, labels, value, start, at)
        return out

    def observe_metric(
        self, event: Mapping[str, Any], now: float | None = None
    ) -> list[dict[str, Any]]:
        """Evaluate the metric rules on one Metric event (``now`` = its ``ts``)."""
        labels = dict(event.get("labels") or {})
        ts = float(event["ts"])
        at = ts if now is None else now
        out: list[dict[str, Any]] = []
        for rule in self.rules:
            if rule.source != "metric" or rule.metric != event["name"]:
                continue
            if all(k in labels and (v == "*" or labels[k] == v) for k, v in rule.labels.items()):
                out += self._step(rule, labels, float(event["value"]), ts, at)
        return out

    def firing(self) -> list[dict[str, Any]]:
        """The alerts firing now: ``{"rule", "labels", "severity", "id", "started_at"}``."""
        return [
            {k: inst[k] for k in ("rule", "labels", "severity", "id", "started_at")}
            for inst in self.instances.values()
            if inst["state"] == "firing"
        ]

    def _step(
        self, rule: Rule, labels: dict[str, str], value: float | None, start: float, now: float
    ) -> list[dict[str, Any]]:
        if value is None:
            return []
        key = orjson.dumps([rule.name, dict(sorted(labels.items()))]).decode()
        inst = self.instances.get(key)
        if inst is not None and now <= inst["last"]:
            return []  # not newer than what this alert has seen
        severity = rule.breached(value)
        if inst is None or inst["state"] == "pending":
            if severity is None:
                self.instances.pop(key, None)
                return []
            if inst is None:
                inst = self.instances[key] = {
                    "rule": rule.name,
                    "labels": labels,
                    "state": "pending",
                    "started_at": start,
                    "fired_at": None,
                    "severity": severity,
                    "id": None,
                    "last": now,
                }
            inst["last"] = now
            if now - inst["started_at"] < rule.for_s:
                return []
            inst.update(
                state="firing",
                fired_at=now,
                severity=severity,
                id=alert_id(rule.name, labels, inst["started_at"]),
            )
            return [_record(rule, inst, value, now, "firing", None)]
        inst["last"] = now
        if rule.cleared(value):
            del self.instances[key]
            return [_record(rule, inst, value, now, "resolved", None)]
        if severity is not None and SEVERITY_RANK[severity] > SEVERITY_RANK[inst["severity"]]:
            previous = inst["severity"]
            inst["severity"] = severity
            return [_record(rule, inst, value, now, "firing", previous)]
        return []

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "instances": {k: dict(v) for k, v in sorted(self.instances.items())},
            "last_window_end": self.last_window_end,
        }

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        rules: Sequence[Rule],
        tier_order: Sequence[str] = (),
        views: Sequence[str] = ("tumbling",),
    ) -> AlertEvaluator:
        """Restore state saved by :meth:`to_dict`; alerts of rules no longer given are dropped."""
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"unknown alert evaluator state version {d.get('version')!r}")
        ev = cls(rules, tier_order, views)
        names = {r.name for r in rules}
        ev.instances = {k: dict(v) for k, v in d["instances"].items() if v["rule"] in names}
        ev.last_window_end = d["last_window_end"]
        return ev


def _record(
    rule: Rule,
    inst: Mapping[str, Any],
    value: float,
    now: float,
    state: str,
    previous: str | None,
) -> dict[str, Any]:
    sev = inst["severity"]
    thr = rule.threshold(sev)
    labels = inst["labels"]
    where = "{" + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else ""
    if state == "firing":
        what = "escalated to" if previous else "firing"
        message = (
            f"{rule.name} {what} {sev}: {rule.metric}{where} = {value:.4g} "
            f"{rule.comparison} {thr:g}"
        )
    else:
        message = (
            f"{rule.name} resolved: {rule.metric}{where} = {value:.4g}, back past "
            f"{rule.thresholds[0][1]:g} by the hysteresis {rule.hysteresis:g}"
        )
    return {
        "schema_version": ALERT_VERSION,
        "record_type": ALERT_TYPE,
        "id": inst["id"],
        "rule": rule.name,
        "metric": rule.metric,
        "labels": dict(labels),
        "severity": sev,
        "state": state,
        "value": float(value),
        "threshold": thr,
        "comparison": rule.comparison,
        "hysteresis": rule.hysteresis,
        "for_s": rule.for_s,
        "started_at": inst["started_at"],
        "fired_at": inst["fired_at"],
        "resolved_at": now if state == "resolved" else None,
        "ts": now,
        "previous_severity": previous,
        "message": message,
    }
