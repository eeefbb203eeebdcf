"""Errors raised by instrumented memories (all subclass TierstreamError)."""

from __future__ import annotations

from ..schemas.errors import TierstreamError


class TierError(TierstreamError):
    """A tier failed. ``tier`` names it; ``__cause__`` is the original exception."""

    def __init__(self, tier: str, message: str) -> None:
        self.tier = tier
        super().__init__(f"tier {tier!r}: {message}")


class AllTiersFailedError(TierstreamError):
    """Every tier of a TieredMemory raised during one access.

    ``errors`` maps tier name to the error text recorded in the event (which is
    still emitted); ``event_id`` is that event's id.
    """

    def __init__(self, operation: str, errors: dict[str, str], event_id: str) -> None:
        self.operation = operation
        self.errors = errors
        self.event_id = event_id
        detail = "; ".join(f"{t}: {e}" for t, e in errors.items())
        super().__init__(f"{operation}: every tier failed ({detail}); event {event_id}")


class PublisherClosedError(TierstreamError):
    """``Publisher.start()`` after ``close()``; a closed publisher cannot restart."""
