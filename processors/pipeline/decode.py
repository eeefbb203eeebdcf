"""Decoding and validating one access-topic entry (pure, no I/O).

An entry's value is one MEMORY_TIER_ACCESS object or a JSON array of them
(``schemas/wire.py``). :func:`decode_entry_events` returns the valid events
and a :class:`BadEvent` for everything else: the whole value when it is not
JSON (``index`` None), or one array item that fails
:func:`schemas.access.validate_access` (with its index and the reason). The
caller dead-letters the bad ones; nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ...schemas.access import validate_access
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
    good: list[dict[str, Any]] = []
    bad: list[BadEvent] = []
    for i, item in enumerate(items):
        try:
            good.append(validate_access(item))  # type: ignore[arg-type]
        except TierstreamError as exc:
            bad.append(BadEvent(i, str(exc), orjson.dumps(item)))
    return good, bad
