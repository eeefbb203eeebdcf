"""The tiers against real servers: Redis, PostgreSQL, embedded Chroma; and as_tier."""

from __future__ import annotations

import asyncio
import threading
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import orjson
import pytest
import redis.asyncio as aioredis
from chromadb.api import ClientAPI
from tierstream.producers.base import Tier
from tierstream.producers.errors import TierError
from tierstream.producers.tiers import (
    ChromaTier,
    HashingEmbedding,
    PostgresTier,
    RedisTier,
    TierNotImplementedError,
    as_tier,
    search_cache_key,
)

from ..conftest import free_port

# --- Redis -------------------------------------------------------------------


async def test_redis_put_get_miss(redis_url: str, aredis: aioredis.Redis) -> None:
    tier = RedisTier(redis_url, prefix="m:")
    assert isinstance(tier, Tier)
    assert await tier.get("k1") is None
    await tier.put("k1", {"a": [1, 2], "b": "x"})
    assert await tier.get("k1") == {"a": [1, 2], "b": "x"}
    raw = await aredis.get("m:k1")
    assert raw is not None and orjson.loads(raw) == {"a": [1, 2], "b": "x"}
    assert await aredis.ttl("m:k1") == -1  # no ttl given, no default
    await tier.put("k1", "replaced")
    assert await tier.get("k1") == "replaced"
    assert await tier.delete("k1") is True
    assert await tier.get("k1") is None
    await tier.close()


async def test_redis_ttl_ex_px_default_and_expiry(redis_url: str, aredis: aioredis.Redis) -> None:
    tier = RedisTier(aredis, default_ttl=30)
    await tier.put("whole", 1, ttl=100)
    assert 99 <= await aredis.ttl("mem:whole") <= 100
    await tier.put("default", 2)
    assert 29 <= await aredis.ttl("mem:default") <= 30
    await tier.put("short", 3, ttl=0.15)
    assert 0 < await aredis.pttl("mem:short") <= 150
    await asyncio.sleep(0.25)
    assert await tier.get("short") is None
    with pytest.raises(ValueError, match="ttl"):
        await tier.put("bad", 1, ttl=0)
    with pytest.raises(ValueError, match="ttl"):
        RedisTier(aredis, default_ttl=-1)
    await tier.close()
    assert await aredis.ping()  # a client passed in stays open


async def test_redis_search_cache(redis_url: str, aredis: aioredis.Redis) -> None:
    tier = RedisTier(redis_url)
    assert await tier.search("Where is Paris?") == []
    await tier.put_search("Where is Paris?", ["France", "Europe", "Earth"], ttl=60)
    assert await tier.search("where  is PARIS?") == ["France", "Europe", "Earth"]  # normalized
    assert await tier.search("Where is Paris?", limit=2) == ["France", "Europe"]
    assert await tier.search("Where is Rome?") == []
    assert await aredis.exists("mem:" + search_cache_key("Where is Paris?"))
    await tier.close()


# --- PostgreSQL ----------------------------------------------------------------


async def test_postgres_creates_table_put_get_upsert(pg_dsn: str, pg_table: str) -> None:
    tier = PostgresTier(pg_dsn, table=pg_table)
    assert isinstance(tier, Tier)
    assert await tier.get("k") is None  # first use creates the table
    conn = await asyncpg.connect(pg_dsn)
    try:
        cols = await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = $1 ORDER BY ordinal_position",
            pg_table,
        )
        assert [(c["column_name"], c["data_type"]) for c in cols] == [
            ("key", "text"),
            ("value", "jsonb"),
            ("expires_at", "timestamp with time zone"),
            ("updated_at", "timestamp with time zone"),
        ]
        await tier.put("k", {"n": 1})
        await tier.put("k", {"n": 2})  # upsert
        assert await tier.get("k") == {"n": 2}
        assert await conn.fetchval(f"SELECT count(*) FROM {pg_table}") == 1
        assert await tier.delete("k") is True
        assert await tier.delete("k") is False
    finally:
        await conn.close()
    await tier.close()


