"""The Faust producer of the redis:// transport.

Responsible for: choosing the partition of each message (explicit, else
``app.conf.producer_partitioner`` if set, else Kafka's murmur2 rule
:func:`schemas.partition.partition_for` for keyed messages, round-robin for
unkeyed ones), writing messages in the wire format (``XADD key 0-* v k t h``)
in batches, and resolving each send with a ``RecordMetadata`` holding the
real partition and offset (from the id ``XADD`` returned).

Batching: one sender task writes everything pending in one pipelined round
trip (non-transactional), up to ``producer_max_batch_size`` bytes of keys and
values (at least one message), after waiting ``producer_linger`` seconds for
more when the batch is not yet full (with no linger, until a few loop turns
pass without a new message: see ``_gather_burst``). Only one batch is in
flight at a time, which keeps per-partition order, also across retries.

Failures: if Redis cannot be reached the batch is retried with backoff until
it is acknowledged. A batch whose reply was lost may have been written
already; retrying it writes those entries again (at-least-once: duplicates
are possible, losses are not). An ``XADD`` refused because the stream was
broken by a foreign ``XADD *`` repairs the stream (:mod:`.deadletter`) and is
retried; any other Redis error fails that message's future.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import redis.exceptions
from faust.exceptions import ImproperlyConfigured, ProducerSendError
from faust.transport import producer as faust_producer
from faust.types import TP, HeadersArg, RecordMetadata
from mode.utils.times import Seconds

from ...schemas import names
from ...schemas.wire import HEADERS, KEY, TIMESTAMP, TOMBSTONE, VALUE
from .client import CONNECTION_ERRORS, Backoff
from .fencing import FENCED_PREFIX

if TYPE_CHECKING:
    from . import Transport

#: Longest wait for unacknowledged messages when the producer stops.
STOP_FLUSH_TIMEOUT = 15.0

#: With ``producer_linger`` 0, the sender waits this many loop turns in a row
#: without a new message before it writes (see ``Producer._gather_burst``) ...
QUIET_TURNS = 4
#: ... but never longer than this (seconds).
BURST_MAX = 0.005

#: The error Redis gives when ``XADD 0-*`` meets a foreign id at the tail.
_BROKEN_STREAM = "equal or smaller than the target stream top item"


class _Pending(NamedTuple):
    topic: str
    partition: int
    key: bytes  # stream key
    args: list[bytes]  # flat field/value list
    size: int
    timestamp_ms: int
    future: asyncio.Future[RecordMetadata]


def _headers_dict(headers: HeadersArg | None) -> dict[str, str] | None:
    """Faust headers (a mapping or a list of pairs, values bytes or str) ->
    the wire's JSON object of string to string. Values must be UTF-8."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for k, v in items:
        out[str(k)] = v.decode() if isinstance(v, bytes | bytearray) else str(v)
    return out


class _Buffer(faust_producer.ProducerBuffer):
    """Faust's producer buffer (``send_soon``: table changelog writes) with
    a complete ``flush`` and a cheap ``size``: Faust's conductor calls
    ``wait_until_ebb`` for every consumed message, and the stock ``size``
    reads a setting each time (~5% of a consuming worker's CPU). This
    transport has no threaded producer, so the queue is always ``pending``."""

    _in_flight = 0

    @property
    def size(self) -> int:
        return len(self.pending._queue)  # type: ignore[attr-defined]

    async def _send_pending(self, fut: Any) -> None:
        # Counted from the moment the buffer's task takes a message off the
        # queue until the producer has it (declaring a new topic on the way
        # waits for Redis): the queue alone looks empty during that time.
        self._in_flight += 1
        try:
            await super()._send_pending(fut)
        finally:
            self._in_flight -= 1

    async def flush(self) -> None:
        """Wait until every message put so far has been handed to the
        producer. Faust's version gives up after 0.1 s without progress, and
        does not see the message its task is sending."""
        while self.size or self._in_flight:
            if self.state != "running":
                raise RuntimeError("Cannot flush: Producer not Running")
            self.message_sent.clear()
            await self.message_sent.wait()

    def must_wait(self) -> bool:
        """Whether ``wait_until_ebb`` would wait (the conductor asks this
        for every message before it awaits the coroutine)."""
        return len(self.pending._queue) > self.max_messages  # type: ignore[attr-defined]

    async def wait_until_ebb(self) -> None:
        if self.must_wait():
            await super().wait_until_ebb()


