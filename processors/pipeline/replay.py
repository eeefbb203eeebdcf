"""Replay: the live pipeline's machines run offline over the stored access stream.

:func:`replay` reads every partition of the access topic with ``XRANGE`` (in
chunks, round robin over the partitions so their event time advances
together), keeps the events whose ``ts`` is in ``[since, until)``, feeds one
:class:`PartitionWindows` per partition and one :class:`WindowMerger`, exactly
as the live app does, and returns the WindowSummary records of the view
windows that lie inside ``[since, until)`` (both rounded outwards to the base
window), the last revision of each.

Where replay and live can differ, by design:

- Windows close by event time only in replay (and all of them at the end);
  live also closes by wall clock once a partition is caught up. An event that
  live received after its window had closed by wall clock is ``late`` live
  (counted, not aggregated) but aggregated by replay. With a backlog the live
  worker closes by event time too, so for events already stored when the
  worker reads them both give identical summaries (the tests check this).
- Invalid events are counted (``bad_events``) but not dead-lettered again;
  that includes far-future events (see :mod:`.decode`), judged against the
  entry's ``t`` as live does (an entry without ``t`` is judged against the
  read time, which differs between live and replay).
- A window closed live by the merge timeout before every partition reported
  (``complete: false``) is complete in replay.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from ...schemas import names
from ...schemas.wire import VALUE
from .config import PipelineConfig
from .decode import feed_entry
from .live import entry_time
from .merger import WindowMerger
from .partition import Partial, PartitionWindows

CHUNK = 1000
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: float) -> float:
    """Epoch seconds of ``text``: ISO 8601 (naive means UTC), a relative age like
    ``2h``/``30m``/``45s``/``1d`` (that long before ``now``), or epoch seconds."""
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"cannot read time {text!r}: use ISO 8601 (2024-05-01T12:00:00Z), "
            "a relative age (2h, 30m, 45s, 1d) or epoch seconds"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


@dataclass
class ReplayResult:
    summaries: list[dict[str, Any]] = field(default_factory=list)
    partitions: int = 0
    entries: int = 0
    events: int = 0
    bad_events: int = 0
    since: int = 0
    until: int = 0


async def replay(
    redis_url: str,
    cfg: PipelineConfig,
    since: float,
    until: float,
    topic: str = names.ACCESS_TOPIC,
) -> ReplayResult:
    """Summaries of the stored events with ``since <= ts < until`` (see module docstring)."""
    if until <= since:
        raise ValueError("--until must be after --since")
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.hget(names.topic_meta_key(topic), "partitions")
        cfg = replace(cfg, partitions=int(raw) if raw else cfg.partitions)
        base = cfg.base_s
        res = ReplayResult(
            partitions=cfg.partitions,
            since=math.floor(since / base) * base,
            until=math.ceil(until / base) * base,
        )
        merger = WindowMerger(cfg)
        found: dict[tuple[str, float], dict[str, Any]] = {}

        def send(partials: list[Partial]) -> None:
            for part in partials:
                for s in merger.add(part.to_message(), 0.0):
                    found[(s["view"], s["window_start"])] = s

        machines = {p: PartitionWindows(p, cfg) for p in range(cfg.partitions)}
        cursor = dict.fromkeys(machines, 0)
        while cursor:
            for p in sorted(cursor):
                key = names.stream_key(topic, p)
                entries: Any = await client.xrange(key, min=f"0-{cursor[p] + 1}", count=CHUNK)
                if not entries:
                    del cursor[p]
                    send(machines[p].close_all(res.until))
                    continue
                pw = machines[p]
                for entry_id, fields in entries:
                    off = int(entry_id.split(b"-")[1]) - 1
                    cursor[p] = off + 1
                    if VALUE not in fields:
                        continue
                    out, bad, n = feed_entry(
                        pw, off, fields[VALUE], entry_time(fields), cfg.max_ahead_s, (since, until)
                    )
                    res.entries += 1
                    res.bad_events += len(bad)
                    res.events += n
                    send(out)
        for s in merger.flush(res.until):
            found[(s["view"], s["window_start"])] = s
        res.summaries = [
            found[k]
            for k in sorted(found, key=lambda k: (found[k]["window_end"], k[0]))
            if found[k]["window_start"] >= res.since and found[k]["window_end"] <= res.until
        ]
        return res
    finally:
        await client.aclose()
