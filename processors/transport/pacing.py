"""Pacing of the redis:// delivery loop: agents' buffers kept shallow.

Responsible for: the delivery loop's turn every ``yield_every`` messages
(:mod:`.delivery`). Where that turn used to be one loop turn, it now waits,
when an agent's buffer holds more than :data:`PACE_DEPTH` events, until the
agent has taken enough of them that the next ``yield_every`` fit under the
depth again.

Why: Faust's stream takes one event per loop turn (its iterator awaits
``sleep(0)`` per event), and the delivery loop delivered ``yield_every`` per
turn; every buffer filled up to its pressure mark (~3,300 of 4,096 events)
and stayed there. Garbage collection is what that cost: the collector runs
a young collection when allocations outnumber deallocations by 700, and a
fetch delivered in a burst is ~3 tracked objects (message, event, ack
weakref) per message. Each young collection found a few hundred events
waiting in the buffer and moved them to an older generation, and there they
made full collections of the whole worker (measured on the 200k-message
bench: ~620 young, ~56 middle and 5 full collections, 1.7-1.8 us a message,
of it 1.0 in the full ones). An in-memory channel, whose feeder waits for
room at every message, allocates as its agent frees and had none. Paced,
deliveries and the agent's frees alternate in steps of ``yield_every``, and
with the fetch made into messages a chunk at a time (``_parse_some``) the
worker allocates at most a few hundred objects more than it frees.

How the wait is kept cheap: an asyncio queue wakes one waiting putter per
get. :func:`drained` puts ``gets - 1`` stand-ins (:data:`TICK`, whose
``done()`` and ``set_result()`` are C built-ins that do nothing) and then a
future in the queue's putters: the agent's gets pop them in turn, and the
``gets``-th wakes the delivery loop. One future and one timer per
``yield_every`` messages; per get, a pop and two C calls.

Never a stall: a wait ends after :data:`PACE_WAIT` seconds whatever the
agent did, and an agent that made it wait that long (a slow agent: one
whose buffer is deep because it is slow, not because deliveries came in a
burst) is not waited for again for :data:`SLOW_FOR` seconds, so other
partitions and agents are not held up by it: its buffer fills up to
Faust's pressure mark, as without pacing. A buffer cleared by a rebalance
(``ThrowableQueue.clear`` cancels its putters) ends the wait too.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from itertools import repeat
from typing import Any

from faust.types import TP

#: Events in an agent's buffer above which the delivery loop waits for it.
PACE_DEPTH = 256

#: Longest wait for an agent to take events (seconds).
PACE_WAIT = 0.02

#: How long an agent that made the loop wait ``PACE_WAIT`` is not waited for.
SLOW_FOR = 1.0


class _Tick:
    """Stands in a queue's waiting putters: what ``Queue._wakeup_next`` and
    ``ThrowableQueue.clear`` call on it are C built-ins that do nothing."""

    __slots__ = ()
    done = bool  # done() -> False: "wake me"
    cancel = bool  # cancel() -> False
    set_result = id  # set_result(None): nothing


TICK = _Tick()

#: result of a wait that ran out of time (a get sets None)
_TIMED_OUT = False


def _time_out(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(_TIMED_OUT)


async def drained(queue: asyncio.Queue[Any], gets: int, timeout: float | None = None) -> bool:
    """Wait until ``gets`` items were taken from ``queue`` (or it was
    cleared): True; or until ``timeout`` (default :data:`PACE_WAIT`)
    passed: False."""
    if timeout is None:
        timeout = PACE_WAIT
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    putters: Any = queue._putters  # type: ignore[attr-defined]
    if gets > 1:
        putters.extend(repeat(TICK, gets - 1))
    putters.append(future)
    timer = loop.call_later(timeout, _time_out, future)
    try:
        await future
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not future.cancelled() or (task is not None and task.cancelling()):
            raise
        # The queue was cleared (its putters cancelled): nothing left to take.
        return True
    finally:
        timer.cancel()
        # Woken by a get, every stand-in before the future was taken too.
        if future.cancelled() or not future.done() or future.result() is _TIMED_OUT:
            _remove(putters, future)
    return future.result() is not _TIMED_OUT


def _remove(putters: Any, future: asyncio.Future[Any]) -> None:
    """Take this wait's stand-ins and future out of ``putters``."""
    kept = [p for p in putters if p is not TICK and p is not future]
    putters.clear()
    putters.extend(kept)


class Pacer:
    """The delivery loop's turn: waits for the agents of a partition whose
    buffers are deeper than :data:`PACE_DEPTH` (see the module doc)."""

    def __init__(self, conductor: Any, step: int) -> None:
        #: the conductor's channels per partition (Faust's ``_tp_index``)
        self._index: Any = getattr(conductor, "_tp_index", {})
        #: events delivered between two turns
        self._step = step
        #: queue -> monotonic time until which it is not waited for
        self._slow: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def turn(self, tp: TP) -> None:
        """A loop turn after ``tp``'s deliveries; a wait while one of its
        agents' buffers is deep and the agent keeps up."""
        waited = False
        for chan in tuple(self._index.get(tp, ())):
            queue = getattr(chan, "queue", None)
            if queue is None:
                continue
            size = queue.qsize()
            if size <= PACE_DEPTH or (queue.maxsize and queue.maxsize < 2 * PACE_DEPTH):
                continue
            slow = self._slow
            if slow:
                until = slow.get(queue)
                if until is not None:
                    if time.monotonic() < until:
                        continue
                    del slow[queue]
            waited = True
            # Down to the depth minus a step, at most two steps per turn (a
            # buffer filled before, e.g. while this agent was slow, drains
            # over several turns: every turn allocates what the agent freed).
            gets = min(size - PACE_DEPTH + self._step, 2 * self._step)
            if not await drained(queue, gets):
                slow[queue] = time.monotonic() + SLOW_FOR
        if not waited:
            await asyncio.sleep(0)