class Producer(faust_producer.Producer):
    """Faust producer writing Redis Streams."""

    transport: Transport
    allow_headers: bool = True

    def __init__(
        self, transport: Any, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
    ) -> None:
        if transport.app.conf.producer_threaded:
            raise ImproperlyConfigured("the redis:// transport has no threaded producer")
        super().__init__(transport, loop=loop, **kwargs)
        self.buffer = _Buffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = self.app

    def __post_init__(self) -> None:
        self._queue: deque[_Pending] = deque()
        self._stream_keys: dict[tuple[str, int], bytes] = {}
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sender: asyncio.Task[None] | None = None
        self._send_on_produce_message = self.app.on_produce_message.send

    async def on_start(self) -> None:
        await super().on_start()
        await self.transport.connect(self.log, lambda: self.should_stop)
        self._sender = asyncio.ensure_future(self._send_loop())

    async def on_stop(self) -> None:
        try:
            # Bounded: with Redis gone, a stopping worker should not hang for
            # producer_request_timeout (20 minutes by default).
            await asyncio.wait_for(
                self._wait_idle(), timeout=min(self.request_timeout, STOP_FLUSH_TIMEOUT)
            )
        except TimeoutError:
            self.log.error(
                "Producer stopped with %d messages not acknowledged by Redis at %s",
                len(self._queue),
                self.transport.location.where,
            )
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sender
            self._sender = None
        while self._queue:
            fut = self._queue.popleft().future
            if not fut.done():
                fut.set_exception(ProducerSendError("producer stopped before the send"))

    # --- sending -------------------------------------------------------------

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: HeadersArg | None,
        *,
        transactional_id: str | None = None,
    ) -> Awaitable[RecordMetadata]:
        """Queue a message; the returned future resolves when Redis has it."""
        transport = self.transport
        n = transport.topics_or_none_partitions(topic)
        if n is None:
            n = await transport.retrying(
                lambda: transport.ensure_topic(topic), "declare topic", lambda: self.should_stop
            )
        if partition is None:
            partition = transport.choose_partition(topic, key, n)
        elif not 0 <= partition < n:
            raise ProducerSendError(
                f"partition {partition} out of range: topic {topic!r} has {n} partitions"
            )
        self._send_on_produce_message(
            key=key, value=value, partition=partition, timestamp=timestamp, headers=headers
        )
        ts_ms = int(timestamp * 1000) if timestamp else int(time.time() * 1000)
        # The wire format (schemas.wire.encode_entry), as XADD's flat argument list.
        args: list[bytes] = [VALUE, value if value is not None else b""]
        if key is not None:
            args += (KEY, key)
        args += (TIMESTAMP, b"%d" % ts_ms)
        if headers:
            args += (HEADERS, orjson.dumps(_headers_dict(headers)))
        if value is None:
            args += (TOMBSTONE, b"1")
        size = len(value or b"") + len(key or b"")
        fut: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self._queue.append(
            _Pending(
                topic,
                partition,
                self._stream_key(topic, partition),
                args,
                size,
                ts_ms,
                fut,
            )
        )
        self._queued_bytes += size
        self._idle.clear()
        self._wakeup.set()
        return fut

    def _stream_key(self, topic: str, partition: int) -> bytes:
        key = self._stream_keys.get((topic, partition))
        if key is None:
            key = self._stream_keys[(topic, partition)] = names.stream_key(
                topic, partition
            ).encode()
        return key

    async def send_and_wait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: HeadersArg | None,
        *,
        transactional_id: str | None = None,
    ) -> RecordMetadata:
        """Send and wait until Redis has the message."""
        fut = await self.send(topic, key, value, partition, timestamp, headers)
        return await fut

    async def _wait_idle(self) -> None:
        while self._queue or not self._idle.is_set():
            await self._idle.wait()

    async def flush(self) -> None:
        """Wait until every message sent so far is acknowledged by Redis:
        those in the buffer (``send_soon``) and those already handed to the
        producer (``send``). No time limit: Faust calls it before committing
        offsets, and a commit must not pass unwritten output."""
        await self.buffer.flush()
        await self._wait_idle()

    def _take_batch(self) -> list[_Pending]:
        limit = max(1, self.max_batch_size)
        batch: list[_Pending] = []
        size = 0
        queue = self._queue
        while queue and (not batch or size + queue[0].size <= limit):
            item = queue.popleft()
            size += item.size
            batch.append(item)
        self._queued_bytes -= size
        return batch

    async def _send_loop(self) -> None:
        linger = self.linger_ms / 1000.0
        while True:
            if not self._queue:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if linger and self._queued_bytes < self.max_batch_size:
                await asyncio.sleep(linger)
            elif not linger:
                await self._gather_burst()
            batch = self._take_batch()
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(ProducerSendError("producer stopped"))
                raise

    async def _gather_burst(self) -> None:
        """With no linger, let the sends already on their way join the batch:
        loop turns until :data:`QUIET_TURNS` in a row add nothing (at most
        :data:`BURST_MAX` seconds, or a full batch). Faust's ``Topic.send``
        gives the loop three turns before it queues its message, so without
        this each message of a burst went to Redis in a round trip of its own."""
        queue = self._queue
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BURST_MAX
        queued = len(queue)
        quiet = 0
        while quiet < QUIET_TURNS and self._queued_bytes < self.max_batch_size:
            await asyncio.sleep(0)
            if len(queue) != queued:
                queued = len(queue)
                quiet = 0
            else:
                quiet += 1
            if loop.time() > deadline:
                return

    async def _write(self, batch: list[_Pending]) -> None:
        """Write ``batch`` until every message is acknowledged or failed."""
        backoff = Backoff()
        transport = self.transport
        reload_scripts = False
        while batch:
            group = transport.group  # changelog writes are fenced (group.py)
            try:
                if reload_scripts and group is not None:
                    await group.load_scripts()
                    reload_scripts = False
                async with transport.client.pipeline(transaction=False) as pipe:
                    for item in batch:
                        if group is None or not group.fenced_xadd(
                            pipe, item.topic, item.partition, item.key, item.args
                        ):
                            pipe.execute_command("XADD", item.key, "0-*", *item.args)
                    results = await pipe.execute(raise_on_error=False)
            except CONNECTION_ERRORS as exc:
                delay = backoff.next_delay()
                self.log.warning(
                    "Writing %d messages to Redis at %s failed (%s); retrying in "
                    "%.1f s (they may be written twice)",
                    len(batch),
                    transport.location.where,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            if backoff.attempt:
                self.log.info("Writing to Redis at %s again", transport.location.where)
            retry: list[_Pending] = []
            broken: set[tuple[str, int]] = set()
            for item, res in zip(batch, results, strict=True):
                fut = item.future
                if isinstance(res, redis.exceptions.ResponseError):
                    if _BROKEN_STREAM in str(res):
                        retry.append(item)
                        broken.add((item.topic, item.partition))
                    elif isinstance(res, redis.exceptions.NoScriptError):
                        retry.append(item)  # Redis restarted: load the script again
                        reload_scripts = True
                    elif str(res).startswith(FENCED_PREFIX) and group is not None:
                        # This worker lost the partition: the new owner writes it.
                        group.fenced_out()
                        if not fut.done():
                            fut.set_exception(ProducerSendError(f"changelog write refused: {res}"))
                    elif not fut.done():
                        fut.set_exception(
                            ProducerSendError(f"XADD to {item.key.decode()} failed: {res}")
                        )
                elif isinstance(res, Exception):
                    if not fut.done():
                        fut.set_exception(ProducerSendError(f"XADD failed: {res!r}"))
                elif not fut.done():
                    offset = int(res[2:]) - 1
                    fut.set_result(
                        RecordMetadata(
                            topic=item.topic,
                            partition=item.partition,
                            topic_partition=TP(item.topic, item.partition),
                            offset=offset,
                            timestamp=item.timestamp_ms,
                            timestamp_type=0,
                        )
                    )
            for topic, partition in broken:
                await transport.dead_letters.repair_stream(topic, partition)
            batch = retry

    # --- topics --------------------------------------------------------------

    async def create_topic(
        self,
        topic: str,
        partitions: int,
        replication: int,
        *,
        config: Mapping[str, Any] | None = None,
        timeout: Seconds = 20.0,
        retention: Seconds | None = None,
        compacting: bool | None = None,
        deleting: bool | None = None,
        ensure_created: bool = False,
    ) -> None:
        """Create the topic's metadata unless it exists."""
        await self.transport.create_topic(
            topic, partitions, retention=retention, compacting=compacting
        )

    def key_partition(self, topic: str, key: bytes) -> TP:
        """Partition of ``key`` (the topic's partition count must be known)."""
        n = self.transport.topics_or_none_partitions(topic)
        if n is None:
            raise ProducerSendError(f"topic {topic!r} is not known to this worker yet")
        return TP(topic, self.transport.choose_partition(topic, key, n))

    def supports_headers(self) -> bool:
        return True

    # Transactions need Kafka; the consumer refuses exactly_once at start.
    async def begin_transaction(self, transactional_id: str) -> None:
        raise NotImplementedError("the redis:// transport has no transactions")

    async def commit_transaction(self, transactional_id: str) -> None:
        raise NotImplementedError("the redis:// transport has no transactions")

    async def abort_transaction(self, transactional_id: str) -> None:
        raise NotImplementedError("the redis:// transport has no transactions")

    async def stop_transaction(self, transactional_id: str) -> None:
        raise NotImplementedError("the redis:// transport has no transactions")

    async def maybe_begin_transaction(self, transactional_id: str) -> None:
        raise NotImplementedError("the redis:// transport has no transactions")

    async def commit_transactions(
        self,
        tid_to_offset_map: Mapping[str, Mapping[TP, int]],
        group_id: str,
        start_new_transaction: bool = True,
    ) -> None:
        raise NotImplementedError("the redis:// transport has no transactions")
