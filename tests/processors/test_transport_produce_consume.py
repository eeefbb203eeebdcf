"""redis:// transport: producing (partitions, dense offsets, batching) and the
consumer's offset operations, fetching and dead letters, on a real Redis."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest
import redis.asyncio as aioredis
from faust.types import TP
from tierstream.processors.transport import Consumer, Producer
from tierstream.schemas import names
from tierstream.schemas.partition import partition_for
from transport_consumer import connected_consumer

log = logging.getLogger("test")


class Harness:
    """A Faust app on the transport, its producer started, a consumer that is
    connected but not running a worker (the test drives it)."""

    def __init__(self, app: faust.App, producer: Producer, consumer: Consumer) -> None:
        self.app = app
        self.producer = producer
        self.consumer = consumer

    def assign(self, tps: set[TP]) -> None:
        self.consumer._assigned = frozenset(tps)

    async def fetch_all(self, tps: set[TP], rounds: int = 5) -> dict[TP, list[Any]]:
        out: dict[TP, list[Any]] = {}
        for _ in range(rounds):
            got = await self.consumer._getmany(tps, 0.05)
            for tp, recs in got.items():
                out.setdefault(tp, []).extend(recs)
        return out


@pytest.fixture
async def harness(redis_url: str, unique: str) -> AsyncIterator[Harness]:
    app = faust.App(unique, broker=redis_url, producer_linger=0.005)
    producer = app.producer
    assert isinstance(producer, Producer)
    await producer.start()
    async with connected_consumer(app) as consumer:
        yield Harness(app, producer, consumer)
        await producer.stop()


async def test_keyed_sends_use_partition_for_and_offsets_are_dense(
    harness: Harness, aredis: aioredis.Redis, unique: str
) -> None:
    await harness.app.transport.create_topic(unique, 8)  # type: ignore[attr-defined]
    futures = []
    keys = [f"key-{i}".encode() for i in range(200)]
    for key in keys:
        futures.append(await harness.producer.send(unique, key, b"value", None, None, None))
    next_offset = [0] * 8
    for key, fut in zip(keys, futures, strict=True):
        md = await fut
        assert md.topic == unique
        assert md.partition == partition_for(key, 8)
        assert md.topic_partition == TP(unique, md.partition)
        assert md.offset == next_offset[md.partition]
        next_offset[md.partition] += 1
    for p in range(8):
        assert await aredis.xlen(names.stream_key(unique, p)) == next_offset[p]


async def test_send_and_wait_entry_fields_and_explicit_partition(
    harness: Harness, aredis: aioredis.Redis, unique: str
) -> None:
    await harness.app.transport.create_topic(unique, 2)  # type: ignore[attr-defined]
    md = await harness.producer.send_and_wait(
        unique, b"k", b"v1", 1, 1700000000.5, {"trace": "abc"}
    )
    assert (md.partition, md.offset) == (1, 0)
    entries: Any = await aredis.xrange(names.stream_key(unique, 1))
    [(entry_id, fields)] = entries
    assert entry_id == b"0-1"
    assert fields == {b"v": b"v1", b"k": b"k", b"t": b"1700000000500", b"h": b'{"trace":"abc"}'}
    with pytest.raises(Exception, match="out of range"):
        await harness.producer.send(unique, None, b"x", 5, None, None)


async def test_unkeyed_sends_spread_over_partitions(harness: Harness, unique: str) -> None:
    await harness.app.transport.create_topic(unique, 4)  # type: ignore[attr-defined]
    mds = [
        await (await harness.producer.send(unique, None, b"x", None, None, None)) for _ in range(8)
    ]
    assert sorted(md.partition for md in mds) == [0, 0, 1, 1, 2, 2, 3, 3]


async def test_send_creates_unknown_topic_with_default_partitions(
    harness: Harness, aredis: aioredis.Redis, unique: str
) -> None:
    md = await harness.producer.send_and_wait(unique, b"k", b"v", None, None, None)
    raw: Any = await aredis.hget(names.topic_meta_key(unique), "partitions")
    partitions = int(raw)
    assert partitions == harness.app.conf.topic_partitions
    assert md.partition == partition_for(b"k", partitions)


async def test_custom_partitioner_is_honoured(redis_url: str, unique: str) -> None:
    def always_last(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        return all_partitions[-1]

    app = faust.App(unique, broker=redis_url, producer_partitioner=always_last)
    await app.producer.start()
    try:
        await app.transport.create_topic(unique, 3)  # type: ignore[attr-defined]
        md = await app.producer.send_and_wait(unique, b"any", b"v", None, None, None)
        assert md.partition == 2
    finally:
        await app.producer.stop()


async def test_null_value_round_trips_as_none(harness: Harness, unique: str) -> None:
    await harness.app.transport.create_topic(unique, 1)  # type: ignore[attr-defined]
    await harness.producer.send_and_wait(unique, b"gone", None, 0, None, None)
    tp = TP(unique, 0)
    harness.assign({tp})
    harness.consumer._set_position(tp, 0)
    got = await harness.fetch_all({tp}, rounds=1)
    message = harness.consumer._to_message(tp, got[tp][0])
    assert (message.key, message.value, message.offset) == (b"gone", None, 0)


async def test_fetch_seek_position_commit(harness: Harness, unique: str) -> None:
    await harness.app.transport.create_topic(unique, 2)  # type: ignore[attr-defined]
    for i in range(10):
        await harness.producer.send(unique, None, b"%d" % i, 0, None, {"i": str(i)})
    await harness.producer.flush()
    tp, other = TP(unique, 0), TP(unique, 1)
    c = harness.consumer
    harness.assign({tp, other})
    await c._init_positions({tp, other})  # nothing committed: earliest
    assert await c.position(tp) == 0
    got = await harness.fetch_all({tp, other})
    assert [r[0] for r in got[tp]] == list(range(10))
    messages = [c._to_message(tp, r) for r in got[tp]]
    assert [m.value for m in messages] == [b"%d" % i for i in range(10)]
    assert messages[3].headers == [("i", b"3")]
    assert messages[0].timestamp > 1_600_000_000
    assert await c.position(tp) == 10
    assert c.highwater(tp) == 10
    await c.seek(tp, 4)
    assert await c.position(tp) == 4
    got = await harness.fetch_all({tp}, rounds=1)
    assert [r[0] for r in got[tp]] == list(range(4, 10))
    assert await c._commit({tp: 7})
    await c.seek(tp, 0)
    assert await c.seek_to_committed() == {tp: 7}
    assert await c.position(tp) == 7
    # A fresh consumer of the same group starts at the commit.
    fresh = harness.app.transport.create_consumer(
        callback=c.callback,
        on_partitions_revoked=c._on_partitions_revoked,
        on_partitions_assigned=c._on_partitions_assigned,
    )
    await fresh._init_positions({tp, other})  # type: ignore[attr-defined]
    assert await fresh.position(tp) == 7
    assert await fresh.position(other) == 0


async def test_highwater_and_earliest_after_trim(
    harness: Harness, aredis: aioredis.Redis, unique: str
) -> None:
    await harness.app.transport.create_topic(unique, 1)  # type: ignore[attr-defined]
    for i in range(20):
        await harness.producer.send(unique, None, b"%d" % i, 0, None, None)
    await harness.producer.flush()
    tp = TP(unique, 0)
    c = harness.consumer
    assert await c.highwaters(tp) == {tp: 20}
    assert await c.earliest_offsets(tp) == {tp: 0}
    await aredis.xtrim(names.stream_key(unique, 0), maxlen=5, approximate=False)
    assert await c.highwaters(tp) == {tp: 20}
    assert await c.earliest_offsets(tp) == {tp: 15}
    harness.assign({tp})
    # Reading from a trimmed offset starts at the earliest entry.
    await c.seek(tp, 2)
    got = await harness.fetch_all({tp}, rounds=1)
    assert [r[0] for r in got[tp]] == list(range(15, 20))
    await c.seek_to_beginning(tp)
    assert await c.position(tp) == 15
    await aredis.xtrim(names.stream_key(unique, 0), maxlen=0, approximate=False)
    assert await c.earliest_offsets(tp) == {tp: 20}
    md = await harness.producer.send_and_wait(unique, None, b"next", 0, None, None)
    assert md.offset == 20


async def test_dead_letters_and_consumer_continues(
    harness: Harness, aredis: aioredis.Redis, unique: str
) -> None:
    await harness.app.transport.create_topic(unique, 1)  # type: ignore[attr-defined]
    key = names.stream_key(unique, 0)
    await harness.producer.send_and_wait(unique, None, b"good0", 0, None, None)
    await aredis.xadd(key, {"foo": "no value field"}, id="0-*")  # offset 1: bad fields
    await aredis.xadd(key, {"v": "foreign"})  # '*' id: breaks the stream
    # The producer repairs the stream and writes on.
    md = await harness.producer.send_and_wait(unique, None, b"good2", 0, None, None)
    assert md.offset == 2
    tp = TP(unique, 0)
    c = harness.consumer
    harness.assign({tp})
    harness.app.topics._acking_topics.add(unique)  # type: ignore[attr-defined]
    c._set_position(tp, 0)
    got = await harness.fetch_all({tp})
    assert [(r[0], r[2]) for r in got[tp]] == [(0, b"good0"), (2, b"good2")]
    # The bad offset counts as consumed so commits can pass it.
    assert 1 in c._acked_index[tp]
    dlq: Any = await aredis.xrange(names.dead_letter_key(unique))
    reasons = sorted(fields[b"reason"] for _, fields in dlq)
    assert len(dlq) == 2
    assert any(b"no 'v'" in r for r in reasons)
    assert any(b"0-<n>" in r for r in reasons)
    by_id = {fields[b"id"]: fields for _, fields in dlq}
    assert by_id[b"0-2"][b"foo"] == b"no value field"
    assert by_id[b"0-2"][b"stream"] == key.encode()
    assert await aredis.get(names.dead_letter_count_key(unique)) == b"2"


async def test_consumer_repairs_foreign_entry_it_reads(
    harness: Harness, aredis: aioredis.Redis, unique: str
) -> None:
    await harness.app.transport.create_topic(unique, 1)  # type: ignore[attr-defined]
    key = names.stream_key(unique, 0)
    await harness.producer.send_and_wait(unique, None, b"a", 0, None, None)
    await aredis.xadd(key, {"v": "foreign"})
    tp = TP(unique, 0)
    harness.assign({tp})
    harness.consumer._set_position(tp, 0)
    got = await harness.fetch_all({tp})
    assert [r[2] for r in got[tp]] == [b"a"]
    assert await aredis.xlen(names.dead_letter_key(unique)) == 1
    assert await aredis.xadd(key, {"v": "b"}, id="0-*") == b"0-2"


async def test_position_beyond_stream_end_resets_to_earliest(
    harness: Harness, aredis: aioredis.Redis, unique: str
) -> None:
    """A stream that lost entries (Redis restarted without its data) leaves the
    position past the end: as with Kafka, auto_offset_reset picks a new one."""
    await harness.app.transport.create_topic(unique, 1)  # type: ignore[attr-defined]
    for i in range(3):
        await harness.producer.send(unique, None, b"%d" % i, 0, None, None)
    await harness.producer.flush()
    tp = TP(unique, 0)
    c = harness.consumer
    harness.assign({tp})
    c._set_position(tp, 50)
    epochs = {tp: c._epochs[tp]}
    offsets = await harness.app.transport.topics.stream_offsets([tp])  # type: ignore[attr-defined]
    # A position that advanced while the highwaters were being read is not reset.
    c._check_out_of_range(offsets, epochs, {tp: 2})
    assert await c.position(tp) == 50
    c._check_out_of_range(offsets, epochs, {tp: 50})
    assert await c.position(tp) == 0
    # A seek after the offsets were read wins over the reset.
    c._set_position(tp, 60)
    c._check_out_of_range({tp: (0, 3)}, epochs, {tp: 60})
    assert await c.position(tp) == 60


async def test_entry_layouts_parse_alike(
    harness: Harness, aredis: aioredis.Redis, unique: str
) -> None:
    """The producer's own layouts (keyed, keyless) take a fast path; other
    writers' field orders, headers and tombstones the general one: all give
    the same records, and a bad timestamp is dead-lettered on either path."""
    await harness.app.transport.create_topic(unique, 1)  # type: ignore[attr-defined]
    key = names.stream_key(unique, 0)
    await harness.producer.send_and_wait(unique, b"k0", b"v0", 0, 1_700_000_000.5, None)
    await harness.producer.send_and_wait(unique, None, b"v1", 0, 1_700_000_001.0, None)
    await harness.producer.send_and_wait(unique, b"k2", b"v2", 0, 1_700_000_002.0, {"h": "x"})
    await harness.producer.send_and_wait(unique, b"k3", None, 0, 1_700_000_003.0, None)
    # Another writer: same fields, another order.
    await aredis.xadd(key, {"t": "1700000004000", "k": "k4", "v": "v4"}, id="0-*")
    await aredis.xadd(key, {"v": "v5", "k": "k5", "t": "soon"}, id="0-*")  # bad timestamp
    await aredis.xadd(key, {"v": "v6", "t": "-5"}, id="0-*")  # general path: accepted
    await aredis.xadd(key, {"v": "v7", "t": "1.5"}, id="0-*")  # bad timestamp, keyless layout
    tp = TP(unique, 0)
    c = harness.consumer
    harness.assign({tp})
    harness.app.topics._acking_topics.add(unique)  # type: ignore[attr-defined]
    c._set_position(tp, 0)
    got = await harness.fetch_all({tp}, rounds=2)
    messages = [c._to_message(tp, r) for r in got[tp]]
    assert [(m.offset, m.key, m.value, m.timestamp, m.headers) for m in messages] == [
        (0, b"k0", b"v0", 1_700_000_000.5, None),
        (1, None, b"v1", 1_700_000_001.0, None),
        (2, b"k2", b"v2", 1_700_000_002.0, [("h", b"x")]),
        (3, b"k3", None, 1_700_000_003.0, None),
        (4, b"k4", b"v4", 1_700_000_004.0, None),
        (6, None, b"v6", -0.005, None),
    ]
    assert {5, 7} <= c._acked_index[tp]
    dlq: Any = await aredis.xrange(names.dead_letter_key(unique))
    assert sorted(fields[b"id"] for _, fields in dlq) == [b"0-6", b"0-8"]
    assert await c.position(tp) == 8
