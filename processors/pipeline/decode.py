"""Decoding and validating one access-topic entry (pure, no I/O).

An entry's value is one MEMORY_TIER_ACCESS object or a JSON array of them
(``schemas/wire.py``). :func:`decode_entry_events` returns the valid events
and a :class:`BadEvent` for everything else: the whole value when it is not
JSON (``index`` None), or one array item that
:func:`schemas.access.validate_access` rejects (with its index and that
function's message). The caller dead-letters the bad ones; nothing is dropped
silently.

Far-future events: given the entry's producer timestamp ``produced_at``
(epoch seconds: the entry's ``t`` field, or the read time when it has none),
a valid event with ``ts > produced_at + max_ahead_s`` is bad too. Windows
close by event time, so one event stamped hours ahead (a wrong clock, ms
instead of s within range) would otherwise close every open window of its
partition early and make the real events late. The verdict depends only on
the entry, so live and replay agree (for entries that carry ``t``, as every
entry the Publisher and the transport write does).

The fast path: :func:`feed_entry` first asks the C scanner
(``tierstream._native.scan``) for the entry already validated and grouped,
straight from its JSON. The scanner answers only for entries it vouches for
(every event valid, all in one window, none far ahead, JSON it parses exactly
as orjson does); anything else takes the reference path below, so verdicts,
dead letters and results are the same either way.

Cost (reference path): the value is decoded once (orjson) and the items are checked with
:func:`schemas.access.check_access_batch`, the compiled validator with the
same verdicts and messages as ``validate_access`` at about a third of its
cost; valid events are returned as decoded (no copies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ...native import ext as _native
from ...schemas.access import NATIVE_PLAN, check_access_batch
from ...schemas.errors import TierstreamError
from ...schemas.wire import decode_events
from ..aggregate.batch import native_batch
from .partition import Partial, PartitionWindows


@dataclass(frozen=True, slots=True)
class BadEvent:
    """Something in an entry that is not a valid event."""

    #: position in the entry's array (0 for a single object); None: the whole value
    index: int | None
    reason: str
    #: the offending bytes (the item re-encoded, or the whole value)
    raw: bytes


def decode_entry_events(
    value: bytes | None, produced_at: float | None = None, max_ahead_s: float | None = None
) -> tuple[list[dict[str, Any]], list[BadEvent]]:
    """``(valid events, bad events)`` of one entry value; with ``produced_at`` and
    ``max_ahead_s``, events too far ahead of the entry are bad (module docstring)."""
    if value is None:
        return [], [BadEvent(None, "entry has a null value (tombstone)", b"")]
    try:
        items = decode_events(value)
    except TierstreamError as exc:
        return [], [BadEvent(None, str(exc), value)]
    good, errors = check_access_batch(items)
    bad = [BadEvent(i, str(exc), orjson.dumps(items[i])) for i, exc in errors]
    if produced_at is not None and max_ahead_s is not None and good:
        limit = produced_at + max_ahead_s
        if max([ev["ts"] for ev in good]) > limit:
            good, bad = _split_far_future(items, good, bad, produced_at, max_ahead_s)
    return good, bad  # type: ignore[return-value]


def _split_far_future(
    items: list[Any],
    good: list[Any],
    bad: list[BadEvent],
    produced_at: float,
    max_ahead_s: float,
) -> tuple[list[Any], list[BadEvent]]:
    limit = produced_at + max_ahead_s
    valid = {id(ev) for ev in good}
    kept: list[Any] = []
    for i, item in enumerate(items):
        if id(item) not in valid:
            continue
        ts = item["ts"]
        if ts > limit:
            reason = (
                f"ts: {ts} is {ts - produced_at:.3f} s ahead of its entry's producer "
                f"timestamp {produced_at} (more than max_ahead_s={max_ahead_s:g}): a "
                "far-future event would close windows early"
            )
            bad.append(BadEvent(i, reason, orjson.dumps(item)))
        else:
            kept.append(item)
    bad.sort(key=lambda b: -1 if b.index is None else b.index)
    return kept, bad


def feed_entry(
    pw: PartitionWindows,
    offset: int,
    value: bytes | None,
    produced_at: float | None,
    max_ahead_s: float | None,
    keep: tuple[float, float] | None = None,
) -> tuple[list[Partial], list[BadEvent], int]:
    """Feed one entry to its partition's windows: ``(partials closed, bad events,
    events aggregated)``. ``keep``: only events with ``since <= ts < until``
    (replay). The C scan when it vouches for the entry, else the reference path."""
    if NATIVE_PLAN is not None and type(value) is bytes:
        assert _native is not None
        r = _native.scan(NATIVE_PLAN, value)
        if r is not None:
            n, lo, hi, *parts = r
            inside = keep is None or not n or (keep[0] <= lo and hi < keep[1])
            near = produced_at is None or max_ahead_s is None or hi <= produced_at + max_ahead_s
            if inside and (near or not n):
                batch = native_batch(n, *parts)
                out = pw.add_grouped(offset, n, lo, hi, batch)
                if out is not None:
                    return out, [], n
    events, bad = decode_entry_events(value, produced_at, max_ahead_s)
    if keep is not None:
        events = [e for e in events if keep[0] <= e["ts"] < keep[1]]
    return pw.add(offset, events), bad, len(events)
