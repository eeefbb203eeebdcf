"""Timers, tasks, an agent with ``sink=``, and the web server.

- ``@app.task`` ``started`` runs once at start;
- ``@app.timer`` ``tick`` every ``TIMER_INTERVAL`` seconds (default 0.3);
- ``@app.timer(on_leader=True)`` ``leader_tick`` likewise, only on the leader;
- agent ``double`` reads ints from ``numbers`` and yields ``2 * n`` into its
  sinks: the topic ``doubled`` and the callable :func:`remember_sunk`;
- agent ``collect`` reads ``doubled`` back.

``GET /state/`` returns the counters and both lists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from faust import StreamT

from apps.common import PARTITIONS, add_state_page, env_float, make_app

NUMBERS_TOPIC = "numbers"
DOUBLED_TOPIC = "doubled"
TIMER_INTERVAL = env_float("TIMER_INTERVAL", 0.3)

app = make_app("features")
numbers = app.topic(NUMBERS_TOPIC, value_type=int, partitions=PARTITIONS)
doubled = app.topic(DOUBLED_TOPIC, value_type=int, partitions=PARTITIONS)

counters: dict[str, int] = {"task_runs": 0, "timer_ticks": 0, "leader_ticks": 0}
sunk: list[int] = []
collected: list[int] = []


def remember_sunk(value: int) -> None:
    sunk.append(value)


@app.task
async def started() -> None:
    counters["task_runs"] += 1


@app.timer(interval=TIMER_INTERVAL)
async def tick() -> None:
    counters["timer_ticks"] += 1


@app.timer(interval=TIMER_INTERVAL, on_leader=True)
async def leader_tick() -> None:
    counters["leader_ticks"] += 1


@app.agent(numbers, sink=[doubled, remember_sunk])
async def double(stream: StreamT[int]) -> AsyncIterator[int]:
    async for n in stream:
        yield 2 * n


@app.agent(doubled)
async def collect(stream: StreamT[int]) -> None:
    async for n in stream:
        collected.append(n)


def _state() -> dict[str, Any]:
    return {
        **counters,
        "is_leader": app.is_leader(),
        "sunk": sorted(sunk),
        "collected": sorted(collected),
    }


add_state_page(app, _state)
