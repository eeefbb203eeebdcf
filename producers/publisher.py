"""Publisher: gets MEMORY_TIER_ACCESS events off the agent's path and onto Redis.

The caller's side is :meth:`Publisher.emit`: a bounds check and a deque
append, nothing else; it never blocks, never awaits and never raises. A
background task takes what has accumulated, groups the events by partition
(:func:`schemas.partition.partition_for` of the query fingerprint, the same
rule the redis:// transport uses), encodes each group as one JSON array per
stream entry (``schemas.wire``) and writes all entries of a round with one
pipelined round trip of ``XADD <stream> 0-* ...``.

Faults: when Redis is slow or down, events accumulate up to ``max_buffer``;
beyond it new events are dropped and counted (``stats.dropped``). A failed
write puts its events back at the head of the buffer and the task reconnects
with backoff (a redis-py ``AbstractBackoff`` object). Delivery is
at-least-once: if the connection breaks after Redis applied a write but before
the reply arrived, that batch is written again. :meth:`close` flushes what is
buffered, waiting at most ``close_timeout`` seconds; what it could not write
is counted as dropped.

:class:`SyncPublisher` runs the same machinery on a private event loop in a
daemon thread for agents that are not async.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.backoff import AbstractBackoff, ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from ..schemas.access import AccessEvent
from ..schemas.names import (
    ACCESS_PARTITIONS,
    ACCESS_TOPIC,
    TOPICS_INDEX_KEY,
    publisher_stats_key,
    stream_key,
    topic_meta_key,
)
from ..schemas.partition import partition_for
from ..schemas.wire import COUNT, TIMESTAMP, VALUE
from .errors import PublisherClosedError

logger = logging.getLogger(__name__)

#: Partition-cache entries kept before the cache is cleared (fingerprints repeat a lot).
_PARTITION_CACHE_MAX = 200_000
#: How often the publisher's counters are written to its stats hash, seconds.
_STATS_INTERVAL_S = 5.0

_dumps = orjson.dumps


@dataclass
class PublisherStats:
    """Counters of one Publisher. ``sent`` counts events Redis acknowledged."""

    sent: int = 0
    dropped: int = 0
    #: events that could not be encoded as JSON (logged, never written)
    unencodable: int = 0
    entries: int = 0
    write_errors: int = 0
    reconnects: int = 0


def _safe_url(url: str) -> str:
    """``url`` without its password, for log lines."""
    head, sep, tail = url.partition("@")
    if not sep:
        return url
    scheme, _, _cred = head.partition("://")
    return f"{scheme}://***@{tail}"


class Publisher:
    """Batches events onto the partitioned access topic. See the module docstring.

    Args:
        redis_url: Redis >= 7.0 (``redis://``, ``rediss://``, with user and password).
        topic: topic to write (default ``tierstream.access``).
        partitions: partition count to use when the topic does not exist yet; an
            existing topic's metadata wins.
        max_buffer: events held while Redis is slow or down; more are dropped.
        batch_size: most events in one stream entry.
        max_round: most events taken from the buffer per write round.
        linger_s: how long the task waits for more events before writing.
        maxlen: approximate stream length retained per partition (``MAXLEN ~``), or None.
        backoff: reconnect policy (redis-py ``AbstractBackoff``).
        close_timeout: most seconds :meth:`close` spends flushing.
        publisher_id: names the stats hash (default ``<host pid>-<random>``).
    """

    def __init__(
        self,
        redis_url: str,
        *,
        topic: str = ACCESS_TOPIC,
        partitions: int = ACCESS_PARTITIONS,
        max_buffer: int = 100_000,
        batch_size: int = 1000,
        max_round: int = 50_000,
        linger_s: float = 0.05,
        maxlen: int | None = None,
        backoff: AbstractBackoff | None = None,
        close_timeout: float = 10.0,
        socket_timeout: float = 5.0,
        publisher_id: str | None = None,
    ) -> None:
        if max_buffer < 1 or batch_size < 1 or partitions < 1:
            raise ValueError("max_buffer, batch_size and partitions must be positive")
        self.redis_url = redis_url
        self.topic = topic
        self.default_partitions = partitions
        #: partition count in use: the topic's, once the publisher has seen Redis
        self.partitions = partitions
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.max_round = max_round
        self.linger_s = linger_s
        self.maxlen = maxlen
        self.backoff = backoff or ExponentialWithJitterBackoff(base=0.05, cap=2.0)
        self.close_timeout = close_timeout
        self.socket_timeout = socket_timeout
        self.publisher_id = publisher_id or f"{os.uname().nodename}-{os.getpid()}-{id(self):x}"
        self.stats = PublisherStats()
        #: encoded events waiting to be written, one queue per partition
        self._queues: list[deque[bytes]] = [deque() for _ in range(partitions)]
        self._count = 0
        self._inflight = 0
        #: held by the writer while it moves bytes out of the queues; SyncPublisher
        #: puts a real lock here because its callers emit from other threads
        self._lock: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._wakeup = asyncio.Event()
        # Wake the writer early only for a large backlog: every round it runs lands
        # between the agent's own awaits, so fewer, larger rounds keep p99 low.
        self._wake_at = max(1, min(max_buffer // 2, 10 * batch_size))
        self._part_cache: dict[str, int] = {}
        self._streams = [stream_key(topic, p) for p in range(partitions)]
        self._client: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._stats_at = 0.0
        self._connected_once = False

    # -- the caller's path ---------------------------------------------------

    def emit(self, event: AccessEvent) -> None:
        """Queue one event. Never blocks, never raises; drops (and counts) when full.

        The event is encoded here, once: buffering bytes rather than dicts keeps
        the garbage collector's young generation small in the agent process.
        """
        if self._count >= self.max_buffer or self._closed:
            self.stats.dropped += 1
            return
        try:
            data = _dumps(event)
        except TypeError as exc:
            self._unencodable(event, exc)
            return
        try:
            p = self._part_cache[event["query_fingerprint"]]
        except (KeyError, TypeError):
            p = self._partition_of(event)
        self._queues[p].append(data)
        self._count += 1
        if self._count == self._wake_at:
            self._wake()

    def _partition_of(self, event: AccessEvent) -> int:
        """Partition of an event whose fingerprint is not cached yet."""
        fp = str(event.get("query_fingerprint") or "") if isinstance(event, dict) else ""
        cache = self._part_cache
        if len(cache) >= _PARTITION_CACHE_MAX:
            cache.clear()
        p = cache[fp] = partition_for(fp.encode(), len(self._queues))
        return p

    def _unencodable(self, event: AccessEvent, exc: Exception) -> None:
        self.stats.unencodable += 1
        if self.stats.unencodable == 1 or self.stats.unencodable % 1000 == 0:
            logger.error(
                "publisher dropped an event that is not JSON-encodable (%s; %d so far): %.200r",
                exc,
                self.stats.unencodable,
                event,
            )

    def _wake(self) -> None:
        self._wakeup.set()

    @property
    def buffered(self) -> int:
        return self._count + self._inflight

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> Publisher:
        """Start the background writer. Returns at once, even when Redis is down."""
        if self._closed:
            raise PublisherClosedError("this Publisher was closed; create a new one")
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name=f"tierstream-publisher-{self.topic}")
        return self

    async def __aenter__(self) -> Publisher:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything emitted so far is acknowledged; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake()
        while self._count or self._inflight:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._wake()
            await asyncio.sleep(0.002)
        return True

    async def close(self) -> None:
        """Flush (at most ``close_timeout`` seconds), stop the task, count what is left."""
        if self._closed:
            return
        self._closing = True
        if self._task is not None:
            await self.flush(self.close_timeout)
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        left = self.buffered
        if left:
            self.stats.dropped += left
            for q in self._queues:
                q.clear()
            self._count = 0
            logger.warning(
                "publisher closed with %d events unwritten (counted as dropped); "
                "redis at %s did not accept them in time",
                left,
                _safe_url(self.redis_url),
            )
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._write_stats(self._client)
            await self._client.aclose()
            self._client = None

    # -- the background writer ------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                client = await self._connect()
                await self._pump(client)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, RedisError | OSError):
                    logger.exception("publisher write round failed unexpectedly; retrying")
                self.stats.write_errors += 1
                failures += 1
                delay = self.backoff.compute(failures)
                if failures == 1 or failures % 20 == 0:
                    logger.warning(
                        "publisher cannot write to redis at %s (%s: %s); %d events "
                        "buffered, %d dropped so far; retrying in %.2fs",
                        _safe_url(self.redis_url),
                        type(exc).__name__,
                        exc,
                        self._count,
                        self.stats.dropped,
                        delay,
                    )
                await self._drop_client()
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _connect(self) -> aioredis.Redis:
        if self._client is not None:
            return self._client
        client = aioredis.Redis.from_url(
            self.redis_url,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=min(self.socket_timeout, 2.0),
        )
        try:
            await self._ensure_topic(client)
        except BaseException:
            await client.aclose()
            raise
        if self._connected_once:
            self.stats.reconnects += 1
            logger.info("publisher reconnected to redis at %s", _safe_url(self.redis_url))
        self._connected_once = True
        self._client = client
        return client

    async def _drop_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()
            self._client = None

    async def _ensure_topic(self, client: aioredis.Redis) -> None:
        """Learn the topic's partition count, creating its metadata when missing."""
        meta = topic_meta_key(self.topic)
        pipe = client.pipeline(transaction=True)
        pipe.hsetnx(meta, "partitions", self.default_partitions)
        pipe.hsetnx(meta, "created_ms", int(time.time() * 1000))
        pipe.sadd(TOPICS_INDEX_KEY, self.topic)
        pipe.hget(meta, "partitions")
        *_, raw = await pipe.execute()
        partitions = int(raw)
        if partitions != self.partitions:
            self._repartition(partitions)

    def _repartition(self, partitions: int) -> None:
        """Switch to the topic's real partition count, moving what is buffered (rare)."""
        logger.info(
            "topic %s has %d partitions (publisher assumed %d)",
            self.topic,
            partitions,
            self.partitions,
        )
        with self._lock:
            old = [data for q in self._queues for data in q]
            self.partitions = partitions
            self._part_cache.clear()
            self._streams = [stream_key(self.topic, p) for p in range(partitions)]
            self._queues = [deque() for _ in range(partitions)]
            for data in old:
                fp = str(orjson.loads(data).get("query_fingerprint") or "")
                self._queues[partition_for(fp.encode(), partitions)].append(data)

    async def _pump(self, client: aioredis.Redis) -> None:
        while not (self._closed and not self._count):
            if not self._count:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=0.25)
            elif self._count < self.batch_size and not self._closing and self.linger_s > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=self.linger_s)
            if self._count:
                await self._write_round(client)
            now = time.monotonic()
            if now - self._stats_at >= _STATS_INTERVAL_S:
                self._stats_at = now
                await self._write_stats(client)

    async def _write_round(self, client: aioredis.Redis) -> None:
        """Write what is queued (at most ``max_round`` events) in one pipelined round trip."""
        taken: list[tuple[int, list[bytes]]] = []
        budget = self.max_round
        with self._lock:
            for p, q in enumerate(self._queues):
                n = min(len(q), budget)
                if n:
                    popleft = q.popleft
                    taken.append((p, [popleft() for _ in range(n)]))
                    budget -= n
            total = self.max_round - budget
            self._count -= total
            self._inflight = total
        try:
            pipe = client.pipeline(transaction=False)
            ts = b"%d" % int(time.time() * 1000)
            size = self.batch_size
            entries = 0
            for p, items in taken:
                key = self._streams[p]
                for i in range(0, len(items), size):
                    chunk = items[i : i + size]
                    fields: dict[bytes, bytes] = {
                        VALUE: b"[" + b",".join(chunk) + b"]",
                        TIMESTAMP: ts,
                        COUNT: b"%d" % len(chunk),
                    }
                    pipe.xadd(key, fields, id="0-*", maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
                    entries += 1
            await pipe.execute()
        except BaseException:
            # Not acknowledged: back to the head of their queues, within the bound.
            with self._lock:
                room = max(0, self.max_buffer - self._count)
                for p, items in taken:
                    keep = items[len(items) - min(room, len(items)) :]
                    self.stats.dropped += len(items) - len(keep)
                    room -= len(keep)
                    self._queues[p].extendleft(reversed(keep))
                    self._count += len(keep)
                self._inflight = 0
            raise
        self._inflight = 0
        self.stats.sent += total
        self.stats.entries += entries

    async def _write_stats(self, client: aioredis.Redis) -> None:
        s = self.stats
        key = publisher_stats_key(self.publisher_id)
        pipe = client.pipeline(transaction=False)
        pipe.hset(
            key,
            mapping={
                "topic": self.topic,
                "sent": s.sent,
                "dropped": s.dropped,
                "write_errors": s.write_errors,
                "buffered": self.buffered,
                "ts": time.time(),
            },
        )
        pipe.expire(key, 86_400)
        await pipe.execute()


class SyncPublisher:
    """A :class:`Publisher` for synchronous code: a private event loop in a daemon thread.

    ``emit`` is safe to call from any thread. Use as a context manager or call
    :meth:`close` at exit so that buffered events are flushed.
    """

    def __init__(self, redis_url: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self.publisher: Publisher | None = None
        self._options = options
        self._url = redis_url
        self._thread = threading.Thread(target=self._main, name="tierstream-publisher", daemon=True)
        self._thread.start()
        self._ready.wait()
        assert self.publisher is not None
        self._emit: Callable[[AccessEvent], None] = self.publisher.emit

    def emit(self, event: AccessEvent) -> None:
        """Queue one event; safe from any thread. Never blocks on Redis, never raises."""
        with self._lock:
            self._emit(event)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def boot() -> None:
            pub = Publisher(self._url, **self._options)
            loop = self._loop

            # emit() runs on the caller's threads: wake the writer through the loop.
            def wake() -> None:
                loop.call_soon_threadsafe(pub._wakeup.set)

            pub._wake = wake  # type: ignore[method-assign]
            pub._lock = self._lock
            self.publisher = pub
            await pub.start()

        self._loop.run_until_complete(boot())
        self._ready.set()
        self._loop.run_forever()

    @property
    def stats(self) -> PublisherStats:
        assert self.publisher is not None
        return self.publisher.stats

    def flush(self, timeout: float | None = None) -> bool:
        assert self.publisher is not None
        fut = asyncio.run_coroutine_threadsafe(self.publisher.flush(timeout), self._loop)
        return fut.result()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        assert self.publisher is not None
        asyncio.run_coroutine_threadsafe(self.publisher.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
