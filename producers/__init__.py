"""tierstream.producers: what runs inside agent processes.

Instrumented tiers (``producers.tiers``: Redis, PostgreSQL, Chroma, or your
own via ``as_tier``), :class:`TieredMemory` that falls through them and emits
one MEMORY_TIER_ACCESS event per access, and the Publisher that ships events.
"""

from .base import EventSink, Tier
from .errors import AllTiersFailedError, TierError
from .memory import SearchCache, TieredMemory

__all__ = [
    "AllTiersFailedError",
    "EventSink",
    "SearchCache",
    "Tier",
    "TierError",
    "TieredMemory",
]
