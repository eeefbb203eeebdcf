"""redis:// transport: topic metadata, highwater/earliest offsets, stream repair."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest
import redis.asyncio as aioredis
from faust.types import TP
from tierstream.processors.transport import Transport
from tierstream.schemas import names

log = logging.getLogger("test")


@pytest.fixture
async def transport(redis_url: str, unique: str) -> AsyncIterator[Transport]:
    app = faust.App(unique, broker=redis_url)
    tr = app.transport
    assert isinstance(tr, Transport)
    await tr.connect(log, lambda: False)
    yield tr
    await tr.client.aclose()


async def test_create_topic_records_metadata(
    transport: Transport, aredis: aioredis.Redis, unique: str
) -> None:
    n = await transport.create_topic(unique, 4, retention=3600.0, compacting=True)
    assert n == 4
    meta = await aredis.hgetall(names.topic_meta_key(unique))
    assert meta[b"partitions"] == b"4"
    assert meta[b"retention_ms"] == b"3600000"
    assert meta[b"compacting"] == b"1"
    assert int(meta[b"created_ms"]) > 0
    assert await aredis.sismember(names.TOPICS_INDEX_KEY, unique)
    described = await transport.topics.describe(unique)
    assert described is not None
    assert (described.partitions, described.retention_ms, described.compacting) == (
        4,
        3_600_000,
        True,
    )


async def test_existing_topic_keeps_its_partition_count(
    transport: Transport, aredis: aioredis.Redis, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    await transport.create_topic(unique, 4)
    caplog.set_level(logging.WARNING)
    assert await transport.create_topic(unique, 8) == 4
    assert await aredis.hget(names.topic_meta_key(unique), "partitions") == b"4"
    assert any("exists with 4 partitions" in r.getMessage() for r in caplog.records)


async def test_ensure_topic_uses_declared_or_default_partitions(
    redis_url: str, unique: str
) -> None:
    app = faust.App(unique, broker=redis_url, topic_partitions=3)
    declared = app.topic(f"{unique}-declared", partitions=5)
    app.topics.add(declared)
    tr = app.transport
    assert isinstance(tr, Transport)
    await tr.connect(log, lambda: False)
    try:
        assert await tr.ensure_topic(f"{unique}-declared") == 5
        assert await tr.ensure_topic(f"{unique}-other") == 3
    finally:
        await tr.client.aclose()


async def test_offsets_of_new_written_and_trimmed_streams(
    transport: Transport, aredis: aioredis.Redis, unique: str
) -> None:
    tp = TP(unique, 0)
    key = names.stream_key(unique, 0)
    assert await transport.topics.stream_offsets([tp]) == {tp: (0, 0)}
    for i in range(10):
        await aredis.xadd(key, {"v": str(i)}, id="0-*")
    assert await transport.topics.stream_offsets([tp]) == {tp: (0, 10)}
    await aredis.xtrim(key, maxlen=4, approximate=False)
    assert await transport.topics.stream_offsets([tp]) == {tp: (6, 10)}
    await aredis.xtrim(key, maxlen=0, approximate=False)
    # Empty after trimming: earliest is the highwater, which did not move.
    assert await transport.topics.stream_offsets([tp]) == {tp: (10, 10)}
    await aredis.xadd(key, {"v": "x"}, id="0-*")
    assert await transport.topics.stream_offsets([tp]) == {tp: (10, 11)}


async def test_repair_moves_foreign_entries_and_keeps_offsets_dense(
    transport: Transport, aredis: aioredis.Redis, unique: str
) -> None:
    key = names.stream_key(unique, 0)
    for i in range(3):
        await aredis.xadd(key, {"v": str(i)}, id="0-*")
    await aredis.xadd(key, {"v": "bad1"})  # plain '*': breaks the stream
    await aredis.xadd(key, {"oops": "bad2"})
    with pytest.raises(Exception, match="equal or smaller"):
        await aredis.xadd(key, {"v": "3"}, id="0-*")
    # Asking for offsets repairs first.
    tp = TP(unique, 0)
    assert await transport.topics.stream_offsets([tp]) == {tp: (0, 3)}
    assert await aredis.xadd(key, {"v": "3"}, id="0-*") == b"0-4"
    dlq: Any = await aredis.xrange(names.dead_letter_key(unique))
    assert len(dlq) == 2
    assert dlq[0][1][b"stream"] == key.encode()
    assert dlq[0][1][b"v"] == b"bad1" and dlq[1][1][b"oops"] == b"bad2"
    assert b"0-<n>" in dlq[0][1][b"reason"]
    assert await aredis.get(names.dead_letter_count_key(unique)) == b"2"


async def test_repair_of_stream_with_only_foreign_entries(
    transport: Transport, aredis: aioredis.Redis, unique: str
) -> None:
    key = names.stream_key(unique, 1)
    await aredis.xadd(key, {"v": "foreign"})
    assert await transport.dead_letters.repair_stream(unique, 1) == 1
    assert await aredis.xadd(key, {"v": "first"}, id="0-*") == b"0-1"


async def test_repair_after_trimmed_dense_entries(
    transport: Transport, aredis: aioredis.Redis, unique: str
) -> None:
    key = names.stream_key(unique, 2)
    for i in range(5):
        await aredis.xadd(key, {"v": str(i)}, id="0-*")
    await aredis.xtrim(key, maxlen=0, approximate=False)
    await aredis.xadd(key, {"v": "foreign"})
    assert await transport.dead_letters.repair_stream(unique, 2) == 1
    assert await aredis.xadd(key, {"v": "5"}, id="0-*") == b"0-6"
