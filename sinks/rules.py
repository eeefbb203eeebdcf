"""Alert rule files: TOML (stdlib ``tomllib``), parsed into :class:`Rule` objects.

A rule file is a list of ``[[rule]]`` tables::

    [[rule]]
    name = "first-tier-hit-rate-low"     # unique in the file
    metric = "hit_rate"                  # see METRICS, or any name with source = "metric"
    labels = { tier = "@first" }         # optional selector (see below)
    comparison = "<"                     # <, <=, >, >=: alert when value <cmp> threshold
    thresholds = { warning = 0.40, critical = 0.20 }   # info, warning, error, critical
    for = "30s"                          # seconds, or "500ms" "30s" "5m" "1h" "1d"; default 0
    hysteresis = 0.05                    # resolve only past threshold +/- this; default 0
    source = "summary"                   # summary (default) or metric (Metric events)
    description = "..."                  # optional

Label selectors: ``tier`` (for hit_rate, error_rate and the latency metrics)
and ``agent`` (hit_rate, cache_effectiveness, error_rate) pick a tier or
agent of the window summary: a name, ``"*"`` (one alert per tier/agent) or,
for ``tier``, ``"@first"`` (the tier tried first, see ``sinks.tiers``);
without them the rule watches the whole window. For ``source = "metric"``
rules (custom metrics, and ``publisher_drop_rate``) a selector value must
equal the event's label, or be ``"*"`` (the label must be present); each
distinct label set of matching events is its own alert.

Thresholds must be ordered by severity: with ``<``/``<=`` a more severe
threshold is lower, with ``>``/``>=`` higher. Rates are fractions in [0, 1].

Every problem raises :class:`RuleFileError` naming the file, the line (of
the offending key, else of its ``[[rule]]`` header) and what is wrong.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from ..schemas.alert import COMPARISONS, SEVERITIES
from ..schemas.metric import METRIC_NAME_PATTERN
from .errors import RuleFileError

Comparison = Literal["<", "<=", ">", ">="]
Source = Literal["summary", "metric"]

_LATENCY = ("mean", "p50", "p90", "p95", "p99", "p999", "max")
#: Metrics read off a WindowSummary: name -> label selectors it accepts.
SUMMARY_METRICS: dict[str, frozenset[str]] = {
    "hit_rate": frozenset({"tier", "agent"}),
    "cache_effectiveness": frozenset({"agent"}),
    "error_rate": frozenset({"tier", "agent"}),
    **{f"latency_{q}_ms": frozenset({"tier"}) for q in _LATENCY},
}
#: Built-in metrics that arrive as Metric events (see ``sinks.publishers``).
EVENT_METRICS = frozenset({"publisher_drop_rate"})
#: Metrics that are fractions in [0, 1].
RATE_METRICS = frozenset({"hit_rate", "cache_effectiveness", "error_rate", "publisher_drop_rate"})
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

_RULE_KEYS = (
    "name",
    "metric",
    "labels",
    "comparison",
    "thresholds",
    "for",
    "hysteresis",
    "source",
    "description",
)
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Rule:
    """One alert rule (see the module docstring)."""

    name: str
    metric: str
    comparison: Comparison
    #: (severity, threshold), least severe first
    thresholds: tuple[tuple[str, float], ...]
    labels: dict[str, str] = field(default_factory=dict)
    for_s: float = 0.0
    hysteresis: float = 0.0
    source: Source = "summary"
    description: str = ""
    line: int | None = None

    def breached(self, value: float) -> str | None:
        """The most severe severity whose threshold ``value`` breaches, or None."""
        hit = None
        for sev, thr in self.thresholds:
            if _compare(value, self.comparison, thr):
                hit = sev
        return hit

    def cleared(self, value: float) -> bool:
        """True when ``value`` is past the least severe threshold by the hysteresis."""
        thr = self.thresholds[0][1]
        h = self.hysteresis
        return {
            "<": value >= thr + h,
            "<=": value > thr + h,
            ">": value <= thr - h,
            ">=": value < thr - h,
        }[self.comparison]

    def threshold(self, severity: str) -> float:
        return dict(self.thresholds)[severity]


def _compare(value: float, cmp: str, thr: float) -> bool:
    if cmp == "<":
        return value < thr
    if cmp == "<=":
        return value <= thr
    if cmp == ">":
        return value > thr
    return value >= thr


def load_rules(path: str | Path) -> list[Rule]:
    """Parse the rule file at ``path`` (raises :class:`RuleFileError`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RuleFileError(str(p), None, f"cannot read the rule file: {exc}") from None
    return parse_rules(text, str(p))


def default_rules_text() -> str:
    """The rule file shipped with tierstream (``sinks/default_rules.toml``)."""
    return resources.files(__package__).joinpath("default_rules.toml").read_text("utf-8")


def load_default_rules() -> list[Rule]:
    return parse_rules(default_rules_text(), "default_rules.toml")


def parse_rules(text: str, path: str = "<rules>") -> list[Rule]:
    """Parse rule-file ``text``; ``path`` names it in errors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise RuleFileError(path, int(m.group(1)) if m else None, f"TOML syntax: {msg}") from None
    loc = _Locator(text)
    for key in doc:
        if key != "rule":
            raise RuleFileError(path, loc.top(key), f"unknown top-level key {key!r}; use [[rule]]")
    raw = doc.get("rule", [])
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise RuleFileError(path, loc.top("rule"), "'rule' must be an array of tables: [[rule]]")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, r in enumerate(raw):

        def fail(problem: str, key: str | None = None, sub: str | None = None, i: int = i) -> None:
            raise RuleFileError(path, loc.find(i, key, sub), problem)

        rules.append(_parse_rule(r, fail, loc.find(i, None, None)))
        if rules[-1].name in seen:
            fail(f"duplicate rule name {rules[-1].name!r}", "name")
        seen.add(rules[-1].name)
    return rules


def _parse_rule(r: dict[str, Any], fail: Any, line: int | None) -> Rule:
    for k in r:
        if k not in _RULE_KEYS:
            fail(f"unknown key {k!r} in a rule; allowed: {', '.join(_RULE_KEYS)}", k)
    for k in ("name", "metric", "comparison", "thresholds"):
        if k not in r:
            fail(f"rule is missing {k!r}")
    name, metric = r["name"], r["metric"]
    if not isinstance(name, str) or not name.strip():
        fail("'name' must be a non-empty string", "name")
    label = f"rule {name!r}: "
    source = r.get("source", "metric" if metric in EVENT_METRICS else "summary")
    if source not in ("summary", "metric"):
        fail(f"{label}source must be 'summary' or 'metric', got {source!r}", "source")
    if not isinstance(metric, str):
        fail(f"{label}'metric' must be a string", "metric")
    if source == "summary" and metric not in SUMMARY_METRICS:
        known = ", ".join([*SUMMARY_METRICS, *sorted(EVENT_METRICS)])
        fail(
            f"{label}unknown metric {metric!r}; built-in metrics: {known}; for a custom metric "
            'published as a Metric event set source = "metric"',
            "metric",
        )
    if source == "metric" and not re.match(METRIC_NAME_PATTERN, metric):
        fail(f"{label}metric name {metric!r} must match {METRIC_NAME_PATTERN}", "metric")
    labels = r.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        fail(f"{label}'labels' must be a table of strings, e.g. {{ tier = \"@first\" }}", "labels")
    if source == "summary":
        allowed = SUMMARY_METRICS[metric]
        for k, v in labels.items():
            if k not in allowed:
                ok = ", ".join(sorted(allowed)) or "none"
                fail(f"{label}label {k!r} does not apply to {metric}; allowed: {ok}", "labels", k)
            if v == "@first" and k != "tier":
                fail(f"{label}'@first' selects a tier; it cannot select {k!r}", "labels", k)
        if len(labels) > 1:
            fail(f"{label}select at most one of tier, agent", "labels")
    cmp = r["comparison"]
    if cmp not in COMPARISONS:
        fail(
            f"{label}comparison must be one of {', '.join(COMPARISONS)}; got {cmp!r}", "comparison"
        )
    th = r["thresholds"]
    if not isinstance(th, dict) or not th:
        fail(f"{label}'thresholds' must be a table like {{ warning = 0.4 }}", "thresholds")
    pairs: list[tuple[str, float]] = []
    for sev, v in th.items():
        if sev not in SEVERITIES:
            fail(f"{label}unknown severity {sev!r}; use {', '.join(SEVERITIES)}", "thresholds", sev)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            fail(f"{label}threshold {sev} must be a number, got {v!r}", "thresholds", sev)
        if metric in RATE_METRICS and not 0 <= v <= 1:
            fail(
                f"{label}{metric} is a fraction in [0, 1]; threshold {sev} = {v} "
                f"(write {v / 100:g} for {v:g}%)",
                "thresholds",
                sev,
            )
        pairs.append((sev, float(v)))
    pairs.sort(key=lambda p: SEVERITY_RANK[p[0]])
    lower_is_worse = cmp in ("<", "<=")
    for (s0, v0), (s1, v1) in itertools.pairwise(pairs):
        if (v1 >= v0) if lower_is_worse else (v1 <= v0):
            way = "lower" if lower_is_worse else "higher"
            fail(
                f"{label}thresholds out of order: with comparison {cmp!r} a more severe "
                f"threshold must be {way}, but {s0} = {v0:g} and {s1} = {v1:g}",
                "thresholds",
                s1,
            )
    for_s = _duration(r.get("for", 0), label, fail)
    hyst = r.get("hysteresis", 0.0)
    if isinstance(hyst, bool) or not isinstance(hyst, int | float) or not hyst >= 0:
        fail(f"{label}hysteresis must be a number >= 0, got {hyst!r}", "hysteresis")
    desc = r.get("description", "")
    if not isinstance(desc, str):
        fail(f"{label}description must be a string", "description")
    return Rule(
        name=name,
        metric=metric,
        comparison=cmp,
        thresholds=tuple(pairs),
        labels=dict(labels),
        for_s=for_s,
        hysteresis=float(hyst),
        source=source,
        description=desc,
        line=line,
    )


def _duration(v: Any, label: str, fail: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        fail(f"{label}'for' must be seconds or a duration like \"30s\", got {v!r}", "for")
    if isinstance(v, str):
        m = _DURATION.match(v)
        if m is None:
            fail(f"{label}'for' must look like 500ms, 30s, 5m, 1h or 1d; got {v!r}", "for")
            raise AssertionError  # unreachable: fail raises
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        seconds = float(v)
    if not seconds >= 0 or not math.isfinite(seconds):
        fail(f"{label}'for' must not be negative, got {v!r}", "for")
    return seconds


class _Locator:
    """Finds the source line of a rule's key (1-based), for error messages."""

    _HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")
    _TABLE = re.compile(r"^\s*\[")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers = [i for i, ln in enumerate(self.lines) if self._HEADER.match(ln)]

    def top(self, key: str) -> int | None:
        pat = re.compile(rf"^\s*(\[+\s*)?[\"']?{re.escape(key)}[\"']?\s*(=|\]|\.)")
        for i, ln in enumerate(self.lines):
            if pat.match(ln):
                return i + 1
        return None

    def find(self, rule: int, key: str | None, sub: str | None) -> int | None:
        if rule >= len(self.headers):
            return None
        start = self.headers[rule]
        end = self.headers[rule + 1] if rule + 1 < len(self.headers) else len(self.lines)
        if key is None:
            return start + 1
        k = re.escape(key)
        key_pat = re.compile(rf"^\s*[\"']?{k}[\"']?\s*(=|\.)")
        table_pat = re.compile(rf"^\s*\[\s*rule\s*\.\s*{k}\s*\]")
        key_line = None
        for i in range(start, end):
            ln = self.lines[i]
            if key_line is None and (key_pat.match(ln) or table_pat.match(ln)):
                key_line = i
                if sub is None:
                    return i + 1
            if key_line is not None and sub is not None:
                s = re.escape(sub)
                if re.search(rf"(^|[\s{{,.])[\"']?{s}[\"']?\s*=", ln):
                    return i + 1
                if i > key_line and self._TABLE.match(ln):
                    break
        return (key_line if key_line is not None else start) + 1
