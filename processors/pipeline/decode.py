"""Decoding and validating one access-topic entry (pure, no I/O).

An entry's value is one MEMORY_TIER_ACCESS object or a JSON array of them
(``schemas/wire.py``). :func:`decode_entry_events` returns the valid events
and a :class:`BadEvent` for everything else: the whole value when it is not
JSON (``index`` None), or one array item that
:func:`schemas.access.validate_access` rejects (with its index and that
function's message). The caller dead-letters the bad ones; nothing is dropped
silently.

Cost: the value is decoded once (orjson) and the items are checked with
:func:`schemas.access.check_access_batch`, the compiled validator with the
same verdicts and messages as ``validate_access`` at about a third of its
cost; valid events are returned as decoded (no copies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ...schemas.access import check_access_batch
from ...schemas.errors import TierstreamError
from ...schemas.wire import decode_events


@dataclass(frozen=True, slots=True)
class BadEvent:
    """Something in an entry that is not a valid event."""

    #: position in the entry's array (0 for a single object); None: the whole value
    index: int | None
    reason: str
    #: the offending bytes (the item re-encoded, or the whole value)
    raw: bytes


def decode_entry_events(value: bytes | None) -> tuple[list[dict[str, Any]], list[BadEvent]]:
    """``(valid events, bad events)`` of one entry value."""
    if value is None:
        return [], [BadEvent(None, "entry has a null value (tombstone)", b"")]
    try:
        items = decode_events(value)
    except TierstreamError as exc:
        return [], [BadEvent(None, str(exc), value)]
    good, errors = check_access_batch(items)
    if not errors:
        return good, []  # type: ignore[return-value]
    bad = [BadEvent(i, str(exc), orjson.dumps(items[i])) for i, exc in errors]
    return good, bad  # type: ignore[return-value]
