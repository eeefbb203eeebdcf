"""The Redis tier (typically L1): key/value and cached search results in Redis.

Values are JSON (orjson) under ``<prefix><key>``; search results are a JSON
array under ``<prefix>search:<digest of the normalized query>`` (see
:func:`search_cache_key`). Redis does not search: ``search`` is a lookup of
results cached earlier by :meth:`RedisTier.put_search`, which
``TieredMemory`` calls when a slower tier answered a search.

TTLs are seconds (float); whole seconds are sent as ``SET ... EX``, anything
else as ``SET ... PX``. ``default_ttl`` applies when a put gives none, so
values written back by ``TieredMemory`` expire too.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from . import search_cache_key


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")


class RedisTier:
    """A :class:`~tierstream.producers.base.Tier` on ``redis.asyncio``.

    ``client_or_url`` is a ``redis.asyncio.Redis`` (the caller keeps owning it;
    :meth:`close` leaves it open) or a ``redis://`` URL (the tier creates the
    client and :meth:`close` closes it).
    """

    def __init__(
        self,
        client_or_url: aioredis.Redis | str,
        name: str = "redis",
        prefix: str = "mem:",
        default_ttl: float | None = None,
    ) -> None:
        _check_ttl(default_ttl)
        if isinstance(client_or_url, str):
            self._client: aioredis.Redis = aioredis.Redis.from_url(client_or_url)
            self._owns_client = True
        else:
            self._client = client_or_url
            self._owns_client = False
        self.name = name
        self.prefix = prefix
        self.default_ttl = default_ttl

    @property
    def client(self) -> aioredis.Redis:
        return self._client

    def key(self, key: str) -> str:
        """The Redis key holding ``key``'s value."""
        return self.prefix + key

    async def get(self, key: str) -> Any | None:
        raw = await self._client.get(self.prefix + key)
        return None if raw is None else orjson.loads(raw)

    async def search(self, query: str, limit: int = 10) -> list[Any]:
        raw = await self._client.get(self.prefix + search_cache_key(query))
        if raw is None:
            return []
        results = orjson.loads(raw)
        return results[:limit] if isinstance(results, list) else [results]

    async def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        await self._set(self.prefix + key, value, ttl)

    async def put_search(self, query: str, results: list[Any], ttl: float | None = None) -> None:
        """Cache ``results`` as the answer to ``query``."""
        await self._set(self.prefix + search_cache_key(query), list(results), ttl)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        return bool(await self._client.delete(self.prefix + key))

    async def _set(self, rkey: str, value: Any, ttl: float | None) -> None:
        _check_ttl(ttl)
        ttl = self.default_ttl if ttl is None else ttl
        data = orjson.dumps(value)
        if ttl is None:
            await self._client.set(rkey, data)
        elif float(ttl).is_integer():
            await self._client.set(rkey, data, ex=int(ttl))
        else:
            await self._client.set(rkey, data, px=max(1, round(ttl * 1000)))

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def __repr__(self) -> str:
        return f"RedisTier(name={self.name!r}, prefix={self.prefix!r})"
