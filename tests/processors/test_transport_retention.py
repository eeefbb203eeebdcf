"""redis:// transport: retention (``create_topic(retention=...)`` and ``maxlen``)
trims partition streams on a real Redis; offsets, earliest offsets and
reading from a trimmed position stay right."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest
import redis.asyncio as aioredis
from faust.types import TP
from tierstream.processors.transport import Consumer, Producer, Transport
from tierstream.processors.transport.retention import first_sequence_to_keep, trim_stream
from tierstream.schemas import names

pytestmark = pytest.mark.timeout(30)
log = logging.getLogger("test")

BASE_MS = 1_700_000_000_000


async def fill(client: aioredis.Redis, key: str, timestamps: list[int | None]) -> None:
    for i, t in enumerate(timestamps):
        fields: dict[Any, Any] = {b"v": b"%d" % i}
        if t is not None:
            fields[b"t"] = b"%d" % t
        await client.xadd(key, fields, id="0-*")


async def offsets_left(client: aioredis.Redis, key: str) -> list[int]:
    return [int(eid[2:]) - 1 for eid, _ in await client.xrange(key)]


async def test_time_retention_keeps_exactly_the_entries_not_older_than_the_cutoff(
    aredis: aioredis.Redis, unique: str
) -> None:
    key = names.stream_key(unique, 0)
    await fill(aredis, key, [BASE_MS + i * 1000 for i in range(200)])
    # Holes from XDEL (dead-lettering never deletes dense entries, but a user may).
    await aredis.xdel(key, "0-50", "0-51", "0-52", "0-120")
    now = BASE_MS + 199_000
    for retention_s in (250, 150.5, 80, 0.5):
        cutoff = now - int(retention_s * 1000)
        truth = [o for o in await offsets_left(aredis, key) if BASE_MS + o * 1000 >= cutoff]
        removed = await trim_stream(
            aredis, key.encode(), retention_ms=int(retention_s * 1000), now_ms=now
        )
        left = await offsets_left(aredis, key)
        assert left == truth, (retention_s, removed)
    assert left == [199]
    info = await aredis.xinfo_stream(key)
    assert info["entries-added"] == 200  # offsets unchanged: the highwater stays


async def test_an_entry_without_a_timestamp_that_the_search_meets_stops_trimming(
    aredis: aioredis.Redis, unique: str
) -> None:
    key = names.stream_key(unique, 0)
    stamps: list[int | None] = [BASE_MS + i for i in range(10)]
    stamps[7] = None
    await fill(aredis, key, stamps)
    assert await first_sequence_to_keep(aredis, key.encode(), BASE_MS + 100) == 8
    await trim_stream(aredis, key.encode(), retention_ms=1, now_ms=BASE_MS + 101)
    assert await offsets_left(aredis, key) == [7, 8, 9]


async def test_length_retention(aredis: aioredis.Redis, unique: str) -> None:
    key = names.stream_key(unique, 0)
    await fill(aredis, key, [BASE_MS] * 3000)
    await trim_stream(aredis, key.encode(), maxlen=1000)
    left = await offsets_left(aredis, key)
    # Approximate (whole nodes of 100 entries): at least 1000 kept, the newest ones.
    assert 1000 <= len(left) < 1200
    assert left[-1] == 2999 and left == list(range(left[0], 3000))


@pytest.fixture
async def app(redis_url: str, unique: str) -> AsyncIterator[faust.App]:
    app = faust.App(unique, broker=redis_url, producer_linger=0.005)
    assert isinstance(app.producer, Producer)
    await app.producer.start()
    transport = app.transport
    assert isinstance(transport, Transport)
    await transport.connect(log, lambda: False)
    yield app
    await app.producer.stop()


async def test_worker_trims_its_partitions_by_declared_retention(
    app: faust.App, aredis: aioredis.Redis, unique: str
) -> None:
    async def noop(*args: Any, **kwargs: Any) -> None:
        return None

    consumer = app.transport.create_consumer(
        callback=noop, on_partitions_revoked=noop, on_partitions_assigned=noop
    )
    assert isinstance(consumer, Consumer)
    topic = f"{unique}-events"
    kept = f"{unique}-forever"
    await consumer.create_topic(topic, 2, 1, retention=60.0)  # one minute
    await consumer.create_topic(kept, 1, 1)
    now = time.time()
    for i in range(40):  # 20 per partition: half two minutes old, half fresh
        ts = now - 120 if i < 20 else now - 1
        await app.producer.send_and_wait(topic, None, b"%d" % i, i % 2, ts, None)
        await app.producer.send_and_wait(kept, None, b"%d" % i, 0, now - 3600, None)
    tps = {TP(topic, 0), TP(topic, 1), TP(kept, 0)}
    consumer._assigned = frozenset(tps)
    removed = await consumer.trim_retention()
    assert removed == 20
    earliest = await consumer.earliest_offsets(*tps)
    highwaters = await consumer.highwaters(*tps)
    assert earliest == {TP(topic, 0): 10, TP(topic, 1): 10, TP(kept, 0): 0}
    assert highwaters == {TP(topic, 0): 20, TP(topic, 1): 20, TP(kept, 0): 40}
    # A position that was trimmed away reads on from the earliest entry left.
    consumer._set_position(TP(topic, 0), 3)
    got = await consumer._getmany({TP(topic, 0)}, 0.05)
    assert [r[0] for r in got[TP(topic, 0)]] == list(range(10, 20))
