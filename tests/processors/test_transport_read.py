"""redis:// transport: the fetch script reads what XREAD reads.

The consumer reads through ``READ_SCRIPT`` (XREAD's reply, flat) and falls
back to a plain ``XREAD`` (blocking, or over more streams than a script
takes) whose reply ``flatten`` puts in the same form. Both are held to the
same entries here: the producer's layouts, headers, tombstones, foreign
fields, holes, foreign ids and streams with nothing to read.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from faust.types import TP
from tierstream.processors.transport import Consumer, fetching
from tierstream.schemas import names

pytestmark = pytest.mark.timeout(60)


async def _fill(aredis: aioredis.Redis, topic: str) -> list[bytes]:
    """Six partitions of ``topic`` with different contents; their stream keys."""
    keys = [names.stream_key(topic, p).encode() for p in range(6)]
    for i in range(40):
        ts = b"%d" % (1_700_000_000_000 + i)
        await aredis.xadd(keys[0], {b"v": b"value %d" % i, b"k": b"k%d" % i, b"t": ts}, id="0-*")
        await aredis.xadd(keys[1], {b"v": b"%d" % i, b"t": ts}, id="0-*")
        fields: dict[bytes, bytes] = {b"v": b"x" * i, b"t": ts}
        if i % 3 == 0:
            fields[b"h"] = b'{"a": "b"}'
        if i % 5 == 0:
            fields = {b"foo": b"bar", b"t": ts}  # not the wire format
        if i % 7 == 0:
            fields[b"d"] = b"1"  # tombstone
        await aredis.xadd(keys[2], fields, id="0-*")
        await aredis.xadd(keys[4], {b"v": b"%d" % i, b"k": b"", b"t": b"12x"}, id="0-*")
    # keys[3]: no stream at all
    await aredis.xdel(keys[4], "0-2", "0-3", "0-17", "0-40")
    for i in range(3):
        await aredis.xadd(keys[5], {b"v": b"%d" % i, b"t": b"1"}, id="0-*")
    await aredis.xadd(keys[5], {b"v": b"foreign"})  # a foreign id (time-sequence)
    return keys


async def test_script_reply_is_xreads_reply_flattened(
    consumer: Consumer, aredis: aioredis.Redis, unique: str
) -> None:
    keys = await _fill(aredis, unique)
    client = consumer.transport.client
    script = consumer._reader(client)
    compared = 0
    for count in (1, 3, 10, 100):
        for start in (0, 1, 2, 16, 39, 40, 1000):
            ids = [b"0-%d" % start] * len(keys)
            flat = await script(keys=keys, args=[count, *ids])
            plain = await client.execute_command("XREAD", "COUNT", count, "STREAMS", *keys, *ids)
            assert flat == fetching.flatten(plain or ()), (count, start)
            compared += len(flat)
    assert compared > 2000
    assert await script(keys=keys, args=[10] + [b"99999999999999-0"] * len(keys)) == []
    assert fetching.flatten(None) == []


async def test_fetches_through_the_script_and_through_xread_give_the_same_records(
    consumer: Consumer, aredis: aioredis.Redis, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = await _fill(aredis, unique)
    tps = [TP(unique, p) for p in range(5)]  # not the one with a foreign id (it is repaired)
    consumer._assigned = frozenset(tps)
    for tp in tps:
        consumer._entry_bytes[tp] = 10  # entry sizes known: no first-fetch limit

    async def read_all(start: int) -> tuple[dict[TP, list[Any]], dict[TP, int]]:
        for tp in tps:
            consumer._set_position(tp, start)
        got: dict[TP, list[Any]] = {tp: [] for tp in tps}
        for _ in range(20):
            batch = await consumer._getmany(set(tps), 0.01)
            for tp, records in batch.items():
                got[tp].extend(records)
        return got, {tp: consumer._positions[tp] for tp in tps}

    for start in (0, 5, 39):
        through_script = await read_all(start)
        monkeypatch.setattr(fetching, "SCRIPT_MAX_STREAMS", 0)
        through_xread = await read_all(start)
        monkeypatch.undo()
        assert through_script == through_xread, start
        records, positions = through_script
        # the producer's layouts: every entry, in order, values as written
        assert [r[0] for r in records[tps[0]]] == list(range(start, 40))
        assert [r[1] for r in records[tps[0]]] == [b"k%d" % i for i in range(start, 40)]
        assert [r[2] for r in records[tps[1]]] == [b"%d" % i for i in range(start, 40)]
        assert positions[tps[0]] == positions[tps[1]] == 40
    assert len(keys) == 6


async def test_reads_go_on_when_redis_is_above_maxmemory(private_redis: Any, unique: str) -> None:
    # A consumer must drain its streams when Redis refuses writes for memory
    # (the read script is declared no-writes).
    from transport_consumer import standalone_consumer

    client = aioredis.Redis.from_url(private_redis.url)
    key = names.stream_key(unique, 0)
    for i in range(50):
        await client.xadd(key, {b"v": b"%d" % i, b"t": b"1"}, id="0-*")
    await client.config_set("maxmemory-policy", "noeviction")
    await client.config_set("maxmemory", 1)
    with pytest.raises(aioredis.ResponseError, match="maxmemory"):
        await client.xadd(key, {b"v": b"refused", b"t": b"1"}, id="0-*")
    async with standalone_consumer(private_redis.url, unique) as consumer:
        tp = TP(unique, 0)
        consumer._assigned = frozenset({tp})
        consumer._set_position(tp, 0)
        consumer._entry_bytes[tp] = 2
        got = await consumer._getmany({tp}, 0.05)
        assert [r[2] for r in got[tp]] == [b"%d" % i for i in range(50)]
    await client.config_set("maxmemory", 0)
    await client.aclose()
