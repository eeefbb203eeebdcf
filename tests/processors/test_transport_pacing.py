"""redis:// transport: the delivery loop's pacing (``processors/transport/pacing.py``).

On the queues Faust's streams read (a topic's ``ThrowableQueue`` with flow
control): a wait ends after exactly the number of gets asked for, when the
queue is cleared, or at its time limit; it leaves nothing behind in the
queue's putters, and Faust's own waiting putters still get their turns. The
pacer waits only for agents whose buffers are deep, and not again for one
that made it wait the whole time limit.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import faust
import pytest
import redis
from faust.types import TP
from tierstream.processors.transport import pacing
from tierstream.processors.transport.pacing import PACE_LEVEL, Pacer, drained

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faustproc as fp

pytestmark = pytest.mark.timeout(60)


def _topic(redis_url: str, unique: str, maxsize: int = 4096) -> tuple[faust.App, Any]:
    app = faust.App(unique, broker=redis_url, web_enabled=False, stream_buffer_maxsize=maxsize)
    app.flow_control.resume()
    return app, app.topic(unique).clone(is_iterator=True)


def _filled(redis_url: str, unique: str, n: int, maxsize: int = 4096) -> Any:
    """A stream buffer (a topic's queue) holding ``0 .. n - 1``."""
    _app, topic = _topic(redis_url, unique, maxsize)
    queue = topic.queue
    for i in range(n):
        queue.put_nowait(i)
    return queue


def _hold_up_the_loop(seconds: float) -> None:
    time.sleep(seconds)


async def _agent(queue: Any, gets: int, taken: list[Any]) -> None:
    """What a stream does: take one item per loop turn."""
    for _ in range(gets):
        await asyncio.sleep(0)
        taken.append(queue.get_nowait())


async def test_wait_ends_after_exactly_the_gets_asked_for(redis_url: str, unique: str) -> None:
    queue = _filled(redis_url, unique, 50)
    wait = asyncio.ensure_future(drained([(queue, 7)], timeout=30))
    await asyncio.sleep(0)
    taken: list[Any] = []
    await _agent(queue, 6, taken)
    await asyncio.sleep(0)
    assert not wait.done()
    await _agent(queue, 1, taken)
    assert await asyncio.wait_for(wait, 5) is True
    assert taken == list(range(7))
    assert len(queue._putters) == 0


async def test_after_a_time_out_the_stand_ins_are_skipped(redis_url: str, unique: str) -> None:
    queue = _filled(redis_url, unique, 20, maxsize=20)
    t0 = time.monotonic()
    wait = asyncio.ensure_future(drained([(queue, 10)], timeout=0.05))
    await _agent(queue, 2, [])
    assert await wait is False
    assert 0.04 < time.monotonic() - t0 < 5
    # Full again; Faust's put waits behind the 7 stand-ins and the future
    # left over: the next get wakes it all the same.
    queue.put_nowait(20)
    queue.put_nowait(21)
    put = asyncio.ensure_future(queue.put(22))
    await asyncio.sleep(0)
    assert not put.done()
    await _agent(queue, 1, [])
    await asyncio.wait_for(put, 5)
    assert len(queue._putters) == 0


async def test_a_time_out_that_comes_late_is_not_the_agents_doing(
    redis_url: str, unique: str
) -> None:
    queue = _filled(redis_url, unique, 20)
    wait = asyncio.ensure_future(drained([(queue, 10)], timeout=0.02))
    await asyncio.sleep(0)
    _hold_up_the_loop(0.1)  # (a long garbage collection, say)
    assert await wait is None


async def test_faust_putters_still_get_their_turns(redis_url: str, unique: str) -> None:
    # A full buffer: the conductor's put waits for room (asyncio's putter);
    # a pacing wait queued behind it does not take its wake-up.
    queue = _filled(redis_url, unique, 5, maxsize=5)
    put = asyncio.ensure_future(queue.put(5))
    await asyncio.sleep(0)
    assert not put.done()
    wait = asyncio.ensure_future(drained([(queue, 2)], timeout=30))
    await asyncio.sleep(0)
    taken: list[Any] = []
    await _agent(queue, 1, taken)
    await asyncio.wait_for(put, 5)
    assert not wait.done()
    await _agent(queue, 2, taken)
    assert await asyncio.wait_for(wait, 5) is True
    assert taken == [0, 1, 2]
    assert list(queue._queue) == [3, 4, 5]


async def test_a_cleared_queue_ends_the_wait(redis_url: str, unique: str) -> None:
    # A rebalance clears the buffers (ThrowableQueue.clear cancels the putters):
    # nothing is left to wait for, and the waiting task is not cancelled.
    queue = _filled(redis_url, unique, 30)
    wait = asyncio.ensure_future(drained([(queue, 20)], timeout=30))
    await asyncio.sleep(0)
    queue.clear()
    assert await asyncio.wait_for(wait, 5) is True
    assert len(queue._putters) == 0


async def test_cancelling_the_waiting_task_cancels_and_cleans_up(
    redis_url: str, unique: str
) -> None:
    queue = _filled(redis_url, unique, 30)
    wait = asyncio.ensure_future(drained([(queue, 20)], timeout=30))
    await asyncio.sleep(0)
    wait.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait
    # what is left is skipped by the next get
    await _agent(queue, 1, [])
    assert len(queue._putters) == 0


async def _take_until_done(queue: Any, turn: asyncio.Future[Any], taken: list[Any]) -> None:
    """An agent taking one item per loop turn until ``turn`` is done."""
    while True:
        await asyncio.sleep(0)
        if turn.done():
            return
        taken.append(queue.get_nowait())


def _pacer(app: faust.App, tp: TP, topic: Any, step: int = 100) -> Pacer:
    # What the conductor's index holds once the partition is assigned.
    conductor: Any = app.topics
    conductor._tp_index[tp].add(topic)
    return Pacer(conductor, step)


async def test_pacer_waits_until_the_buffer_is_down_to_the_level(
    redis_url: str, unique: str
) -> None:
    app, topic = _topic(redis_url, unique)
    tp = TP(unique, 0)
    pacer = _pacer(app, tp, topic)
    queue = topic.queue
    for i in range(PACE_LEVEL + 70):
        queue.put_nowait(i)
    turn = asyncio.ensure_future(pacer.turn(tp))
    taken: list[Any] = []
    await _take_until_done(queue, turn, taken)
    assert len(taken) == 70
    assert queue.qsize() == PACE_LEVEL


async def test_pacer_takes_at_most_two_steps_per_turn(redis_url: str, unique: str) -> None:
    app, topic = _topic(redis_url, unique)
    tp = TP(unique, 0)
    pacer = _pacer(app, tp, topic, step=40)
    queue = topic.queue
    for i in range(3000):
        queue.put_nowait(i)
    turn = asyncio.ensure_future(pacer.turn(tp))
    taken: list[Any] = []
    await _take_until_done(queue, turn, taken)
    assert len(taken) == 80


async def test_pacer_does_not_wait_for_a_shallow_buffer(redis_url: str, unique: str) -> None:
    app, topic = _topic(redis_url, unique)
    tp = TP(unique, 0)
    pacer = _pacer(app, tp, topic)
    for i in range(PACE_LEVEL):
        topic.queue.put_nowait(i)
    await asyncio.wait_for(pacer.turn(tp), 1)
    assert topic.queue.qsize() == PACE_LEVEL
    # nor for a partition no agent reads, nor for a small buffer
    await asyncio.wait_for(pacer.turn(TP(unique, 1)), 1)
    app2, small = _topic(redis_url, unique + "s", maxsize=2 * PACE_LEVEL - 1)
    for i in range(PACE_LEVEL + 10):
        small.queue.put_nowait(i)
    await asyncio.wait_for(_pacer(app2, tp, small).turn(tp), 1)


async def test_another_agent_running_low_ends_the_wait(redis_url: str, unique: str) -> None:
    # Partitions 0 and 1 of the fetch go to different agents (a) and (b); an
    # agent of partition 2 (c) is not in the fetch.
    app, a = _topic(redis_url, unique)
    _app_b, b = _topic(redis_url, unique + "b")
    _app_c, c = _topic(redis_url, unique + "c")
    tps = [TP(unique, p) for p in range(3)]
    pacer = _pacer(app, tps[0], a)
    index: Any = app.topics
    index._tp_index[tps[1]].add(b)
    index._tp_index[tps[2]].add(c)
    for i in range(PACE_LEVEL + 100):
        a.queue.put_nowait(i)
    for i in range(pacing.HUNGRY + 30):
        b.queue.put_nowait(i)
    # (c is empty, but has nothing in this fetch)
    turn = asyncio.ensure_future(pacer.turn(tps[0], tps[:2]))
    taken: list[Any] = []
    await _take_until_done(b.queue, turn, taken)
    assert len(taken) == 30
    assert a.queue.qsize() == PACE_LEVEL + 100
    # b that low already: no wait at all
    await asyncio.wait_for(pacer.turn(tps[0], tps[:2]), 1)
    assert b.queue.qsize() == pacing.HUNGRY
    # and without b in the fetch, the wait is for a
    taken = []
    turn = asyncio.ensure_future(pacer.turn(tps[0], [tps[0]]))
    await _take_until_done(a.queue, turn, taken)
    assert len(taken) == 100


async def test_a_slow_agent_is_waited_for_once_then_left_alone(
    redis_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pacing, "PACE_WAIT", 0.05)
    app, topic = _topic(redis_url, unique)
    tp = TP(unique, 0)
    pacer = _pacer(app, tp, topic)
    for i in range(PACE_LEVEL + 300):
        topic.queue.put_nowait(i)
    t0 = time.monotonic()
    await pacer.turn(tp)  # nobody takes anything
    assert time.monotonic() - t0 >= 0.04
    t1 = time.monotonic()
    for _ in range(20):
        await pacer.turn(tp)
    assert time.monotonic() - t1 < 0.04
    # once SLOW_FOR has passed it is waited for again
    monkeypatch.setattr(pacing, "SLOW_FOR", 0.0)
    pacer._slow.clear()
    taken: list[Any] = []
    turn = asyncio.ensure_future(pacer.turn(tp))
    await _take_until_done(topic.queue, turn, taken)
    assert len(taken) == 200


# --- a worker with a slow and a fast agent -------------------------------------------


@pytest.mark.timeout(120)
def test_a_slow_agent_does_not_hold_up_a_fast_one(redis_url: str, tmp_path: Path) -> None:
    # One worker, two agents: "slow" takes 20 ms an event, "fast" nothing. Both
    # topics have a backlog; the fast agent's buffer is paced, the slow one's
    # makes the pacer wait its time limit. The fast agent gets its whole
    # backlog, in order, while the slow one is still at its first few hundred
    # events (of 2,000 x 20 ms = 40 s).
    client = redis.Redis.from_url(redis_url)
    try:
        partitions = 2
        slow_n, fast_n = 2000, 30000
        fp.xadd_messages(client, "slow", partitions, ((None, b"s", None) for _ in range(slow_n)))
        fp.xadd_messages(client, "fast", partitions, ((None, b"f", None) for _ in range(fast_n)))
        env = fp.app_env(redis_url, "paced", PARTITIONS=partitions)
        worker = fp.FaustWorker("apps.paced", env, tmp_path, "paced").start()
        try:
            last: dict[str, Any] = {}

            def fast_done() -> bool:
                nonlocal last
                last = worker.state() or {}
                return sum(len(v) for v in last.get("fast", {}).values()) >= fast_n

            fp.wait_for(
                fast_done,
                60,
                f"the fast agent to receive {fast_n} events",
                [worker],
                describe=lambda: (
                    f"fast {[len(v) for v in last.get('fast', {}).values()]}, "
                    f"slow {last.get('slow')}"
                ),
            )
            # Slow did 50 events a second meanwhile: ~150 here. A pacer that
            # waited for it without a limit let fast finish at ~1,800.
            print("slow agent's events when the fast one was done:", last["slow"])
            assert last["slow"] < 600
            per_partition = fp.highwaters(client, "fast", partitions)
            assert {int(p): v for p, v in last["fast"].items()} == {
                p: list(range(n)) for p, n in per_partition.items()
            }
        finally:
            worker.stop(timeout=5)
            print(worker.describe(60))
    finally:
        client.close()
