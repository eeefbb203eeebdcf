"""Seeded synthetic MEMORY_TIER_ACCESS events and an independent truth for them.

The truth is computed with plain counting and numpy, sharing no code with
``tierstream.processors.aggregate``; the tests compare the two.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

import numpy as np

TIERS = ("redis", "postgresql", "chroma")
AGENTS = ("planner", "coder", "critic", "retriever")
HIT_P = {"redis": 0.55, "postgresql": 0.6, "chroma": 0.7}
LAT_MU = {"redis": -0.5, "postgresql": 2.5, "chroma": 3.5}  # lognormal, ms
T0 = 1_700_000_000.0


def make_events(n: int, seed: int = 7, n_queries: int = 3000, window_s: int = 60) -> list[dict]:
    """``n`` valid events in one window starting at ``T0`` with a Zipf(1.1) query mix."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** 1.1 for i in range(n_queries)]
    qids = rng.choices(range(n_queries), weights=weights, k=n)
    out = []
    for i, q in enumerate(qids):
        op = rng.choices(("get", "search", "put"), weights=(6, 3, 1))[0]
        tiers = TIERS if rng.random() < 0.8 else TIERS[:2]
        chain: dict[str, dict[str, Any]] = {}
        served = None
        total = 0.0
        for t in tiers:
            lat = round(rng.lognormvariate(LAT_MU[t], 0.8), 3)
            total += lat
            if rng.random() < 0.02:
                chain[t] = {"latency_ms": lat, "hit": False, "error": "TimeoutError: slow"}
                continue
            hit = rng.random() < (0.9 if op == "put" else HIT_P[t])
            chain[t] = {"latency_ms": lat, "hit": hit}
            if hit:
                served = t
                break
        first = next(iter(chain))
        text = (
            None
            if q % 5 == 0
            else (f"Query number {q}" if rng.random() < 0.5 else f"query number {q}")
        )
        out.append(
            {
                "schema_version": 1,
                "event_type": "memory_tier_access",
                "event_id": f"e{seed}-{i}",
                "ts": T0 + rng.random() * window_s,
                "agent_id": rng.choice(AGENTS),
                "operation": op,
                "query": text,
                "query_fingerprint": f"{q:016x}",
                "tier_accessed": served,
                "tier_latencies": chain,
                "total_latency_ms": round(total + rng.random(), 3),
                "cache_hit": op != "put" and served is not None and served == first,
                "result_count": 1 if served else 0,
            }
        )
    return out


def us(ms: float) -> int:
    return int(ms * 1000.0 + 0.5)


def truth(events: list[dict]) -> dict[str, Any]:
    """Plain counts and exact percentiles (numpy) of ``events``."""
    reads = [e for e in events if e["operation"] != "put"]
    puts = [e for e in events if e["operation"] == "put"]
    t: dict[str, Any] = {
        "events": len(events),
        "reads": len(reads),
        "puts": len(puts),
        "hits": sum(e["tier_accessed"] is not None for e in reads),
        "full_misses": sum(e["tier_accessed"] is None for e in reads),
        "cache_hits": sum(e["cache_hit"] for e in reads),
        "errors": sum(any(a.get("error") for a in e["tier_latencies"].values()) for e in reads),
    }
    tiers: dict[str, Counter] = defaultdict(Counter)
    lat: dict[str, list[int]] = defaultdict(list)
    for e in events:
        is_put = e["operation"] == "put"
        for name, a in e["tier_latencies"].items():
            c = tiers[name]
            c["all_attempts"] += 1
            if is_put:
                c["puts"] += 1
                c["put_stored"] += a["hit"]
                c["put_errors"] += a.get("error") is not None
                continue
            c["attempts"] += 1
            c["hits"] += a["hit"]
            c["errors"] += a.get("error") is not None
            lat[name].append(us(a["latency_ms"]))
        if not is_put and e["tier_accessed"] is not None:
            tiers[e["tier_accessed"]]["served"] += 1
    t["tiers"] = tiers
    t["tier_us"] = {k: np.array(v) for k, v in lat.items()}
    t["total_us"] = np.array([us(e["total_latency_ms"]) for e in reads])
    agents: dict[str, Counter] = defaultdict(Counter)
    for e in events:
        c = agents[e["agent_id"]]
        if e["operation"] == "put":
            c["puts"] += 1
            continue
        c["reads"] += 1
        c["hits"] += e["tier_accessed"] is not None
        c["cache_hits"] += e["cache_hit"]
    t["agents"] = agents
    t["query_counts"] = Counter(e["query_fingerprint"] for e in reads)
    return t
