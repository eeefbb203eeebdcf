"""The Faust consumer of the redis:// transport.

Responsible for: the consumer's state and lifecycle, the subscription and
rebalances (through :class:`.membership.Membership`), and the topic and
partitioning questions Faust asks a consumer. The rest is in its bases:

* :mod:`.positions` -- read positions, seeks, commits, highwater/earliest;
* :mod:`.fetching` -- ``XREAD`` over the active partitions, parsing,
  dead-lettering bad entries;
* :mod:`.delivery` -- Faust's fetch-and-deliver loop, made fast.

Delivery is at-least-once; see those modules for the details.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from faust.exceptions import ImproperlyConfigured
from faust.types import TP
from faust.types.transports import ConsumerCallback, PartitionsAssignedCallback
from faust.types.transports import PartitionsRevokedCallback as _Revoked
from mode import Service
from mode.utils.times import Seconds

from .client import Backoff
from .fetching import DEFAULT_FETCH_TOTAL, FetchingConsumer
from .membership import Assignment, Membership

if TYPE_CHECKING:
    from . import Transport


class Consumer(FetchingConsumer):
    """Faust consumer reading Redis Streams."""

    consumer_stopped_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    transport: Transport

    def __init__(
        self,
        transport: Any,
        callback: ConsumerCallback,
        on_partitions_revoked: _Revoked,
        on_partitions_assigned: PartitionsAssignedCallback,
        **kwargs: Any,
    ) -> None:
        app = transport.app
        if app.in_transaction:
            raise ImproperlyConfigured(
                "processing_guarantee='exactly_once' needs Kafka transactions; the redis:// "
                "transport is at-least-once only"
            )
        self._positions = {}
        # Bumped on every seek, so that a fetch that was in flight during a
        # seek does not move the position back to where the fetch ended.
        self._epochs = {}
        self._assigned = frozenset()
        self._highwaters = {}
        self._subscribed: set[str] = set()
        self._rebalance_wanted = asyncio.Event()
        self._stream_keys = {}
        self._tp_of_key = {}
        self._membership = Membership(app)
        self._fetch_total = app.conf.broker_max_poll_records or DEFAULT_FETCH_TOTAL
        self._buffer_dropped = asyncio.Event()
        self._fetch_backoff = Backoff()
        super().__init__(
            transport, callback, on_partitions_revoked, on_partitions_assigned, **kwargs
        )

    # --- lifecycle ----------------------------------------------------------

    async def on_start(self) -> None:
        await self.transport.connect(self.log, lambda: self.should_stop)

    # --- subscription and rebalance -------------------------------------------

    async def subscribe(self, topics: Iterable[str]) -> None:
        """Subscribe to ``topics``; the rebalance runs in the background, as
        with Kafka (Faust waits for ``subscribe`` to return before it lets
        the assignment callbacks finish)."""
        self._subscribed = set(topics)
        self._rebalance_wanted.set()

    @Service.task
    async def _rebalancer(self) -> None:
        while not self.should_stop:
            await self.wait(self._rebalance_wanted)  # type: ignore[arg-type]
            if self.should_stop:
                break
            self._rebalance_wanted.clear()
            await self._rebalance()

    async def _rebalance(self) -> None:
        transport = self.transport
        topics: dict[str, int] = {}
        for topic in sorted(self._subscribed):
            topics[topic] = await transport.retrying(
                functools.partial(transport.ensure_topic, topic), "declare topic", self._stopping
            )
        assignment: Assignment = self._membership.assign(topics)
        self.log.info(
            "Assignment generation %d: %d partitions of %d topics%s",
            assignment.generation,
            len(assignment.partitions),
            len(topics),
            " (leader)" if assignment.leader else "",
        )
        if self.app.client_only:
            self._assigned = assignment.partitions
            await self._init_positions(set(assignment.partitions), latest=True)
            return
        # Kafka's eager protocol: every partition is revoked, then the new
        # assignment is handed out. Faust relies on that order.
        self.app.on_rebalance_start()
        await self.on_partitions_revoked(set(self._assigned))
        new = set(assignment.partitions)
        for tp in set(self._positions) - new:
            self._positions.pop(tp, None)
            self._highwaters.pop(tp, None)
        self._assigned = assignment.partitions
        await self._init_positions(new - set(self._positions))
        self.app.consumer_generation_id = assignment.generation
        await self.on_partitions_assigned(new, generation_id=assignment.generation)

    def assignment(self) -> set[TP]:
        """The partitions assigned to this worker."""
        return set(self._assigned)

    # --- topics and keys -----------------------------------------------------------

    def topic_partitions(self, topic: str) -> int | None:
        """Partition count of ``topic`` if this process knows it."""
        return self.transport.topics_or_none_partitions(topic)

    def key_partition(
        self, topic: str, key: bytes | None, partition: int | None = None
    ) -> int | None:
        """Partition for ``key`` (None if the topic is not known yet)."""
        n = self.transport.topics_or_none_partitions(topic)
        if n is None:
            return None
        if partition is not None:
            return partition
        return self.transport.choose_partition(topic, key, n)

    async def create_topic(
        self,
        topic: str,
        partitions: int,
        replication: int,
        *,
        config: Mapping[str, Any] | None = None,
        timeout: Seconds = 30.0,
        retention: Seconds | None = None,
        compacting: bool | None = None,
        deleting: bool | None = None,
        ensure_created: bool = False,
    ) -> None:
        """Create the topic's metadata unless it exists."""
        await self.transport.create_topic(
            topic, partitions, retention=retention, compacting=compacting
        )

    def verify_event_path(self, now: float, tp: TP) -> None:
        return None

    def close(self) -> None:
        return None
