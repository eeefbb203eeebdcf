"""redis:// transport: Redis unreachable at start, and lost and back mid-run.

Uses a private redis-server (conftest ``private_redis``) that the test stops
and starts again on the same port, with its data kept in an AOF file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import faust
import pytest
import redis
from faust.types import TP
from tierstream.processors.transport import Consumer, Transport

log = logging.getLogger("test")


def _persist(server: Any) -> None:
    """Turn on the AOF of a running private server and restart it with it."""
    client = redis.Redis(port=server.port)
    client.config_set("appendonly", "yes")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if (
            info["aof_enabled"]
            and not info["aof_rewrite_in_progress"]
            and not info.get("aof_rewrite_scheduled")
        ):
            break
        time.sleep(0.05)
    client.close()
    server.appendonly = True


async def _noop(*args: Any, **kwargs: Any) -> None:
    return None


@pytest.mark.timeout(60)
async def test_producer_and_consumer_survive_redis_restart(
    private_redis: Any, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    _persist(private_redis)
    app = faust.App(unique, broker=private_redis.url)
    transport = app.transport
    assert isinstance(transport, Transport)
    producer = app.producer
    await producer.start()
    consumer = transport.create_consumer(
        callback=_noop, on_partitions_revoked=_noop, on_partitions_assigned=_noop
    )
    assert isinstance(consumer, Consumer)
    try:
        await transport.create_topic(unique, 1)
        tp = TP(unique, 0)
        consumer._assigned = frozenset({tp})
        consumer._set_position(tp, 0)
        for i in range(5):
            await producer.send_and_wait(unique, None, b"before-%d" % i, 0, None, None)
        got = await consumer._getmany({tp}, 0.05)
        assert [r[0] for r in got[tp]] == [0, 1, 2, 3, 4]

        caplog.set_level(logging.WARNING)
        await asyncio.to_thread(private_redis.stop)
        # Sends while Redis is away are queued and retried, not lost.
        pending = [
            await producer.send(unique, None, b"during-%d" % i, 0, None, None) for i in range(3)
        ]
        # The fetch loop does not crash: it backs off and returns nothing.
        assert await consumer._getmany({tp}, 0.05) == {}
        await asyncio.sleep(0.3)
        assert not any(cast(asyncio.Future[Any], f).done() for f in pending)

        await asyncio.to_thread(private_redis.start)
        results = await asyncio.wait_for(asyncio.gather(*pending), timeout=20)
        offsets = [md.offset for md in results]
        # In order, after the entries from before the restart. (A batch whose
        # reply was lost could be written twice; here Redis was down before
        # the batch went out, so nothing was.)
        assert offsets == [5, 6, 7]
        got = {}
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            got = dict(await consumer._getmany({tp}, 0.1))
        assert [(r[0], r[2]) for r in got[tp]] == [
            (5, b"during-0"),
            (6, b"during-1"),
            (7, b"during-2"),
        ]
        messages = [r.getMessage() for r in caplog.records]
        assert any("Fetch from Redis at" in m and str(private_redis.port) in m for m in messages)
        assert any("retrying" in m for m in messages)
    finally:
        await producer.stop()
        await transport.client.aclose()


@pytest.mark.timeout(60)
async def test_connect_waits_for_redis_at_start(
    private_redis: Any, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    await asyncio.to_thread(private_redis.stop)
    url = f"redis://:hunter2@127.0.0.1:{private_redis.port}/0"
    app = faust.App(unique, broker=url)
    transport = app.transport
    assert isinstance(transport, Transport)
    caplog.set_level(logging.WARNING)
    task = asyncio.ensure_future(transport.connect(log, lambda: False))
    await asyncio.sleep(1.0)
    assert not task.done()
    await asyncio.to_thread(private_redis.start)
    client = await asyncio.wait_for(task, timeout=20)
    assert await client.ping()
    await client.aclose()
    lines = [r.getMessage() for r in caplog.records if "not reachable" in r.getMessage()]
    assert lines
    assert all(f"127.0.0.1:{private_redis.port}/0" in line for line in lines)
    # The password in the URL never reaches the log.
    assert not any("hunter2" in r.getMessage() for r in caplog.records)
