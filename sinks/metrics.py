"""Prometheus text exposition (format 0.0.4) of the worker's state: for ``/metrics``.

Pure: :func:`render_metrics` turns a :class:`MetricsState` (filled by the
worker) into the exposition text; the web view only serves it with
:data:`CONTENT_TYPE`. Every family has ``# HELP`` and ``# TYPE`` lines; label
values are escaped (backslash, double quote, newline); a value that is null
(a rate with no reads) is left out rather than exported as 0.

Window figures (``tierstream_window_*``, ``tierstream_tier_*``) describe the
last closed window only, so they are gauges; the ``*_total`` families are
counters that only grow for the life of the process (or of the Redis counter
they mirror).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_QUANTILES = (
    ("0.5", "p50_ms"),
    ("0.9", "p90_ms"),
    ("0.95", "p95_ms"),
    ("0.99", "p99_ms"),
    ("0.999", "p999_ms"),
)


@dataclass
class MetricsState:
    """What ``/metrics`` exports; the worker updates it, :func:`render_metrics` reads it."""

    #: the last closed WindowSummary, or None before the first
    last_summary: Mapping[str, Any] | None = None
    #: access events aggregated by this worker
    events_processed: int = 0
    #: (topic, partition) -> highwater - committed offset
    consumer_lag: Mapping[tuple[str, int], int] = field(default_factory=dict)
    #: topic -> dead letters ever written (``schemas.names.dead_letter_count_key``)
    dead_letters: Mapping[str, int] = field(default_factory=dict)
    #: publisher id -> its stats hash (``sent``, ``dropped``), see ``sinks.publishers``
    publishers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: severity -> alerts firing now
    alerts_firing: Mapping[str, int] = field(default_factory=dict)
    #: suggestions published by this worker
    suggestions_published: int = 0


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if isinstance(v, int) or (float(v).is_integer() and abs(v) < 1e15):
        return str(int(v))
    return repr(float(v))


Sample = tuple[Mapping[str, str], float | None]


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        rows = [(labels, v) for labels, v in samples if v is not None]
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, v in rows:
            assert v is not None
            if labels:
                inner = ",".join(f'{k}="{escape_label(str(x))}"' for k, x in labels.items())
                self.lines.append(f"{name}{{{inner}}} {_number(v)}")
            else:
                self.lines.append(f"{name} {_number(v)}")


def render_metrics(state: MetricsState) -> str:
    """The exposition text of ``state`` (ends with a newline)."""
    w = _Writer()
    s = state.last_summary
    if s is not None:
        lat = s.get("latency") or {}
        tiers: Mapping[str, Any] = s.get("tiers") or {}
        w.family(
            "tierstream_window_end_seconds",
            "gauge",
            "End of the last closed window, epoch seconds.",
            [({}, s["window_end"])],
        )
        w.family(
            "tierstream_window_reads", "gauge", "Reads in the last window.", [({}, s["reads"])]
        )
        w.family(
            "tierstream_window_hit_rate",
            "gauge",
            "Reads some tier answered / reads, last window.",
            [({}, s["hit_rate"])],
        )
        w.family(
            "tierstream_window_cache_effectiveness",
            "gauge",
            "Reads the first tier answered / reads, last window.",
            [({}, s["cache_effectiveness"])],
        )
        w.family(
            "tierstream_window_latency_ms",
            "gauge",
            "End-to-end read latency quantiles of the last window, ms.",
            [({"quantile": q}, lat.get(k)) for q, k in _QUANTILES],
        )
        w.family(
            "tierstream_tier_hit_rate",
            "gauge",
            "Hits / read attempts per tier, last window.",
            [({"tier": n}, t["hit_rate"]) for n, t in sorted(tiers.items())],
        )
        w.family(
            "tierstream_tier_served",
            "gauge",
            "Reads each tier answered, last window.",
            [({"tier": n}, t["served"]) for n, t in sorted(tiers.items())],
        )
        w.family(
            "tierstream_tier_errors",
            "gauge",
            "Read attempts that raised, last window.",
            [({"tier": n}, t["errors"]) for n, t in sorted(tiers.items())],
        )
        w.family(
            "tierstream_tier_latency_ms",
            "gauge",
            "Read latency quantiles per tier of the last window, ms.",
            [
                ({"tier": n, "quantile": q}, t["latency"].get(k))
                for n, t in sorted(tiers.items())
                for q, k in _QUANTILES
            ],
        )
    w.family(
        "tierstream_events_processed_total",
        "counter",
        "Access events aggregated by this worker.",
        [({}, state.events_processed)],
    )
    w.family(
        "tierstream_consumer_lag",
        "gauge",
        "Entries not yet consumed per topic partition (highwater - position).",
        [
            ({"topic": t, "partition": str(p)}, lag)
            for (t, p), lag in sorted(state.consumer_lag.items())
        ],
    )
    w.family(
        "tierstream_dead_letters_total",
        "counter",
        "Entries or events moved to a dead-letter stream, per topic.",
        [({"topic": t}, n) for t, n in sorted(state.dead_letters.items())],
    )
    w.family(
        "tierstream_publisher_dropped_total",
        "counter",
        "Events a publisher dropped (buffer full or not written at close).",
        [({"publisher": p}, _num(st.get("dropped"))) for p, st in sorted(state.publishers.items())],
    )
    w.family(
        "tierstream_publisher_sent_total",
        "counter",
        "Events a publisher wrote and Redis acknowledged.",
        [({"publisher": p}, _num(st.get("sent"))) for p, st in sorted(state.publishers.items())],
    )
    w.family(
        "tierstream_alerts_firing",
        "gauge",
        "Alerts firing now, per severity.",
        [({"severity": k}, n) for k, n in sorted(state.alerts_firing.items())],
    )
    w.family(
        "tierstream_suggestions_published_total",
        "counter",
        "Suggestions published by this worker.",
        [({}, state.suggestions_published)],
    )
    return "\n".join(w.lines) + "\n"


def _num(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
