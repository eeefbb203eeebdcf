"""Which tier is tried first, read off a WindowSummary.

A WindowSummary lists tiers by name, not in the order an agent tries them.
The order is the configured one when given (tiers it does not name follow,
inferred); otherwise it is inferred: in a fall-through memory every read
tries the first tier and each later tier is tried only after the earlier ones
missed, so read attempts never increase along the chain. Tiers are ordered by
read attempts (most first), ties by median latency (fastest first), then by
name, so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def tier_order(summary: Mapping[str, Any], configured: Sequence[str] = ()) -> list[str]:
    """Tier names of ``summary`` in the order tried (see module docstring)."""
    tiers: Mapping[str, Any] = summary.get("tiers") or {}
    named = [t for t in configured if t in tiers]

    def key(name: str) -> tuple[int, float, str]:
        t = tiers[name]
        p50 = (t.get("latency") or {}).get("p50_ms")
        return (-int(t.get("attempts", 0)), float("inf") if p50 is None else p50, name)

    rest = sorted((t for t in tiers if t not in named), key=key)
    return named + rest


def first_tier(summary: Mapping[str, Any], configured: Sequence[str] = ()) -> str | None:
    order = tier_order(summary, configured)
    return order[0] if order else None