async def test_postgres_ttl_expiry_and_purge(pg_dsn: str, pg_table: str) -> None:
    tier = PostgresTier(pg_dsn, table=pg_table)
    await tier.put("short", "gone soon", ttl=0.15)
    await tier.put("long", "stays", ttl=3600)
    await tier.put("forever", [1])
    assert await tier.get("short") == "gone soon"
    await asyncio.sleep(0.25)
    assert await tier.get("short") is None  # expired row is a miss
    assert await tier.get("long") == "stays"
    assert await tier.get("forever") == [1]
    assert await tier.purge_expired() == 1
    with pytest.raises(ValueError, match="ttl"):
        await tier.put("bad", 1, ttl=-5)
    await tier.close()


async def test_postgres_search_cache(pg_dsn: str, pg_table: str) -> None:
    tier = PostgresTier(pg_dsn, table=pg_table)
    assert await tier.search("q") == []
    await tier.put_search("Big   Query", [{"id": 1}, {"id": 2}])
    assert await tier.search("big query") == [{"id": 1}, {"id": 2}]
    assert await tier.search("big query", limit=1) == [{"id": 1}]
    await tier.close()


@pytest.mark.parametrize(
    "table", ["x; DROP TABLE users", "1abc", "a-b", "", "a.b.c", "t" * 64, 'a"b']
)
def test_postgres_rejects_unsafe_table_names(table: str) -> None:
    with pytest.raises(ValueError, match="invalid table name"):
        PostgresTier("postgresql://localhost/x", table=table)


async def test_postgres_pool_ownership(pg_dsn: str, pg_table: str) -> None:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        tier = PostgresTier(pool, table=pg_table, name="pg2")
        await tier.put("k", 1)
        await tier.close()
        assert await pool.fetchval("SELECT 1") == 1  # caller's pool left open
        with pytest.raises(RuntimeError, match="closed"):
            await tier.get("k")
    finally:
        await pool.close()
    owned = PostgresTier(pg_dsn, table=pg_table)
    assert await owned.get("k") == 1
    inner = await owned.pool()
    await owned.close()
    assert inner.is_closing()


async def test_postgres_unreachable_raises_oserror() -> None:
    tier = PostgresTier(f"postgresql://postgres@127.0.0.1:{free_port()}/test", connect_timeout=2)
    with pytest.raises(OSError):
        await tier.get("k")
    await tier.close()


# --- Chroma --------------------------------------------------------------------


async def test_chroma_put_get_miss(chroma_client: ClientAPI, unique: str) -> None:
    tier = ChromaTier(chroma_client, collection=unique)
    assert isinstance(tier, Tier)
    assert await tier.get("k") is None
    await tier.put("k", {"text": "hello", "n": 1})
    await tier.put("s", "a plain string")
    assert await tier.get("k") == {"text": "hello", "n": 1}
    assert await tier.get("s") == "a plain string"
    await tier.put("s", "replaced")
    assert await tier.get("s") == "replaced"
    await tier.delete("s")
    assert await tier.get("s") is None
    await tier.close()
    chroma_client.heartbeat()  # a client passed in stays open


async def test_chroma_search_similarity_and_distance(chroma_client: ClientAPI, unique: str) -> None:
    tier = ChromaTier(chroma_client, collection=unique, max_distance=0.8)
    assert await tier.search("anything") == []  # empty collection
    await tier.put("paris", "Paris is the capital of France")
    await tier.put("rome", "Rome is the capital of Italy")
    await tier.put("cats", {"fact": "cats sleep most of the day"})
    results = await tier.search("capital of France", limit=2)
    assert results[0] == "Paris is the capital of France"
    assert len(results) <= 2
    assert await tier.search("capital of France", limit=0) == []
    assert await tier.search("zzz qqq xxyyzz") == []  # nothing close enough
    strict = ChromaTier(chroma_client, collection=unique, max_distance=0.0)
    assert await strict.search("capital of France") == []
    await tier.close()


