"""Seeking a partition while the worker runs (what the windowed pipeline does).

- agent ``record`` reads ``nums`` (raw values) through ``stream.events()`` and
  appends every offset it receives to ``seen[partition]``, pausing a little
  every ``SLOW_EVERY`` messages so that buffers fill and fetches stay in flight;
- ``SEEKS="p:at:to,..."``: the first time the agent receives offset ``at`` of
  partition ``p``, it calls ``app.consumer.seek(TP(nums, p), to)`` from inside
  the agent (each trigger fires once);
- ``GET /seek/?partition=p&offset=o`` seeks from outside the agent (a web
  request: the fetcher is typically blocked in ``XREAD`` then).

``GET /state/`` returns ``seen``, the seeks done (partition, index into
``seen`` where the seek happened, target) and how many messages the consumer
still tracks as unacknowledged.
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from typing import Any

from faust import StreamT
from faust.types import TP
from faust.web import Request, Response, View

from apps.common import PARTITIONS, add_state_page, env_int, make_app

NUMS_TOPIC = "nums"
SLOW_EVERY = env_int("SLOW_EVERY", 50)

app = make_app("seek", stream_buffer_maxsize=env_int("BUFFER", 64))
nums = app.topic(NUMS_TOPIC, value_serializer="raw", partitions=PARTITIONS)

seen: dict[int, list[int]] = defaultdict(list)
seeks: list[tuple[int, int, int]] = []
triggers: dict[tuple[int, int], int] = {}
for spec in filter(None, os.environ.get("SEEKS", "").split(",")):
    p, at, to = (int(x) for x in spec.split(":"))
    triggers[(p, at)] = to


async def _seek(partition: int, offset: int) -> None:
    seeks.append((partition, len(seen[partition]), offset))
    await app.consumer.seek(TP(NUMS_TOPIC, partition), offset)


@app.agent(nums)
async def record(stream: StreamT[bytes]) -> None:
    n = 0
    async for event in stream.events():
        message = event.message
        seen[message.partition].append(message.offset)
        target = triggers.pop((message.partition, message.offset), None)
        if target is not None:
            await _seek(message.partition, target)
        n += 1
        if n % SLOW_EVERY == 0:
            await asyncio.sleep(0.001)


@app.page("/seek/")
async def seek_page(web: View, request: Request) -> Response:
    partition = int(request.query["partition"])
    offset = int(request.query["offset"])
    await _seek(partition, offset)
    return web.json({"sought": [partition, offset]})


def _state() -> dict[str, Any]:
    consumer: Any = app.consumer
    return {
        "seen": {str(p): offsets for p, offsets in seen.items()},
        "seeks": seeks,
        "unacked": len(consumer._unacked_messages),
    }


add_state_page(app, _state)
