"""Cost per tier from a configurable price per access, and its daily projection.

Every attempt on a tier (reads and puts alike: each is a request the tier
serves) costs ``costs[tier]``; tiers missing from the mapping cost 0. The
projection assumes the window is typical of the day:
``daily = cost * 86400 / window_s``. Counts are exact integers; costs are
computed from them when the result is taken, so they are exact up to one
float multiplication and do not depend on batching or merge order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from .batch import Batch, group_batch

SECONDS_PER_DAY = 86_400


class CostAggregator:
    """Accesses per tier, priced when the result is taken."""

    __slots__ = ("accesses", "costs", "window_s")

    def __init__(self, costs: Mapping[str, float] | None = None, window_s: float = 60.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.costs: dict[str, float] = dict(costs or {})
        self.window_s = window_s
        self.accesses: Counter[str] = Counter()

    def add_batch(self, events: Iterable[Mapping[str, Any]]) -> None:
        self.add_grouped(group_batch(events))

    def add_grouped(self, batch: Batch) -> None:
        acc = self.accesses
        for (tier, _put, _hit, _err), n in batch.attempt_keys.items():
            acc[tier] += n

    def add_counts(self, accesses: Mapping[str, int]) -> None:
        self.accesses.update(accesses)

    def merge(self, other: CostAggregator) -> None:
        self.accesses.update(other.accesses)

    def result(self) -> dict[str, Any]:
        """Per tier: accesses, cost_per_access, cost, daily_cost; and the totals."""
        window_s = self.window_s
        tiers = {}
        total = 0.0
        for tier, n in sorted(self.accesses.items()):
            price = float(self.costs.get(tier, 0.0))
            cost = n * price
            total += cost
            tiers[tier] = {
                "accesses": n,
                "cost_per_access": price,
                "cost": cost,
                "daily_cost": cost * SECONDS_PER_DAY / window_s,
            }
        return {"tiers": tiers, "cost": total, "daily_cost": total * SECONDS_PER_DAY / window_s}

    def to_dict(self) -> dict[str, Any]:
        return {
            "costs": dict(sorted(self.costs.items())),
            "window_s": self.window_s,
            "accesses": dict(sorted(self.accesses.items())),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CostAggregator:
        agg = cls(d["costs"], d["window_s"])
        agg.accesses.update({k: int(v) for k, v in d["accesses"].items()})
        return agg
