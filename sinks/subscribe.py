"""Subscribe to a result topic from any process: suggestions, alerts, summaries, metrics.

``async for rec in subscribe("alerts")`` reads the topic's partition streams
directly (``XREAD`` over all of them; no consumer group, nothing committed:
every subscriber sees everything), decodes the wire format
(``schemas/wire.py``) and yields each record as a dict. A value may be one
JSON object or an array of them (a batch); each object is yielded; Faust's
``__faust`` model metadata, if present, is removed; tombstones are skipped.

- ``from_beginning=False`` starts after the last entry of each partition at
  subscription time; ``True`` reads everything still stored first.
- ``follow=True`` waits for new entries forever (until the loop is left or
  :meth:`Subscription.close`); ``follow=False`` reads what is stored (from the
  beginning) up to the last entry at subscription time and stops.
- A topic that does not exist yet (no metadata hash
  :func:`schemas.names.topic_meta_key`) is waited for when following, and then
  read from its beginning (everything in it is newer than the subscription);
  without ``follow`` there is nothing to read.
- Entries that cannot be decoded are never yielded and never stop the
  subscription: each is counted in ``stats.bad`` and its reason kept in
  ``stats.problems`` (the last 100) and logged.

Order: entries of one partition arrive in order; partitions interleave.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ..schemas.errors import WireFormatError
from ..schemas.names import (
    ALERTS_TOPIC,
    METRICS_TOPIC,
    SUGGESTIONS_TOPIC,
    WINDOW_SUMMARIES_TOPIC,
    stream_key,
    topic_meta_key,
)
from ..schemas.wire import TOMBSTONE, decode_entry
from .errors import SubscribeError

logger = logging.getLogger(__name__)

#: What one can subscribe to, by short name.
TOPICS = {
    "suggestions": SUGGESTIONS_TOPIC,
    "alerts": ALERTS_TOPIC,
    "summaries": WINDOW_SUMMARIES_TOPIC,
    "metrics": METRICS_TOPIC,
}
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class SubscriptionStats:
    records: int = 0
    entries: int = 0
    bad: int = 0
    problems: deque[str] = field(default_factory=lambda: deque(maxlen=100))


def _id(raw: bytes | str) -> tuple[int, int]:
    s = raw.decode() if isinstance(raw, bytes) else raw
    major, _, minor = s.partition("-")
    return int(major), int(minor or 0)


class Subscription:
    """An async iterator of the records of one topic (see module docstring)."""

    def __init__(
        self,
        what: str,
        *,
        from_beginning: bool = False,
        follow: bool = True,
        redis_url: str = DEFAULT_REDIS_URL,
        client: aioredis.Redis | None = None,
        block_ms: int = 500,
        count: int = 500,
        poll_s: float = 0.2,
    ) -> None:
        self.topic = TOPICS.get(what, what)
        if self.topic not in TOPICS.values():
            raise SubscribeError(f"cannot subscribe to {what!r}; choose {', '.join(TOPICS)}")
        self.from_beginning = from_beginning or not follow
        self.follow = follow
        self._own = client is None
        self.client = client if client is not None else aioredis.Redis.from_url(redis_url)
        self.block_ms = block_ms
        self.count = count
        self.poll_s = poll_s
        self.stats = SubscriptionStats()
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        if self._own:
            await self.client.aclose()

    async def _partitions(self) -> int | None:
        while not self._closed:
            raw = await self.client.hget(topic_meta_key(self.topic), "partitions")
            if raw is not None:
                return int(raw)
            if not self.follow:
                return None
            # Created after we subscribed: all it will hold is new to us.
            self.from_beginning = True
            await asyncio.sleep(self.poll_s)
        return None

    async def _last_ids(self, keys: list[str]) -> dict[str, str]:
        out = {}
        for k in keys:
            try:
                info = await self.client.xinfo_stream(k)
            except ResponseError:  # no such stream yet: every entry will be new
                out[k] = "0-0"
                continue
            last = info["last-generated-id"]
            out[k] = last.decode() if isinstance(last, bytes) else str(last)
        return out

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            n = await self._partitions()
            if n is None:
                return
            keys = [stream_key(self.topic, p) for p in range(n)]
            ends = await self._last_ids(keys)
            pos = {k: "0-0" for k in keys} if self.from_beginning else dict(ends)
            if not self.follow:  # only what was there: skip streams already read to the end
                pos = {k: v for k, v in pos.items() if _id(v) < _id(ends[k])}
            while pos and not self._closed:
                streams: dict[Any, Any] = dict(pos)
                reply: Any = await self.client.xread(
                    streams, count=self.count, block=self.block_ms if self.follow else None
                )
                for key_raw, entries in reply or ():
                    key: str = key_raw.decode() if isinstance(key_raw, bytes) else key_raw
                    for entry_id, fields in entries:
                        if not self.follow and _id(entry_id) > _id(ends[key]):
                            pos.pop(key, None)
                            break
                        pos[key] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                        self.stats.entries += 1
                        for rec in self._decode(key, pos[key], fields):
                            self.stats.records += 1
                            yield rec
                        if not self.follow and _id(pos[key]) >= _id(ends[key]):
                            pos.pop(key, None)
                            break
                if not self.follow and not reply:
                    break  # the stored entries were trimmed meanwhile
        finally:
            if self._own and not self._closed:
                await self.close()

    def _decode(self, key: str, entry_id: str, fields: dict[bytes, bytes]) -> list[dict[str, Any]]:
        if fields.get(TOMBSTONE):
            return []
        try:
            _k, value, _ts, _h = decode_entry(fields)
            try:
                decoded = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise WireFormatError(f"value is not valid JSON: {exc}") from None
            items = decoded if isinstance(decoded, list) else [decoded]
            if not all(isinstance(x, dict) for x in items):
                raise WireFormatError("value must be a JSON object or an array of objects")
        except WireFormatError as exc:
            self.stats.bad += 1
            problem = f"{key} {entry_id}: {exc}"
            self.stats.problems.append(problem)
            logger.warning("subscribe: skipped an undecodable entry: %s", problem)
            return []
        for x in items:
            x.pop("__faust", None)
        return items


def subscribe(
    what: str,
    from_beginning: bool = False,
    redis_url: str = DEFAULT_REDIS_URL,
    *,
    follow: bool = True,
    client: aioredis.Redis | None = None,
    block_ms: int = 500,
) -> Subscription:
    """``async for rec in subscribe("suggestions")``: see the module docstring."""
    return Subscription(
        what,
        from_beginning=from_beginning,
        follow=follow,
        redis_url=redis_url,
        client=client,
        block_ms=block_ms,
    )
