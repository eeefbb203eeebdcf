"""One window's aggregate: counts, latency histograms, hot queries and cost together.

A :class:`WindowAggregate` is what one partition accumulates for one window
(``add_batch``), what travels to the merge step (``to_dict``/``from_dict``,
JSON-safe), what the merge step combines (``merge``) and what it finally
publishes (``summary()``, a ``WindowSummary`` record, see
``schemas/summary.py``).

Each batch is grouped once (:func:`.batch.group_batch`) and every aggregator
consumes the grouped batch. Everything except the hot-query summary is exact
and independent of batch boundaries and merge order; the hot-query summary
is within its stated bound (:mod:`.heavy`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ...schemas.summary import SUMMARY_TYPE, SUMMARY_VERSION
from .batch import Batch, group_batch
from .cost import CostAggregator
from .counts import AccessCounts
from .heavy import DEFAULT_CAPACITY, DEFAULT_TOP, HeavyHitters
from .latency import LatencyAggregator, LatencyHistogram

#: Version of the partial's ``to_dict`` form (bumped on incompatible change).
PARTIAL_VERSION = 1


class WindowAggregate:
    """Mergeable aggregate of the events of window ``[start, end)``."""

    __slots__ = ("cost", "counts", "end", "events", "heavy", "late", "latency", "start")

    def __init__(
        self,
        start: float,
        end: float,
        costs: Mapping[str, float] | None = None,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        if end <= start:
            raise ValueError(f"window end {end} must be after its start {start}")
        self.start = start
        self.end = end
        self.events = 0
        self.late = 0
        self.counts = AccessCounts()
        self.latency = LatencyAggregator()
        self.heavy = HeavyHitters(capacity)
        self.cost = CostAggregator(costs, end - start)

    @property
    def window_s(self) -> float:
        return self.end - self.start

    def add_batch(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Aggregate a batch of validated events that belong to this window."""
        self.add_grouped(group_batch(events))

    def add_grouped(self, batch: Batch) -> None:
        """Aggregate a batch already grouped (``group_batch``, or the C scan of an entry)."""
        self.events += batch.events
        self.counts.add_grouped(batch)
        self.latency.add_grouped(batch)
        self.heavy.add_grouped(batch)
        self.cost.add_grouped(batch)

    def add_late(self, n: int = 1) -> None:
        """Count ``n`` events that arrived after this window closed (not aggregated)."""
        self.late += n

    def merge(self, other: WindowAggregate) -> None:
        """Add another partial of the same window into this one."""
        if (other.start, other.end) != (self.start, self.end):
            raise ValueError(
                f"cannot merge window [{other.start}, {other.end}) into [{self.start}, {self.end})"
            )
        self.events += other.events
        self.late += other.late
        self.counts.merge(other.counts)
        self.latency.merge(other.latency)
        self.heavy.merge(other.heavy)
        self.cost.merge(other.cost)

    def summary(self, top: int = DEFAULT_TOP) -> dict[str, Any]:
        """The WindowSummary record of this window (validate with ``validate_summary``)."""
        counts = self.counts.result()
        lat = self.latency.result()
        cost = self.cost.result()
        empty = LatencyHistogram().result()
        tiers = {}
        for name, t in counts["tiers"].items():
            c = cost["tiers"].get(name, {"cost_per_access": 0.0, "cost": 0.0, "daily_cost": 0.0})
            tiers[name] = {
                **t,
                "latency": lat["tiers"].get(name, empty),
                "cost_per_access": c["cost_per_access"],
                "cost": c["cost"],
                "daily_cost": c["daily_cost"],
            }
        return {
            "schema_version": SUMMARY_VERSION,
            "record_type": SUMMARY_TYPE,
            "window_start": self.start,
            "window_end": self.end,
            "window_s": self.window_s,
            "events": self.events,
            "late_events": self.late,
            "reads": counts["reads"],
            "puts": counts["puts"],
            "hits": counts["hits"],
            "full_misses": counts["full_misses"],
            "cache_hits": counts["cache_hits"],
            "errors": counts["errors"],
            "put_errors": counts["put_errors"],
            "hit_rate": counts["hit_rate"],
            "cache_effectiveness": counts["cache_effectiveness"],
            "latency": lat["end_to_end"],
            "tiers": tiers,
            "agents": counts["agents"],
            "hot_queries": self.heavy.result(top),
            "hot_queries_capacity": self.heavy.capacity,
            "hot_queries_total": self.heavy.n,
            "hot_queries_error_bound": self.heavy.error_bound,
            "cost": cost["cost"],
            "daily_cost": cost["daily_cost"],
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe partial, for sending between workers."""
        return {
            "version": PARTIAL_VERSION,
            "start": self.start,
            "end": self.end,
            "events": self.events,
            "late": self.late,
            "counts": self.counts.to_dict(),
            "latency": self.latency.to_dict(),
            "heavy": self.heavy.to_dict(),
            "cost": self.cost.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowAggregate:
        if d.get("version") != PARTIAL_VERSION:
            raise ValueError(f"unknown window partial version {d.get('version')!r}")
        agg = cls(d["start"], d["end"])
        agg.events = int(d["events"])
        agg.late = int(d["late"])
        agg.counts = AccessCounts.from_dict(d["counts"])
        agg.latency = LatencyAggregator.from_dict(d["latency"])
        agg.heavy = HeavyHitters.from_dict(d["heavy"])
        agg.cost = CostAggregator.from_dict(d["cost"])
        return agg
