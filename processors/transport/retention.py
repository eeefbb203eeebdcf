"""Retention: trimming the partition streams of topics that declare it.

Responsible for applying a topic's retention (its metadata hash, written by
``create_topic(retention=...)``: ``retention_ms``; or ``maxlen``) to one
partition stream:

* time: entries whose ``t`` (producer timestamp, ms) is older than
  ``now - retention_ms`` are removed with ``XTRIM key MINID 0-s``, where
  ``s`` is found by a binary search over the dense sequence numbers
  (``XRANGE key 0-mid + COUNT 1``, about log2(length) round trips). The
  search assumes timestamps do not decrease along the stream (true for
  ``send()`` without explicit timestamps); with out-of-order timestamps an
  entry may be kept longer, or an older neighbour trimmed with its
  successors. An entry without ``t`` that the search meets counts as new
  (trimming stops there); one between older entries may be passed over.
* length: ``XTRIM key MAXLEN ~ n`` (approximate: whole radix-tree nodes).

Trimming never changes offsets: the stream's ``last-generated-id`` stays,
so highwaters are unchanged, earliest offsets move up, and a consumer whose
position was trimmed away is reset by ``consumer_auto_offset_reset`` (see
:mod:`.positions`). Compacting topics (table changelogs) are never
time-trimmed here: that would drop live keys (changelog compaction is
:mod:`.compaction`'s job). Which partitions are trimmed, and how often, is
the consumer's business: each worker trims the partitions it owns.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from ...schemas.wire import TIMESTAMP


def _seq(entry_id: bytes) -> int | None:
    return int(entry_id[2:]) if entry_id[:2] == b"0-" else None


def _ts(fields: Any) -> int | None:
    d = fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))
    raw = d.get(TIMESTAMP)
    return int(raw) if raw is not None and raw.isdigit() else None


async def _at_or_after(
    client: aioredis.Redis, key: bytes, seq: int
) -> tuple[int, int | None] | None:
    """``(seq, t)`` of the first dense entry with sequence >= ``seq``."""
    entries: Any = await client.xrange(key, min=f"0-{seq}", max="+", count=1)
    if not entries:
        return None
    entry_id, fields = entries[0]
    s = _seq(entry_id)
    return None if s is None else (s, _ts(fields))


async def first_sequence_to_keep(client: aioredis.Redis, key: bytes, cutoff_ms: int) -> int | None:
    """Smallest sequence whose entry is not older than ``cutoff_ms`` (binary
    search); the last sequence + 1 if every entry is older; None if nothing
    is older (or the stream is empty)."""
    first = await _at_or_after(client, key, 1)
    if first is None:
        return None
    lo, t_first = first
    if t_first is None or t_first >= cutoff_ms:
        return None
    last: Any = await client.xrevrange(key, max="+", min="-", count=1)
    hi = _seq(last[0][0]) if last else None
    if hi is None:
        return None
    hi += 1  # candidate "nothing to keep"
    # Invariant: the entry at lo is older than the cutoff; the first entry at
    # or after hi is kept (hi = last + 1: none).
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found = await _at_or_after(client, key, mid)
        if found is None or found[1] is None or found[1] >= cutoff_ms:
            hi = mid  # no entry between mid and the kept one: keep from mid
        else:
            lo = found[0]
    return hi


async def trim_stream(
    client: aioredis.Redis,
    key: bytes,
    *,
    retention_ms: int | None = None,
    maxlen: int | None = None,
    now_ms: int | None = None,
) -> int:
    """Apply retention to one stream; returns the number of entries removed."""
    removed = 0
    if retention_ms:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        keep_from = await first_sequence_to_keep(client, key, now_ms - retention_ms)
        if keep_from is not None:
            removed += int(await client.execute_command("XTRIM", key, "MINID", f"0-{keep_from}"))
    if maxlen:
        removed += int(await client.execute_command("XTRIM", key, "MAXLEN", "~", maxlen))
    return removed
