"""The redis:// transport for Faust: Kafka's role played by Redis Streams.

Registered through the ``faust.transports`` entry point (schemes ``redis``
and ``rediss``), so ``faust.App("x", broker="redis://127.0.0.1:6379/0")``
works for any Faust app.

This module holds the :class:`Transport`: what a consumer and a producer of
one app share (one Redis client, the topic registry, the dead-letter writer,
the partitioner). The parts:

* :mod:`.client` -- URL parsing, connecting with backoff, the version check;
* :mod:`.topics` -- topic metadata, highwater and earliest offsets;
* :mod:`.consumer` -- the consumer: subscription, rebalances; built on
  :mod:`.positions` (positions, seeks, commits, offsets), :mod:`.fetching`
  (``XREAD``, parsing) and :mod:`.delivery` (the delivery loop);
* :mod:`.producer` -- batched writes, partitioning;
* :mod:`.membership` -- which partitions this worker owns;
* :mod:`.deadletter` -- entries the transport did not write.

Delivery is at-least-once: see the producer and consumer docstrings for
what can be written or processed twice.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

import redis
import redis.asyncio as aioredis
from faust.transport import base
from faust.types import AppT
from faust.types.transports import ConductorT, ConsumerT, ProducerT
from mode.utils.times import Seconds, want_seconds
from redis.utils import HIREDIS_AVAILABLE
from yarl import URL

from ...schemas.partition import partition_for
from .client import (
    Backoff,
    RedisLocation,
    RedisVersionError,
    check_redis_version,
    connect,
    create_client,
    parse_url,
    retrying,
)
from .conductor import Conductor
from .consumer import Consumer
from .deadletter import DeadLetters
from .group import GroupMember
from .membership import Membership
from .producer import Producer
from .topics import TopicRegistry

__all__ = [
    "Conductor",
    "Consumer",
    "Membership",
    "Producer",
    "RedisLocation",
    "RedisVersionError",
    "Transport",
    "check_redis_version",
    "parse_url",
]

T = TypeVar("T")
logger = logging.getLogger(__name__)


def _raw(response: Any, **options: Any) -> Any:
    return response


class Transport(base.Transport):
    """Faust transport on Redis Streams."""

    Consumer: ClassVar[type[ConsumerT]] = Consumer
    Producer: ClassVar[type[ProducerT]] = Producer
    Conductor: ClassVar[type[ConductorT]] = Conductor

    default_port = 6379
    driver_version = f"redis-py={redis.__version__}"

    def __init__(
        self, url: list[URL], app: AppT, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        super().__init__(url, app, loop=loop)
        if len(url) > 1:
            logger.warning(
                "redis:// transport uses one Redis; ignoring all but %s", parse_url(url[0]).where
            )
        self.location: RedisLocation = parse_url(url[0])
        self._client: aioredis.Redis | None = None
        self._topics: TopicRegistry | None = None
        self._dead_letters: DeadLetters | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._round_robin: dict[str, itertools.count[int]] = {}
        #: The consumer's group membership (set by the consumer of a worker
        #: app); the producer fences changelog writes through it.
        self.group: GroupMember | None = None

    # --- the shared client ---------------------------------------------------

    async def connect(
        self, log: logging.Logger | Any, should_stop: Callable[[], bool]
    ) -> aioredis.Redis:
        """The client, connected and version-checked (waits for Redis)."""
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._client is None:
                client = create_client(self.location, ssl_context=self.app.conf.ssl_context)
                # The consumer parses XREAD replies itself (fewer Python
                # objects per entry than redis-py's dict-per-entry callback).
                client.set_response_callback("XREAD", _raw)
                log.info("Connecting to Redis at %s", self.location.where)
                await connect(client, self.location, logger, should_stop)
                if not HIREDIS_AVAILABLE:
                    logger.warning(
                        "hiredis is not installed: the redis:// transport reads ~10x slower "
                        "with redis-py's pure-Python parser (pip install hiredis)"
                    )
                self._dead_letters = DeadLetters(client)
                self._topics = TopicRegistry(client, self._dead_letters)
                self._client = client
        return self._client

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("redis:// transport used before it connected")
        return self._client

    @property
    def client_or_none(self) -> aioredis.Redis | None:
        return self._client

    @property
    def topics(self) -> TopicRegistry:
        if self._topics is None:
            raise RuntimeError("redis:// transport used before it connected")
        return self._topics

    @property
    def dead_letters(self) -> DeadLetters:
        if self._dead_letters is None:
            raise RuntimeError("redis:// transport used before it connected")
        return self._dead_letters

    async def retrying(
        self, op: Callable[[], Awaitable[T]], what: str, should_stop: Callable[[], bool]
    ) -> T:
        """Run a repeatable Redis operation, retrying while Redis is away."""
        return await retrying(
            op,
            what=what,
            location=self.location,
            log=logger,
            should_stop=should_stop,
            backoff=Backoff(),
        )

    # --- topics ----------------------------------------------------------------

    def topics_or_none_partitions(self, topic: str) -> int | None:
        """Partition count of ``topic`` if known here (no Redis call)."""
        return self._topics.cached_partitions(topic) if self._topics is not None else None

    def declared_partitions(self, topic: str) -> int:
        """Partitions the app declares for ``topic`` (``app.topic(..., partitions=)``),
        else the ``topic_partitions`` setting: used to create a topic on first use."""
        conductor: Any = self.app.topics
        for channel in list(getattr(conductor, "_topics", ())):
            if topic in getattr(channel, "topics", ()) and getattr(channel, "partitions", None):
                return int(channel.partitions)
        return int(self.app.conf.topic_partitions)

    async def ensure_topic(self, topic: str) -> int:
        """Partition count of ``topic``, creating it if it does not exist."""
        return await self.topics.ensure(topic, self.declared_partitions(topic))

    async def create_topic(
        self,
        topic: str,
        partitions: int,
        *,
        retention: Seconds | None = None,
        compacting: bool | None = None,
    ) -> int:
        """Create ``topic`` unless it exists (Faust's ``Topic.declare``); waits
        (retrying) while Redis is away, so an agent declaring a topic then
        does not crash."""
        if not self.app.conf.topic_allow_declare:
            logger.warning("Topic creation disabled! Can't create topic %s", topic)
            return await self.ensure_topic(topic)
        retention_ms = int(want_seconds(retention) * 1000) if retention else None

        async def create() -> int:
            return await self.topics.create(
                topic, partitions, retention_ms=retention_ms, compacting=compacting
            )

        return await self.retrying(create, f"declare topic {topic}", lambda: self.app.should_stop)

    # --- partitioning ------------------------------------------------------------

    def choose_partition(self, topic: str, key: bytes | None, partitions: int) -> int:
        """Partition of a message without an explicit one.

        A user-set ``producer_partitioner`` wins; else keyed messages use
        Kafka's murmur2 rule (Faust's default with Kafka, so keys land on the
        same partitions as they would there); unkeyed messages go round-robin.
        """
        conf: Any = self.app.conf  # a Param descriptor that mypy cannot read through
        custom = conf.producer_partitioner
        if custom is not None:
            all_partitions = list(range(partitions))
            return int(custom(key, all_partitions, all_partitions))
        if key is not None:
            return partition_for(key, partitions)
        counter = self._round_robin.get(topic)
        if counter is None:
            # Start somewhere random so that many short-lived producers do
            # not all fill partition 0 first.
            counter = self._round_robin[topic] = itertools.count(random.randrange(partitions))
        return next(counter) % partitions
