"""Pacing of the redis:// delivery loop: agents' buffers kept shallow.

Responsible for: the delivery loop's turn every ``yield_every`` messages
(:mod:`.delivery`). Where that turn used to be one loop turn, it now waits,
when an agent's buffer holds more than :data:`PACE_LEVEL` events, until the
agent has taken it down to that level (at most two steps of
``yield_every`` events per turn).

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
worker allocates at most a few hundred objects more than it frees: ~80-150
young collections and 1 full per 200k messages, 0.2-0.3 us a message, and
consume/channel 0.77 -> 0.91 (bench/transport.py, medians of 3).

How the wait is kept cheap: an asyncio queue wakes one waiting putter per
get. :func:`drained` puts ``gets - 1`` stand-ins (:class:`_Ticks`, whose
``done()``, ``set_result()`` and ``cancel()`` are C built-ins) and then a
future in the queue's putters: the agent's gets pop them in turn, and the
``gets``-th wakes the delivery loop. When the wait is over, the stand-ins
still in the queue say they are done, and later gets skip them. One future
and one timer per ``yield_every`` messages; per get, a pop and two C calls.

Never a stall for others: while the loop waits for one agent, the other
agents whose partitions are in the fetch being delivered have stand-ins of
the same future in their queues, down to :data:`HUNGRY` events: the first
of them to run that low ends the wait (and one that is that low already
means no wait). A wait also ends after :data:`PACE_WAIT` seconds whatever
the agent did; an agent that made it wait that long (a slow agent: one
whose buffer is deep because it is slow, not because deliveries came in a
burst) is not waited for again for :data:`SLOW_FOR` seconds, and its
buffer fills up to Faust's pressure mark, as without pacing. A time-out
that comes late (the loop itself was held up, say by a full garbage
collection) does not count the agent as slow. A buffer cleared by a
rebalance (``ThrowableQueue.clear`` cancels its putters) ends the wait too.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterable
from itertools import repeat
from typing import Any

from faust.types import TP

#: The delivery loop's turn waits until an agent's buffer is down to this many
#: events (taking at most two steps of events per turn).
PACE_LEVEL = 200

#: The buffer of an agent of another partition of the fetch being delivered
#: this low ends a wait (that agent needs its entries delivered).
HUNGRY = 100

#: Longest wait for an agent to take events (seconds).
PACE_WAIT = 0.02

#: How long an agent that made the loop wait ``PACE_WAIT`` is not waited for.
SLOW_FOR = 1.0

#: A queue's waiting putters are purged of finished stand-ins above this many.
PUTTERS_PURGE = 4096


class _Ticks:
    """Stands in a queue's waiting putters for one wait: what
    ``Queue._wakeup_next`` and ``ThrowableQueue.clear`` call on it are C
    built-ins. ``done()`` is false (a get that pops it counts as one of the
    gets waited for) until the wait is over, then true: a get skips it."""

    __slots__ = ("cancel", "done", "over", "set_result")

    def __init__(self) -> None:
        self.over: list[bool] = []
        self.done = self.cancel = self.over.__len__
        self.set_result = id


#: results of a wait that ran out of time: on time (the agent is slow) or
#: late (the loop itself was held up, e.g. by a garbage collection)
_TIMED_OUT = "timed out"
_LATE = "late"


def _time_out(future: asyncio.Future[Any], deadline: float, timeout: float) -> None:
    if not future.done():
        late = future.get_loop().time() - deadline > timeout / 2
        future.set_result(_LATE if late else _TIMED_OUT)


async def drained(
    waits: list[tuple[asyncio.Queue[Any], int]], timeout: float | None = None
) -> bool | None:
    """Wait until, for one of ``waits``, ``gets`` items were taken from its
    queue (or a queue was cleared): True; or until ``timeout`` (default
    :data:`PACE_WAIT`) passed: False, or None if the loop was held up so
    that the time-out came late."""
    if timeout is None:
        timeout = PACE_WAIT
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    ticks = _Ticks()
    for queue, gets in waits:
        putters: Any = queue._putters  # type: ignore[attr-defined]
        if len(putters) > PUTTERS_PURGE:
            kept = [p for p in putters if not p.done()]
            putters.clear()
            putters.extend(kept)
        if gets > 1:
            putters.extend(repeat(ticks, gets - 1))
        putters.append(future)
    deadline = loop.time() + timeout
    timer = loop.call_at(deadline, _time_out, future, deadline, timeout)
    try:
        await future
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not future.cancelled() or (task is not None and task.cancelling()):
            raise
        # A queue was cleared (its putters cancelled): nothing left to take.
        return True
    finally:
        timer.cancel()
        # The stand-ins left in the queues are skipped from now on (and the
        # future, done, too).
        ticks.over.append(True)
    result = future.result()
    return True if result is None else (None if result is _LATE else False)


class Pacer:
    """The delivery loop's turn: waits for the agents of a partition whose
    buffers hold more than :data:`PACE_LEVEL` events (see the module doc)."""

    def __init__(self, conductor: Any, step: int) -> None:
        #: the conductor's channels per partition (Faust's ``_tp_index``)
        self._index: Any = getattr(conductor, "_tp_index", {})
        #: events delivered between two turns
        self._step = step
        #: queue -> monotonic time until which it is not waited for
        self._slow: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    async def turn(self, tp: TP, fetched: Iterable[TP] = ()) -> None:
        """A loop turn after ``tp``'s deliveries; a wait while one of its
        agents' buffers is above the level and the agent keeps up, unless an agent of
        another partition of the fetch (``fetched``) is about to run dry."""
        index = self._index
        step = self._step
        deep: list[Any] = []
        waits: list[tuple[Any, int]] = []
        slow = self._slow
        for chan in index.get(tp, ()):
            queue = getattr(chan, "queue", None)
            if queue is None:
                continue
            size = queue.qsize()
            if size <= PACE_LEVEL or (queue.maxsize and queue.maxsize < 2 * PACE_LEVEL):
                continue
            if slow:
                until = slow.get(queue)
                if until is not None:
                    if time.monotonic() < until:
                        continue
                    del slow[queue]
            deep.append(queue)
            # Down to the level, at most two steps per turn (a buffer filled
            # before, e.g. while this agent was slow, drains over several
            # turns: every turn allocates about what the agent freed).
            waits.append((queue, min(size - PACE_LEVEL, 2 * step)))
        if not waits:
            await asyncio.sleep(0)
            return
        # The other agents of the fetch: one that runs low ends the wait (one
        # that is low already, no wait).
        seen = set(deep)
        for other in fetched:
            if other == tp:
                continue
            for chan in index.get(other, ()):
                queue = getattr(chan, "queue", None)
                if queue is None or queue in seen:
                    continue
                seen.add(queue)
                size = queue.qsize()
                if size <= HUNGRY:
                    await asyncio.sleep(0)
                    return
                waits.append((queue, size - HUNGRY))
        if await drained(waits) is False:
            until = time.monotonic() + SLOW_FOR
            for queue in deep:
                slow[queue] = until
