"""redis:// transport: ``producer.flush()`` returns only after Redis acknowledged
every message sent before it. Faust calls it right before committing offsets,
so table changelog writes (``send_soon`` through the producer buffer) and
topic sends made while processing a message are durable before its offset is
committed.

Redis is made slow on purpose with ``CLIENT PAUSE <ms> WRITE`` on a private
server (writes wait, reads go on), so the messages are still unacknowledged
when ``flush()`` is called.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest
import redis
from tierstream.processors.transport import Producer, Transport
from tierstream.schemas import names

pytestmark = pytest.mark.timeout(60)
log = logging.getLogger("test")

PAUSE_MS = 600


@pytest.fixture
async def app(private_redis: Any, unique: str) -> AsyncIterator[faust.App]:
    app = faust.App(unique, broker=private_redis.url, producer_linger=0.005)
    producer = app.producer
    assert isinstance(producer, Producer)
    await producer.start()
    transport = app.transport
    assert isinstance(transport, Transport)
    yield app
    await producer.stop()


def xlen(client: redis.Redis, topic: str) -> int:
    """Entries in all partition streams of ``topic``."""
    pattern = names.stream_key(topic, 0)[:-1] + "*"
    return sum(int(client.xlen(key)) for key in client.scan_iter(match=pattern))


async def test_flush_waits_for_buffered_and_direct_sends(
    app: faust.App, private_redis: Any
) -> None:
    sync = redis.Redis(port=private_redis.port)
    changelog = app.topic("flush-changelog", partitions=2, value_serializer="raw")
    events = app.topic("flush-events", partitions=2, value_serializer="raw")
    # Declare both topics before pausing (declaring writes metadata).
    await changelog.declare()
    await events.declare()
    sync.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
    paused_at = time.monotonic()
    # What a table does on ``table[k] = v``: the changelog record goes to the
    # producer buffer, sent later by the buffer's task.
    for i in range(300):
        changelog.send_soon(key=b"k%d" % i, value=b"%d" % i)
    # What an agent does: topic sends whose futures nobody awaits.
    for i in range(200):
        await events.send(key=b"e%d" % i, value=b"%d" % i)
    await app.producer.flush()
    waited = time.monotonic() - paused_at
    # Everything is in Redis the moment flush() returns.
    assert xlen(sync, "flush-changelog") == 300
    assert xlen(sync, "flush-events") == 200
    assert waited >= PAUSE_MS / 1000 * 0.8, f"flush returned after {waited:.2f}s, while paused"
    sync.close()


async def test_flush_waits_for_a_buffered_send_that_is_still_declaring_its_topic(
    app: faust.App, private_redis: Any
) -> None:
    """The buffer's task has taken the message off the queue (the buffer looks
    empty) but the send is still waiting for Redis to declare the topic."""
    sync = redis.Redis(port=private_redis.port)
    topic = app.topic("flush-new-topic", value_serializer="raw")
    sync.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
    topic.send_soon(key=b"a", value=b"1")
    await asyncio.sleep(0.05)  # the buffer task picks it up and starts sending
    await app.producer.flush()
    assert xlen(sync, "flush-new-topic") == 1
    sync.close()
