"""Publisher drop rates as Metric events, from the stats hashes publishers write.

Each :class:`producers.publisher.Publisher` writes ``sent`` and ``dropped``
(cumulative counters) to ``ts:publisher:<id>`` every few seconds
(:func:`schemas.names.publisher_stats_key`). :func:`read_publisher_stats`
reads them all; :func:`drop_rate_metrics` turns two successive readings into
``publisher_drop_rate`` Metric events (label ``publisher``), which
``AlertEvaluator.observe_metric`` evaluates:

``rate = d_dropped / (d_dropped + d_sent)`` over the interval between the
readings; for a publisher seen for the first time, or whose counters went
down (it restarted), the cumulative counters are used. A publisher that
neither sent nor dropped anything in the interval gives no event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from ..schemas.metric import metric_event
from ..schemas.names import publisher_stats_key

_PREFIX = publisher_stats_key("")


async def read_publisher_stats(client: aioredis.Redis) -> dict[str, dict[str, float]]:
    """publisher id -> {"sent", "dropped", "ts"} of every publisher stats hash."""
    out: dict[str, dict[str, float]] = {}
    async for raw in client.scan_iter(match=f"{_PREFIX}*", count=500):
        key = raw.decode() if isinstance(raw, bytes) else raw
        h = await client.hgetall(key)
        fields = {(k.decode() if isinstance(k, bytes) else k): v for k, v in h.items()}
        try:
            out[key[len(_PREFIX) :]] = {
                f: float(fields[f]) for f in ("sent", "dropped", "ts") if f in fields
            }
        except ValueError:
            continue  # not written by a Publisher
    return out


def drop_rate_metrics(
    current: Mapping[str, Mapping[str, Any]],
    previous: Mapping[str, Mapping[str, Any]] | None,
    ts: float,
) -> list[dict[str, Any]]:
    """``publisher_drop_rate`` Metric events at time ``ts`` (see module docstring)."""
    out = []
    for pid, cur in sorted(current.items()):
        sent, dropped = float(cur.get("sent", 0)), float(cur.get("dropped", 0))
        prev = (previous or {}).get(pid)
        if prev is not None:
            ds, dd = sent - float(prev.get("sent", 0)), dropped - float(prev.get("dropped", 0))
            if ds >= 0 and dd >= 0:
                sent, dropped = ds, dd
        if sent + dropped <= 0:
            continue
        out.append(
            metric_event(
                "publisher_drop_rate",
                dropped / (sent + dropped),
                ts,
                {"publisher": pid},
                source="tierstream.sinks.publishers",
            )
        )
    return out
