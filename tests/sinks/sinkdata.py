"""Synthetic access events with a planned shape, and summaries built from them by the real core.

A *plan* says, per query, how many reads each tier answers; the events are
generated from it with random latencies. Tests compute what they expect from
the events themselves (plain counting), never from the summary.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from tierstream.processors.aggregate import WindowAggregate
from tierstream.schemas.access import validate_access
from tierstream.schemas.summary import validate_summary

TIERS = ("redis", "postgresql", "chroma")
LAT_MS = {"redis": 0.6, "postgresql": 12.0, "chroma": 45.0}  # median per tier
COSTS = {"redis": 0.000001, "postgresql": 0.00001, "chroma": 0.0001}
T0 = 1_700_000_040.0  # a multiple of 60


def read_event(
    rng: random.Random,
    i: int,
    ts: float,
    fp: str,
    served: str | None,
    *,
    text: str | None = None,
    error_tiers: Sequence[str] = (),
    lat_scale: Mapping[str, float] | None = None,
    agent: str = "agent-1",
) -> dict[str, Any]:
    """One ``get``: tiers tried in order until ``served`` (None: all miss)."""
    chain: dict[str, dict[str, Any]] = {}
    total = 0.0
    for t in TIERS:
        scale = (lat_scale or {}).get(t, 1.0)
        lat = round(LAT_MS[t] * scale * rng.lognormvariate(0, 0.3), 3)
        total += lat
        if t in error_tiers:
            chain[t] = {"latency_ms": lat, "hit": False, "error": "TimeoutError: slow"}
            continue
        hit = t == served
        chain[t] = {"latency_ms": lat, "hit": hit}
        if hit:
            break
    ev = {
        "schema_version": 1,
        "event_type": "memory_tier_access",
        "event_id": f"e{i}",
        "ts": ts,
        "agent_id": agent,
        "operation": "get",
        "query": text,
        "query_fingerprint": fp,
        "tier_accessed": served,
        "tier_latencies": chain,
        "total_latency_ms": round(total + 0.05, 3),
        "cache_hit": served == TIERS[0],
        "result_count": 1 if served else 0,
    }
    return validate_access(ev)


def window_events(
    plan: Mapping[str, Mapping[str, int]],
    start: float,
    seed: int,
    *,
    window_s: float = 60.0,
    background: int = 300,
    error_rate: Mapping[str, float] | None = None,
    lat_scale: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Events of one window: ``plan[fp][tier] = reads`` plus ``background`` reads of
    distinct cold queries (1 read each, answered by a random tier)."""
    rng = random.Random(seed)
    jobs: list[tuple[str, str | None]] = []
    for fp, per_tier in plan.items():
        for tier, n in per_tier.items():
            jobs += [(fp, tier)] * n
    for b in range(background):
        jobs.append((f"cold{seed:04d}{b:08d}", rng.choice(TIERS)))
    rng.shuffle(jobs)
    out = []
    for i, (fp, served) in enumerate(jobs):
        errs = [t for t, p in (error_rate or {}).items() if t != served and rng.random() < p]
        out.append(
            read_event(
                rng,
                i,
                start + rng.random() * window_s * 0.999,
                fp,
                served,
                text=None if fp.startswith("red") else f"text of {fp}",
                error_tiers=errs,
                lat_scale=lat_scale,
            )
        )
    return out


def summarize(events: Sequence[Mapping[str, Any]], start: float, window_s: float = 60.0) -> dict:
    """The WindowSummary the real aggregation core makes of ``events``."""
    agg = WindowAggregate(start, start + window_s, COSTS, capacity=4096)
    agg.add_batch(events)
    return validate_summary(agg.summary(top=50))
