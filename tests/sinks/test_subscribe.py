"""subscribe(): Python API and the CLI in another process, against the real Redis.

The test writes records to the topic streams in the wire format, as the
redis:// transport does (``XADD key 0-* v <json>``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from tierstream.schemas.names import ALERTS_TOPIC, SUGGESTIONS_TOPIC, stream_key, topic_meta_key
from tierstream.schemas.wire import encode_entry
from tierstream.sinks.subscribe import subscribe


def alert(i: int) -> dict[str, Any]:
    return {
        "record_type": "alert",
        "id": f"al-{i}",
        "rule": "r",
        "state": "firing",
        "i": i,
        "labels": {"tier": "redis"},
        "severity": "warning",
        "ts": 1.7e9 + i,
        "message": "m",
    }


async def create_topic(r: aioredis.Redis, topic: str, partitions: int) -> None:
    await r.hset(topic_meta_key(topic), mapping={"partitions": partitions})


async def write(r: aioredis.Redis, topic: str, partition: int, value: Any) -> None:
    await r.xadd(stream_key(topic, partition), encode_entry(orjson.dumps(value)), id="0-*")


async def collect(sub: Any, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    async def run() -> None:
        async for rec in sub:
            out.append(rec)
            if len(out) == n:
                return

    await asyncio.wait_for(run(), timeout)
    return out


async def test_from_now_from_beginning_and_batches(aredis: aioredis.Redis, redis_url: str) -> None:
    await create_topic(aredis, ALERTS_TOPIC, 3)
    for i in range(4):
        await write(aredis, ALERTS_TOPIC, i % 3, alert(i))
    everything = subscribe("alerts", from_beginning=True, redis_url=redis_url)
    from_now = subscribe("alerts", redis_url=redis_url)
    got_all = asyncio.create_task(collect(everything, 7))
    got_new = asyncio.create_task(collect(from_now, 3))
    await asyncio.sleep(0.5)  # both subscriptions have taken their start positions
    await write(aredis, ALERTS_TOPIC, 1, [alert(4), {**alert(5), "__faust": {"ns": "x"}}])
    await write(aredis, ALERTS_TOPIC, 2, alert(6))
    assert sorted(r["i"] for r in await got_all) == list(range(7))
    new = await got_new
    assert sorted(r["i"] for r in new) == [4, 5, 6]
    assert all("__faust" not in r for r in new)
    # per partition, in order
    assert [r["i"] for r in new if r["i"] in (4, 5)] == [4, 5]
    await everything.close()
    await from_now.close()


async def test_waits_for_the_topic_and_skips_bad_entries(
    aredis: aioredis.Redis, redis_url: str
) -> None:
    sub = subscribe("suggestions", redis_url=redis_url)
    task = asyncio.create_task(collect(sub, 2))
    await asyncio.sleep(0.5)
    assert not task.done()
    await create_topic(aredis, SUGGESTIONS_TOPIC, 1)
    await asyncio.sleep(0.5)
    key = stream_key(SUGGESTIONS_TOPIC, 0)
    await aredis.xadd(key, {b"v": b"{not json"}, id="0-*")
    await aredis.xadd(key, {b"x": b"no value"}, id="0-*")
    await write(aredis, SUGGESTIONS_TOPIC, 0, {"id": "a"})
    await write(aredis, SUGGESTIONS_TOPIC, 0, {"id": "b"})
    assert [r["id"] for r in await task] == ["a", "b"]
    assert sub.stats.bad == 2
    assert "not valid JSON" in sub.stats.problems[0] and "no 'v'" in sub.stats.problems[1]
    await sub.close()


async def test_without_follow_reads_what_is_there_and_stops(
    aredis: aioredis.Redis, redis_url: str
) -> None:
    assert [r async for r in subscribe("alerts", redis_url=redis_url, follow=False)] == []
    await create_topic(aredis, ALERTS_TOPIC, 2)
    for i in range(5):
        await write(aredis, ALERTS_TOPIC, i % 2, alert(i))
    got = [r async for r in subscribe("alerts", redis_url=redis_url, follow=False)]
    assert sorted(r["i"] for r in got) == list(range(5))


def cli(redis_url: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tierstream", "subscribe", *args, "--redis-url", redis_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_lines(proc: subprocess.Popen[bytes], n: int, timeout: float = 20.0) -> list[bytes]:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < n and time.monotonic() < deadline:
        chunk = proc.stdout.read()
        if chunk:
            buf += chunk
        else:
            time.sleep(0.05)
    return buf.splitlines()


async def test_cli_follow_in_another_process(aredis: aioredis.Redis, redis_url: str) -> None:
    proc = cli(redis_url, "alerts", "--follow", "--json")
    try:
        await asyncio.sleep(1.5)  # it starts and waits for the topic
        await create_topic(aredis, ALERTS_TOPIC, 2)
        await asyncio.sleep(1.0)
        for i in range(3):
            await write(aredis, ALERTS_TOPIC, i % 2, alert(i))
        lines = await asyncio.to_thread(read_lines, proc, 3)
        assert sorted(json.loads(x)["i"] for x in lines) == [0, 1, 2], proc.returncode
    finally:
        proc.terminate()
        proc.wait(10)


async def test_cli_prints_what_is_there_and_exits(aredis: aioredis.Redis, redis_url: str) -> None:
    await create_topic(aredis, ALERTS_TOPIC, 2)
    for i in range(3):
        await write(aredis, ALERTS_TOPIC, i % 2, alert(i))
    await aredis.xadd(stream_key(ALERTS_TOPIC, 0), {b"v": b"[1, 2]"}, id="0-*")
    proc = cli(redis_url, "alerts")
    out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 3 and all("alert FIRING warning r{tier=redis}: m" in x for x in lines)
    assert "skipped:" in err.decode() and "array of objects" in err.decode()
    proc = cli(redis_url, "alerts", "--json")
    out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    assert sorted(json.loads(x)["i"] for x in out.splitlines()) == [0, 1, 2]


def test_unknown_topic_is_refused() -> None:
    from tierstream.sinks.errors import SubscribeError

    with pytest.raises(SubscribeError, match="choose suggestions, alerts"):
        subscribe("nope")
