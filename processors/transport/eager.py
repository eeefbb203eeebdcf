"""Run a coroutine eagerly: to completion without a task if it never waits.

Responsible for :func:`start_eagerly`, the fast path of the consumer's
delivery loop (Python 3.12 has ``asyncio.eager_task_factory``; 3.11 does not).
Handing a message to an agent usually completes without waiting (the agent's
buffer has room), so creating tasks for it is pure overhead.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

#: How many times a coroutine run by :func:`start_eagerly` went on after it
#: had waited (counted over all of them). Code in such a coroutine that
#: reads it before and after an ``await`` knows whether that ``await``
#: waited, and so whether other tasks may have run in between: if the count
#: did not move, they did not.
resumed = [0]


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Drive ``coro`` on from where :func:`start_eagerly` stopped: hand what
    it yielded (a future it waits on, or None) to the task running us, and
    pass wake-ups, values and exceptions (cancellation) through."""
    while True:
        try:
            sent = yield yielded
        except BaseException as exc:  # includes CancelledError thrown by the task
            resumed[0] += 1
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            resumed[0] += 1
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _finish(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _resume(coro, yielded)


def start_eagerly(coro: Awaitable[Any]) -> asyncio.Future[Any] | None:
    """Run ``coro`` until it first waits. Returns None if it finished (its
    exception, if any, is raised here), else a task that finishes it.
    Awaitables that are not coroutines simply become tasks."""
    if not isinstance(coro, Coroutine):
        return asyncio.ensure_future(coro)
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_finish(coro, yielded))