async def test_chroma_ttl_expiry(chroma_client: ClientAPI, unique: str) -> None:
    tier = ChromaTier(chroma_client, collection=unique)
    await tier.put("short", "short lived memory", ttl=0.15)
    await tier.put("long", "long lived memory")
    assert await tier.get("short") == "short lived memory"
    await asyncio.sleep(0.25)
    assert await tier.get("short") is None
    assert await tier.search("short lived memory") == ["long lived memory"]
    await tier.purge_expired()
    col = await tier.collection()
    assert col.count() == 1
    with pytest.raises(ValueError, match="ttl"):
        await tier.put("bad", 1, ttl=0)


async def test_chroma_embedded_path_persists_and_closes(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no embedding-function or config warnings
        tier = ChromaTier(path, collection="memtest")
        await tier.put("k", {"v": 1})
        await tier.close()
        with pytest.raises(RuntimeError, match="closed"):
            await tier.get("k")
        reopened = ChromaTier(str(path), collection="memtest")
        assert await reopened.get("k") == {"v": 1}
        await reopened.close()


def test_chroma_argument_checks() -> None:
    with pytest.raises(ValueError, match="not both"):
        ChromaTier("/tmp/x", url="http://localhost:8000")
    with pytest.raises(ValueError, match="max_distance"):
        ChromaTier("/tmp/x", max_distance=3)
    with pytest.raises(ValueError, match="http://host:port"):
        ChromaTier(url="localhost:8000")._open()


def test_hashing_embedding_is_deterministic_and_normalized() -> None:
    ef = HashingEmbedding()
    a, b, c, empty = ef(["the cat sat", "the cat sat", "quantum field theory", ""])
    assert np.array_equal(a, b)
    assert a.shape == (256,)
    for v in (a, c, empty):
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    near = ef.embed_one("the cats sat down")
    assert float(a @ near) > float(a @ c)
    assert ef.name() == "tierstream_hashing"
    assert not ef.is_legacy()
    clone = HashingEmbedding.build_from_config(ef.get_config())
    assert np.array_equal(clone(["x y"])[0], ef(["x y"])[0])
    with pytest.raises(ValueError):
        ef.validate_config_update(ef.get_config(), {"dim": 128})
    with pytest.raises(ValueError):
        HashingEmbedding(dim=1)


# --- as_tier -------------------------------------------------------------------


async def test_as_tier_sync_functions() -> None:
    store: dict[str, Any] = {}
    tier = as_tier(
        "dict",
        get=store.get,
        put=lambda key, value, ttl=None: store.__setitem__(key, value),
        search=lambda query, limit: [v for k, v in store.items() if query in k][:limit],
    )
    assert isinstance(tier, Tier)
    assert await tier.get("a") is None
    await tier.put("apple", 1)
    await tier.put("grape", 2)
    assert await tier.get("apple") == 1
    assert await tier.search("ap", 10) == [1, 2]
    assert await tier.search("ap", 1) == [1]
    with pytest.raises(TierNotImplementedError, match="put_search") as err:
        await tier.put_search("q", [1])
    assert isinstance(err.value, TierError) and isinstance(err.value, NotImplementedError)
    await tier.close()  # no close given: a no-op


async def test_as_tier_async_functions_backend_and_threaded() -> None:
    closed: list[bool] = []

    class Backend:
        def __init__(self) -> None:
            self.data: dict[str, Any] = {}
            self.threads: set[int] = set()

        def get(self, key: str) -> Any:
            self.threads.add(threading.get_ident())
            return self.data.get(key)

        async def put(self, key: str, value: Any, ttl: float | None) -> None:
            await asyncio.sleep(0)
            self.data[key] = value

        def close(self) -> None:
            closed.append(True)

    async def search(query: str, limit: int) -> list[Any]:
        return [query.upper()]

    backend = Backend()
    tier = as_tier("custom", backend, search=search, threaded=True)
    await tier.put("k", "v")
    assert await tier.get("k") == "v"
    assert threading.get_ident() not in backend.threads  # ran in a worker thread
    assert await tier.search("hi") == ["HI"]
    assert tier.supports("get") and not tier.supports("put_search")
    await tier.close()
    assert closed == [True]

    only_get = as_tier("g", get=lambda key: key)
    with pytest.raises(TierNotImplementedError, match=r"search\(\)"):
        await only_get.search("x")
    with pytest.raises(ValueError, match="at least one"):
        as_tier("nothing")
