"""The word count app (``apps.wordcount``) with a skewed clock or a slow event
loop, recording when it takes up and gives up partitions.

``CLOCK_SKEW_S`` (seconds, default 0): ``time.time()`` in this process runs
that far ahead (negative: behind), patched before Faust is imported.
``BLOCK_EVERY`` / ``BLOCK_S``: every ``BLOCK_EVERY``-th counted word blocks
the whole event loop for ``BLOCK_S`` seconds (``time.sleep``), like a slow
worker whose heartbeats come late but within the session timeout.

Ownership log: on every assignment (after the hand-over) and on every revoke
(inside Faust's revoke, before the group is told it is done) and before it
leaves the group (graceful stop: it gives up everything) the worker
appends ``{"pid", "event": "assign"|"revoke"|"leave", "tps": [...]}`` to the Redis
list ``test:ownership``. Redis orders the entries, so replaying the list shows
whether a partition of ``posts``/``words`` ever had two holders at once.
"""

from __future__ import annotations

import os
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from apps.common import env_float, env_int

SKEW = env_float("CLOCK_SKEW_S", 0.0)
if SKEW:
    _real_time = time.time

    def _skewed_time() -> float:
        return _real_time() + SKEW

    time.time = _skewed_time

from faust.types import TP  # noqa: E402
from tierstream.processors.transport.group import GroupMember  # noqa: E402

import apps.wordcount as wordcount  # noqa: E402

app = wordcount.app
OWNERSHIP_KEY = "test:ownership"
BLOCK_EVERY = env_int("BLOCK_EVERY", 0)
BLOCK_S = env_float("BLOCK_S", 0.0)
_client: aioredis.Redis | None = None
_counted = 0


async def _record(event: str, tps: set[TP]) -> None:
    global _client
    if _client is None:
        _client = aioredis.Redis.from_url(os.environ["BROKER_URL"])
    mine = sorted(
        f"{tp.topic}:{tp.partition}"
        for tp in tps
        if tp.topic in (wordcount.POSTS_TOPIC, wordcount.WORDS_TOPIC)
    )
    entry = {"pid": os.getpid(), "event": event, "tps": mine, "clock": time.time()}
    await _client.rpush(OWNERSHIP_KEY, orjson.dumps(entry))


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    await _record("revoke", revoked)


_leave = GroupMember.leave


async def _recording_leave(self: GroupMember) -> None:
    """A graceful stop gives up every partition by leaving the group."""
    await _record("leave", set())
    await _leave(self)


GroupMember.leave = _recording_leave  # type: ignore[method-assign]


@app.on_partitions_assigned.connect  # type: ignore[arg-type]
async def _on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
    await _record("assign", assigned)


if BLOCK_EVERY and BLOCK_S:

    @app.timer(interval=0.05)
    async def _block_sometimes() -> None:
        global _counted
        counted = sum(int(v) for v in wordcount.word_counts.values())
        if counted // BLOCK_EVERY > _counted // BLOCK_EVERY:
            time.sleep(BLOCK_S)  # noqa: ASYNC251  (blocks the event loop on purpose)
        _counted = counted
