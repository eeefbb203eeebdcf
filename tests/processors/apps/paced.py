"""Two agents in one worker, one of them slow (what the delivery loop's pacing must not
let hold up the other).

- agent ``slow_agent`` reads topic ``slow`` and sleeps ``SLOW_SLEEP`` seconds (default
  0.02) per event;
- agent ``fast_agent`` reads topic ``fast`` and appends every offset it receives to
  ``fast[partition]``.

``GET /state/`` returns the offsets ``fast`` received per partition and how many
events ``slow`` finished.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from faust import StreamT

from apps.common import PARTITIONS, add_state_page, env_float, make_app

SLOW_SLEEP = env_float("SLOW_SLEEP", 0.02)

app = make_app("paced")
slow_topic = app.topic("slow", value_serializer="raw", partitions=PARTITIONS)
fast_topic = app.topic("fast", value_serializer="raw", partitions=PARTITIONS)

fast: dict[int, list[int]] = defaultdict(list)
slow_done = [0]


@app.agent(slow_topic)
async def slow_agent(stream: StreamT[bytes]) -> None:
    async for _value in stream:
        await asyncio.sleep(SLOW_SLEEP)
        slow_done[0] += 1


@app.agent(fast_topic)
async def fast_agent(stream: StreamT[bytes]) -> None:
    async for event in stream.events():
        fast[event.message.partition].append(event.message.offset)


def _state() -> dict[str, Any]:
    return {"fast": {str(p): offsets for p, offsets in fast.items()}, "slow": slow_done[0]}


add_state_page(app, _state)
