"""The PostgreSQL tier (typically L2): durable key/value on an asyncpg pool.

One table, created when missing::

    CREATE TABLE IF NOT EXISTS <table> (
        key        text PRIMARY KEY,
        value      jsonb NOT NULL,
        expires_at timestamptz NULL,
        updated_at timestamptz NOT NULL DEFAULT now())

``put`` upserts; a row whose ``expires_at`` has passed is a miss (and is
removed by :meth:`PostgresTier.purge_expired`, which nothing calls for you).
Like Redis, PostgreSQL does not search here: ``search`` looks up results
cached under the query's key (:func:`search_cache_key`) by ``put_search``.

The table name is an identifier checked against a strict pattern (optionally
schema-qualified), because identifiers cannot be bound as query parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import asyncpg
import orjson

from . import search_cache_key

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")


def _check_ttl(ttl: float | None) -> None:
    if ttl is not None and not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")


class PostgresTier:
    """A :class:`~tierstream.producers.base.Tier` on an asyncpg pool.

    ``dsn_or_pool`` is an ``asyncpg.Pool`` (the caller owns it; :meth:`close`
    leaves it open) or a DSN (the tier creates a pool of ``min_size`` ..
    ``max_size`` connections on first use, giving up a connection attempt
    after ``connect_timeout`` seconds, and :meth:`close` closes it). The
    table is created on first use.
    """

    def __init__(
        self,
        dsn_or_pool: asyncpg.Pool | str,
        name: str = "postgresql",
        table: str = "tierstream_memory",
        *,
        default_ttl: float | None = None,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout: float = 5.0,
    ) -> None:
        if not _IDENT.match(table):
            raise ValueError(
                f"invalid table name {table!r}: use letters, digits and underscores "
                "(optionally schema.table), not starting with a digit, at most 63 each"
            )
        _check_ttl(default_ttl)
        self.name = name
        self.table = table
        self.default_ttl = default_ttl
        self._dsn: str | None = dsn_or_pool if isinstance(dsn_or_pool, str) else None
        self._pool: asyncpg.Pool | None = None if isinstance(dsn_or_pool, str) else dsn_or_pool
        self._owns_pool = isinstance(dsn_or_pool, str)
        self._pool_args = {"min_size": min_size, "max_size": max_size, "timeout": connect_timeout}
        self._ready = False
        self._lock = asyncio.Lock()
        self._closed = False
        t = table
        self._sql_get = (
            f"SELECT value::text FROM {t} WHERE key = $1 "
            "AND (expires_at IS NULL OR expires_at > now())"
        )
        self._sql_put = (
            f"INSERT INTO {t} (key, value, expires_at, updated_at) "
            "VALUES ($1, $2::jsonb, now() + make_interval(secs => $3::float8), now()) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, "
            "expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at"
        )
        self._sql_create = (
            f"CREATE TABLE IF NOT EXISTS {t} (key text PRIMARY KEY, value jsonb NOT NULL, "
            "expires_at timestamptz NULL, updated_at timestamptz NOT NULL DEFAULT now())"
        )

    async def pool(self) -> asyncpg.Pool:
        """The pool, created (with the table) on first call."""
        if self._ready:
            assert self._pool is not None
            return self._pool
        async with self._lock:
            if self._closed:
                raise RuntimeError(f"PostgresTier {self.name!r} is closed")
            if self._pool is None:
                assert self._dsn is not None
                self._pool = await asyncpg.create_pool(self._dsn, **self._pool_args)
            if not self._ready:
                # Two processes racing on CREATE TABLE IF NOT EXISTS can both try to
                # create the row type; the loser's error means the table exists.
                with contextlib.suppress(asyncpg.UniqueViolationError):
                    await self._pool.execute(self._sql_create)
                self._ready = True
            return self._pool

    async def get(self, key: str) -> Any | None:
        pool = await self.pool()
        raw = await pool.fetchval(self._sql_get, key)
        return None if raw is None else orjson.loads(raw)

    async def search(self, query: str, limit: int = 10) -> list[Any]:
        results = await self.get(search_cache_key(query))
        if results is None:
            return []
        return results[:limit] if isinstance(results, list) else [results]

    async def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        _check_ttl(ttl)
        ttl = self.default_ttl if ttl is None else ttl
        pool = await self.pool()
        await pool.execute(self._sql_put, key, orjson.dumps(value).decode(), ttl)

    async def put_search(self, query: str, results: list[Any], ttl: float | None = None) -> None:
        """Cache ``results`` as the answer to ``query``."""
        await self.put(search_cache_key(query), list(results), ttl)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if a row was deleted."""
        pool = await self.pool()
        status = await pool.execute(f"DELETE FROM {self.table} WHERE key = $1", key)
        return bool(status != "DELETE 0")

    async def purge_expired(self) -> int:
        """Delete expired rows; return how many."""
        pool = await self.pool()
        status = await pool.execute(
            f"DELETE FROM {self.table} WHERE expires_at IS NOT NULL AND expires_at <= now()"
        )
        return int(status.split()[-1])

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            if self._owns_pool and self._pool is not None:
                await self._pool.close()
            self._pool = None
            self._ready = False

    def __repr__(self) -> str:
        return f"PostgresTier(name={self.name!r}, table={self.table!r})"
