"""The interfaces of the producer side: a memory tier, and where events go.

``Tier`` is what ``TieredMemory`` falls through; ``EventSink`` is what it
emits MEMORY_TIER_ACCESS events to (a ``Publisher``, or anything with
``emit``). Both are Protocols: implement them without inheriting.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..schemas.access import AccessEvent


@runtime_checkable
class Tier(Protocol):
    """One tier of an agent's memory.

    ``get`` returns ``None`` on a miss; ``search`` returns ``[]`` on a miss.
    A tier signals failure by raising any exception; ``TieredMemory`` records
    it in the event and falls through to the next tier.
    """

    name: str

    async def get(self, key: str) -> Any | None: ...

    async def search(self, query: str, limit: int = 10) -> list[Any]: ...

    async def put(self, key: str, value: Any, ttl: float | None = None) -> None: ...

    async def close(self) -> None: ...


class EventSink(Protocol):
    """Receives every event. ``emit`` must not block and must not raise."""

    def emit(self, event: AccessEvent) -> None: ...
