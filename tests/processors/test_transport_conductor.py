"""redis:// transport: the conductor's per-partition handler does what Faust's does.

Each scenario runs once with Faust's handler (``ConductorCompiler.build``) and
once with ours (``conductor.build_handler``) on a fresh app, and compares what
a user can see: the events queued for each channel (key, value, message),
decode errors handed to the channels, message refcounts and acks, the
consumer's paused partitions, the buffer-full sensor, and whether a delivery
waits for a suspended flow or a full buffer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import pytest
from faust.transport.conductor import ConductorCompiler
from faust.types import TP, ConsumerMessage
from tierstream.processors.transport import Conductor
from tierstream.processors.transport.conductor import build_handler

pytestmark = pytest.mark.timeout(60)

Build = Callable[[Any, TP, Any], Callable[[Any], Awaitable[None]]]
BUILDS: dict[str, Build] = {"faust": ConductorCompiler().build, "ours": build_handler}


def _app(redis_url: str, unique: str, maxsize: int = 50) -> faust.App:
    app = faust.App(unique, broker=redis_url, web_enabled=False, stream_buffer_maxsize=maxsize)
    app.flow_control.resume()
    return app


def _message(tp: TP, offset: int, key: bytes, value: bytes) -> ConsumerMessage:
    return ConsumerMessage(
        tp.topic, tp.partition, offset, 1.0, 0, None, key, value, None, len(key), len(value), tp
    )


def _seen(channels: list[Any], messages: list[ConsumerMessage], app: faust.App) -> Any:
    queues = []
    for chan in channels:
        queues.append(
            (
                [(e.key, e.value, e.message.offset) for e in chan.queue._queue],
                [type(exc).__name__ for exc in chan.queue._errors],
            )
        )
    return (
        queues,
        [(m.refcount, m.acked) for m in messages],
        sorted(app.consumer._buffered_partitions),
        dict(app.monitor.topic_buffer_full),
    )


async def _run(
    build: Build,
    redis_url: str,
    unique: str,
    schemas: list[faust.Schema],
    payloads: list[tuple[bytes, bytes]],
    maxsize: int = 50,
) -> Any:
    app = _app(redis_url, unique, maxsize)
    tp = TP(unique, 0)
    channels = [app.topic(unique, schema=schema).clone(is_iterator=True) for schema in schemas]
    handler = build(app.topics, tp, set(channels))
    messages = [_message(tp, i, k, v) for i, (k, v) in enumerate(payloads)]
    for message in messages:
        await handler(message)
    return _seen(channels, messages, app)


async def _both(redis_url: str, unique: str, *args: Any, **kwargs: Any) -> Any:
    results = {
        name: await _run(build, redis_url, unique, *args, **kwargs)
        for name, build in BUILDS.items()
    }
    assert results["ours"] == results["faust"]
    return results["ours"]


RAW = faust.Schema(key_serializer="raw", value_serializer="raw")
JSON = faust.Schema(key_serializer="raw", value_serializer="json")
INT_KEY = faust.Schema(key_type=int, key_serializer="raw", value_serializer="raw")
STR_VALUE = faust.Schema(value_type=str, key_serializer="raw", value_serializer="raw")


def test_the_transport_uses_its_conductor(redis_url: str, unique: str) -> None:
    app = _app(redis_url, unique)
    assert type(app.topics) is Conductor


async def test_one_channel(redis_url: str, unique: str) -> None:
    payloads = [(b"k%d" % i, b'{"i": %d}' % i) for i in range(30)]
    queues, refs, paused, _full = await _both(redis_url, unique, [JSON], payloads)
    assert queues[0][0] == [(k, {"i": i}, i) for i, (k, _) in enumerate(payloads)]
    assert refs == [(1, False)] * 30
    assert paused == []


async def test_pressure_high_pauses_the_partition(redis_url: str, unique: str) -> None:
    payloads = [(b"k", b"v%d" % i) for i in range(45)]  # above 50 / 1.25
    queues, _refs, paused, _full = await _both(redis_url, unique, [RAW], payloads)
    assert len(queues[0][0]) == 45
    assert paused == [TP(unique, 0)]


async def test_decode_errors_go_to_the_channel_and_ack(redis_url: str, unique: str) -> None:
    payloads = [(b"1", b"{}"), (b"x", b"{}"), (b"2", b"not json"), (b"3", b"[1]")]
    schema = faust.Schema(key_type=int, key_serializer="raw", value_serializer="json")
    queues, refs, _paused, _full = await _both(redis_url, unique, [schema], payloads)
    assert [e[0] for e in queues[0][0]] == [1, 3]
    assert queues[0][1] == ["KeyDecodeError", "ValueDecodeError"]
    assert refs == [(1, False), (0, True), (0, True), (1, False)]


async def test_several_channels(redis_url: str, unique: str) -> None:
    payloads = [(b"%d" % i, b'{"i": %d}' % i) for i in range(10)]
    # (channels with the same key and value types share the first one's event,
    # which depends on the set's order: these three differ)
    schemas = [RAW, STR_VALUE, INT_KEY]
    queues, refs, _paused, _full = await _both(redis_url, unique, schemas, payloads)
    assert [len(q[0]) for q in queues] == [10, 10, 10]
    assert [q[0][3] for q in queues] == [
        (b"3", b'{"i": 3}', 3),
        (b"3", '{"i": 3}', 3),
        (3, b'{"i": 3}', 3),
    ]
    assert refs == [(3, False)] * 10


@pytest.mark.parametrize("name", list(BUILDS))
async def test_several_channels_and_a_bad_key(redis_url: str, unique: str, name: str) -> None:
    # The channels not yet served when the key fails get the error instead of
    # the event; which they are depends on the set's order, so only the
    # totals are compared.
    payloads = [(b"1", b"{}"), (b"x", b"{}")]
    queues, refs, _paused, _full = await _run(
        BUILDS[name], redis_url, unique, [RAW, STR_VALUE, INT_KEY], payloads
    )
    assert [len(q[0]) + len(q[1]) for q in queues] == [2, 2, 2]
    errors = sum(len(q[1]) for q in queues)
    assert 1 <= errors <= 3
    assert refs == [(3, False), (3 - errors, errors == 3)]


@pytest.mark.parametrize("name", list(BUILDS))
async def test_waits_while_the_flow_is_suspended_and_for_room(
    redis_url: str, unique: str, name: str
) -> None:
    app = _app(redis_url, unique, maxsize=4)
    tp = TP(unique, 0)
    chan = app.topic(unique, schema=RAW).clone(is_iterator=True)
    handler = BUILDS[name](app.topics, tp, {chan})
    app.flow_control.suspend()
    waiting = asyncio.ensure_future(handler(_message(tp, 0, b"k", b"v")))
    await asyncio.sleep(0.05)
    assert not waiting.done() and chan.queue.qsize() == 0
    app.flow_control.resume()
    await asyncio.wait_for(waiting, 1)
    for i in range(1, 4):
        await handler(_message(tp, i, b"k", b"v"))
    assert chan.queue.full()
    blocked = asyncio.ensure_future(handler(_message(tp, 4, b"k", b"v")))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert chan.queue.get_nowait().message.offset == 0
    await asyncio.wait_for(blocked, 1)
    assert [e.message.offset for e in chan.queue._queue] == [1, 2, 3, 4]
