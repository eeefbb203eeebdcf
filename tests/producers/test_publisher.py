"""Publisher against a real Redis: batching, partitioning, outages, flush on close."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from tierstream.producers.publisher import Publisher, SyncPublisher
from tierstream.schemas.access import fingerprint, validate_access
from tierstream.schemas.names import ACCESS_TOPIC, stream_key, topic_meta_key
from tierstream.schemas.partition import partition_for
from tierstream.schemas.wire import decode_entry, decode_events, offset_of

from ..conftest import PrivateRedis, free_port


def make_event(i: int, query: str | None = None) -> dict[str, Any]:
    q = query if query is not None else f"what is item {i % 97}?"
    return {
        "schema_version": 1,
        "event_type": "memory_tier_access",
        "event_id": f"ev-{i}",
        "ts": 1_700_000_000.0 + i,
        "agent_id": "agent-1",
        "user_id": None,
        "session_id": "s",
        "operation": "get",
        "query": q,
        "query_fingerprint": fingerprint(q),
        "query_type": None,
        "tier_accessed": "redis",
        "tier_latencies": {"redis": {"latency_ms": 0.4, "hit": True, "error": None}},
        "total_latency_ms": 0.5,
        "cache_hit": True,
        "result_count": 1,
    }


def read_topic(
    url: str, topic: str = ACCESS_TOPIC, partitions: int = 8
) -> dict[int, list[dict[str, Any]]]:
    """Every event in every partition stream, in stream order, checking the wire format."""
    client = redis.Redis.from_url(url)
    out: dict[int, list[dict[str, Any]]] = {}
    for p in range(partitions):
        events: list[dict[str, Any]] = []
        for expected_offset, (entry_id, fields) in enumerate(client.xrange(stream_key(topic, p))):
            assert offset_of(entry_id) == expected_offset, "offsets must be dense"
            _key, value, ts, _h = decode_entry(fields)
            assert ts is not None
            batch = decode_events(value)
            assert int(fields[b"n"]) == len(batch)
            events.extend(batch)
        out[p] = events
    client.close()
    return out


async def test_events_land_on_their_partition_in_order(redis_url: str) -> None:
    sent = [make_event(i) for i in range(5000)]
    async with Publisher(redis_url, batch_size=300) as pub:
        for ev in sent:
            pub.emit(ev)
    assert pub.stats.sent == 5000 and pub.stats.dropped == 0
    by_partition = read_topic(redis_url)
    got = [ev for evs in by_partition.values() for ev in evs]
    assert sorted(e["event_id"] for e in got) == sorted(e["event_id"] for e in sent)
    for p, evs in by_partition.items():
        for ev in evs:
            validate_access(ev)
            assert partition_for(ev["query_fingerprint"].encode(), 8) == p
        # per-partition order is emit order
        ids = [int(e["event_id"][3:]) for e in evs]
        assert ids == sorted(ids)
    assert sum(1 for evs in by_partition.values() if evs) > 1


async def test_existing_topic_partition_count_wins(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    await client.hset(topic_meta_key(ACCESS_TOPIC), "partitions", 3)
    await client.aclose()
    async with Publisher(redis_url, partitions=8) as pub:
        for i in range(300):
            pub.emit(make_event(i))
    assert pub.partitions == 3
    events = read_topic(redis_url, partitions=8)
    assert sum(len(v) for v in events.values()) == 300
    assert all(not events[p] for p in range(3, 8))


async def test_redis_down_never_blocks_or_raises_and_counts_drops() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    pub = Publisher(url, max_buffer=1000, close_timeout=0.5)
    await pub.start()
    t0 = time.perf_counter()
    for i in range(5000):
        pub.emit(make_event(i))
    emit_s = time.perf_counter() - t0
    await asyncio.sleep(0.3)  # let the writer fail a few times
    assert pub.stats.dropped == 4000
    assert pub.buffered == 1000
    assert pub.stats.write_errors >= 1
    assert emit_s < 0.5, "emit must not wait for Redis"
    t0 = time.perf_counter()
    await pub.close()
    assert time.perf_counter() - t0 < 3.0, "close is bounded by close_timeout"
    assert pub.stats.sent == 0
    assert pub.stats.dropped == 5000, "what close could not write is counted"
    pub.emit(make_event(1))  # after close: still no exception
    assert pub.stats.dropped == 5001


async def test_publishing_resumes_when_redis_comes_back(private_redis: PrivateRedis) -> None:
    pub = Publisher(private_redis.url, max_buffer=100_000, close_timeout=10)
    await pub.start()
    for i in range(100):
        pub.emit(make_event(i))
    assert await pub.flush(5)
    private_redis.stop()
    for i in range(100, 600):
        pub.emit(make_event(i))
    await asyncio.sleep(0.5)
    assert pub.stats.sent == 100
    assert pub.stats.write_errors >= 1
    private_redis.start()
    assert await pub.flush(15), "buffered events must be written once Redis is back"
    await pub.close()
    # private redis keeps nothing across restarts: the 500 buffered events are there.
    events = read_topic(private_redis.url)
    ids = {e["event_id"] for evs in events.values() for e in evs}
    assert {f"ev-{i}" for i in range(100, 600)} <= ids
    assert pub.stats.dropped == 0 and pub.stats.reconnects >= 1


async def test_close_flushes_everything(redis_url: str) -> None:
    pub = Publisher(redis_url, linger_s=5.0, batch_size=10_000)
    await pub.start()
    for i in range(777):
        pub.emit(make_event(i))
    await pub.close()  # no flush() first: close must do it
    events = read_topic(redis_url)
    assert sum(len(v) for v in events.values()) == 777
    assert pub.stats.sent == 777


async def test_unencodable_event_is_counted_and_the_rest_written(redis_url: str) -> None:
    async with Publisher(redis_url) as pub:
        pub.emit(make_event(1))
        bad = make_event(2)
        bad["query_type"] = {1, 2}  # a set is not JSON
        pub.emit(bad)
        pub.emit(make_event(3))
    events = read_topic(redis_url)
    assert sorted(e["event_id"] for v in events.values() for e in v) == ["ev-1", "ev-3"]
    assert pub.stats.unencodable == 1 and pub.stats.sent == 2


def test_sync_publisher_from_threads(redis_url: str) -> None:
    with SyncPublisher(redis_url) as pub:

        def work(base: int) -> None:
            for i in range(base, base + 1000):
                pub.emit(make_event(i))

        threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert pub.flush(10)
    events = read_topic(redis_url)
    assert len({e["event_id"] for v in events.values() for e in v}) == 4000


def test_wire_value_is_plain_json_for_other_languages(redis_url: str) -> None:
    """A consumer in any language reads field v as a JSON array of event objects."""
    with SyncPublisher(redis_url) as pub:
        pub.emit(make_event(0, "hello"))
    client = redis.Redis.from_url(redis_url)
    p = partition_for(fingerprint("hello").encode(), 8)
    [(entry_id, fields)] = client.xrange(stream_key(ACCESS_TOPIC, p))
    assert entry_id == b"0-1"
    assert orjson.loads(fields[b"v"])[0]["query"] == "hello"
    client.close()


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_settings_are_rejected(bad: int) -> None:
    with pytest.raises(ValueError):
        Publisher("redis://127.0.0.1:6379/0", max_buffer=bad)


async def test_agent_calls_succeed_while_telemetry_redis_is_down(redis_url: str) -> None:
    """The memory's own tier works; only the telemetry Redis is unreachable."""
    from tierstream.producers.memory import TieredMemory
    from tierstream.producers.tiers import RedisTier

    pub = Publisher(f"redis://127.0.0.1:{free_port()}/0", max_buffer=50, close_timeout=0.2)
    await pub.start()
    mem = TieredMemory([RedisTier(redis_url, prefix="t:")], sink=pub, agent_id="a")
    await mem.put("k", {"v": 1})
    t0 = time.perf_counter()
    for _ in range(199):
        assert await mem.get("k") == {"v": 1}
    assert time.perf_counter() - t0 < 5
    await mem.close()
    await pub.close()
    assert pub.stats.sent == 0
    assert pub.stats.dropped == 200  # 150 beyond the buffer, 50 unwritten at close
