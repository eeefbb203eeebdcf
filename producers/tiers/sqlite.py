"""An embedded SQLite tier: the L2 fallback when no PostgreSQL is reachable.

Same contract as :class:`~tierstream.producers.tiers.postgres.PostgresTier`
(key/value with optional expiry, cached search results under
:func:`search_cache_key`), on the standard library's sqlite3. Calls run in a
worker thread so they do not block the event loop; one connection, guarded
by a lock, is plenty for a demo or a single agent.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from . import search_cache_key


class SqliteTier:
    """A :class:`~tierstream.producers.base.Tier` in one SQLite file (or ``:memory:``)."""

    def __init__(
        self, path: str | Path = ":memory:", name: str = "sqlite", default_ttl: float | None = None
    ) -> None:
        self.name = name
        self.default_ttl = default_ttl
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tierstream_memory ("
            " key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL)"
        )
        self._lock = threading.Lock()

    def _read(self, key: str) -> Any | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value, expires_at FROM tierstream_memory WHERE key = ?", (key,)
            ).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return orjson.loads(row[0])

    def _write(self, key: str, value: Any, ttl: float | None) -> None:
        ttl = ttl if ttl is not None else self.default_ttl
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        expires = None if ttl is None else time.time() + ttl
        with self._lock:
            self._db.execute(
                "INSERT INTO tierstream_memory (key, value, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                "expires_at = excluded.expires_at",
                (key, orjson.dumps(value), expires),
            )

    async def get(self, key: str) -> Any | None:
        return await asyncio.to_thread(self._read, key)

    async def search(self, query: str, limit: int = 10) -> list[Any]:
        found = await asyncio.to_thread(self._read, search_cache_key(query))
        return list(found[:limit]) if found else []

    async def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        await asyncio.to_thread(self._write, key, value, ttl)

    async def put_search(self, query: str, results: list[Any], ttl: float | None = None) -> None:
        await asyncio.to_thread(self._write, search_cache_key(query), list(results), ttl)

    async def close(self) -> None:
        with self._lock:
            self._db.close()
