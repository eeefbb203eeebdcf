"""The Faust consumer of the redis:// transport.

Responsible for: the subscription and rebalances (through
:class:`.membership.Membership`), the read position of every assigned
partition, fetching with one ``XREAD COUNT n BLOCK ms STREAMS k... id...``
over the active partitions (no Redis consumer groups: Faust assigns
partitions itself), turning entries into Faust messages, committing offsets
(hash :func:`names.commits_key`, field ``<topic>:<partition>``, value the next
offset to read) and answering Faust's offset questions (position,
highwater, earliest, seek).

Offsets: entry ``0-N`` is offset ``N-1`` (:func:`wire.offset_of`); reading
from offset ``o`` is ``XREAD ... 0-o`` (entries with an id greater than
``0-o``). Entries that are not in the wire format are dead-lettered
(:mod:`.deadletter`) and their offsets acknowledged so commits move on.

Redis going away: a fetch that fails with a connection error is logged, the
fetch loop backs off and retries from the same positions (nothing was
consumed, so nothing is lost). Commits retry; if one finally fails the
offsets are committed by the next commit, or the events are processed again
after a restart (at-least-once).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, cast

import orjson
from faust.exceptions import ImproperlyConfigured
from faust.types import TP, ConsumerMessage
from faust.types.transports import ConsumerCallback, PartitionsAssignedCallback
from faust.types.transports import PartitionsRevokedCallback as _Revoked
from mode import Service
from mode.utils.times import Seconds

from ...schemas import names
from ...schemas.wire import HEADERS, KEY, TIMESTAMP, TOMBSTONE, VALUE
from .client import CONNECTION_ERRORS, Backoff
from .delivery import DeliveryLoop
from .membership import Assignment, Membership

if TYPE_CHECKING:
    from . import Transport

#: Entries per XREAD (over all partitions) when ``broker_max_poll_records`` is
#: not set. Measured (8 partitions, one agent): 1000 was as fast as anything
#: smaller and ~15% faster than 4000-8000, because bigger fetches overflow the
#: agent's buffer (``stream_buffer_maxsize``) and deliveries start to wait.
DEFAULT_FETCH_TOTAL = 1000

#: Longest wait for new entries on the unpaused partitions while others are
#: paused (their agent buffers are full): the latency cost of not blocking.
PAUSED_POLL = 0.05

#: XREAD COUNT is per stream; never ask for fewer than this per stream.
MIN_FETCH_PER_STREAM = 100

#: A parsed entry: (offset, key, value, timestamp seconds, headers).
Record = tuple[int, bytes | None, bytes | None, float, list[tuple[str, bytes]] | None]


class Consumer(DeliveryLoop):
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
        self._positions: dict[TP, int] = {}
        # Bumped on every seek, so that a fetch that was in flight during a
        # seek does not move the position back to where the fetch ended.
        self._epochs: dict[TP, int] = {}
        self._assigned: frozenset[TP] = frozenset()
        self._highwaters: dict[TP, int] = {}
        self._subscribed: set[str] = set()
        self._rebalance_wanted = asyncio.Event()
        self._stream_keys: dict[TP, bytes] = {}
        self._tp_of_key: dict[bytes, TP] = {}
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

    def _stopping(self) -> bool:
        return self.should_stop

    @property
    def _group_key(self) -> str:
        return names.commits_key(self.app.conf.id)

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

    async def _init_positions(self, tps: set[TP], latest: bool = False) -> None:
        """Committed offset, else the ``consumer_auto_offset_reset`` position."""
        if not tps:
            return
        committed = {} if latest else await self._committed(tps)
        rest = tps - set(committed)
        offsets = await self.transport.retrying(
            lambda: self.transport.topics.stream_offsets(rest), "read offsets", self._stopping
        )
        reset = "latest" if latest else self.app.conf.consumer_auto_offset_reset
        for tp in tps:
            if tp in committed:
                self._set_position(tp, committed[tp])
            else:
                earliest, highwater = offsets[tp]
                self._set_position(tp, highwater if reset == "latest" else earliest)
            if tp in offsets:
                self._highwaters[tp] = offsets[tp][1]

    def assignment(self) -> set[TP]:
        """The partitions assigned to this worker."""
        return set(self._assigned)

    # --- positions, offsets, commits ---------------------------------------------

    def _set_position(self, tp: TP, offset: int) -> None:
        self._positions[tp] = max(0, offset)
        self._epochs[tp] = self._epochs.get(tp, 0) + 1

    async def _committed(self, tps: Iterable[TP]) -> dict[TP, int]:
        tps = list(tps)
        if not tps:
            return {}
        fields = [f"{tp.topic}:{tp.partition}" for tp in tps]
        raw = await self.transport.retrying(
            lambda: self.transport.client.hmget(self._group_key, fields),
            "read commits",
            self._stopping,
        )
        return {tp: int(v) for tp, v in zip(tps, raw, strict=True) if v is not None}

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Move every assigned partition that has a commit to its committed offset."""
        committed = await self._committed(self._assigned)
        for tp, offset in committed.items():
            self._set_position(tp, offset)
        return committed

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        mapping = {
            f"{tp.topic}:{tp.partition}": offset
            for tp, offset in offsets.items()
            if tp in self._assigned
        }
        if not mapping:
            return False
        try:
            await self.transport.retrying(
                lambda: self.transport.client.hset(self._group_key, mapping=cast(Any, mapping)),
                "commit offsets",
                self._stopping,
            )
        except CONNECTION_ERRORS as exc:
            # Only reached while stopping: the events after the last good
            # commit will be processed again after the restart.
            self.log.error(
                "Could not commit offsets %r (%s): they will be processed again", mapping, exc
            )
            return False
        return True

    async def position(self, tp: TP) -> int | None:
        """The next offset the fetcher reads from ``tp``."""
        return self._positions.get(tp)

    async def _seek(self, partition: TP, offset: int) -> None:
        self._set_position(partition, offset)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        """Seek partitions (what aiokafka's driver does, without the wait:
        the next fetch reads from the new positions)."""
        for tp, offset in partitions.items():
            self._set_position(tp, offset)
            if offset > 0:
                self._read_offset[tp] = offset
            else:
                self._read_offset.pop(tp, None)

    async def seek_to_beginning(self, *partitions: TP) -> None:
        """Seek to the earliest offset still stored."""
        for tp, offset in (await self.earliest_offsets(*partitions)).items():
            self._set_position(tp, offset)

    def highwater(self, tp: TP) -> int:
        """Last known next-offset-to-be-written of ``tp`` (no Redis call:
        Faust asks for every message; refreshed by fetches and a timer)."""
        return self._highwaters.get(tp, 0)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        """Next offset to be written, from ``XINFO STREAM`` (fresh)."""
        result = await self.transport.retrying(
            lambda: self.transport.topics.highwaters(partitions), "read highwaters", self._stopping
        )
        self._highwaters.update(result)
        return result

    async def earliest_offsets(self, *partitions: TP) -> Mapping[TP, int]:
        """First offset still stored (the highwater when trimmed to nothing)."""
        return cast(
            Mapping[TP, int],
            await self.transport.retrying(
                lambda: self.transport.topics.earliest(partitions),
                "read earliest offsets",
                self._stopping,
            ),
        )

    @Service.task
    async def _highwater_refresher(self) -> None:
        """Keep highwaters fresh for lag monitoring, and notice a partition
        whose stream went backwards (Redis restarted without its data, or the
        stream was deleted): then the position is out of range and, as Kafka
        does, ``consumer_auto_offset_reset`` decides where to go."""
        while not self.should_stop:
            await self.sleep(1.0)
            tps = list(self._assigned)
            if not tps or self.transport.client_or_none is None:
                continue
            epochs = {tp: self._epochs.get(tp) for tp in tps}
            # Positions taken *before* asking Redis: highwaters only grow, so a
            # position read earlier that exceeds a highwater read later is truly
            # out of range. Positions read after the reply may have advanced
            # legitimately while the (non-atomic) XINFO pipeline ran.
            before = {tp: self._positions.get(tp) for tp in tps}
            try:
                offsets = await self.transport.topics.stream_offsets(tps)
            except CONNECTION_ERRORS:
                continue  # the fetch loop reports it
            self._check_out_of_range(offsets, epochs, before)

    def _check_out_of_range(
        self,
        offsets: Mapping[TP, tuple[int, int]],
        epochs: Mapping[TP, int | None],
        before: Mapping[TP, int | None],
    ) -> None:
        """Record highwaters; reset positions that were past the end of their
        stream before the highwaters were read and have not moved since (and
        only if nobody sought the partition since ``epochs``)."""
        for tp, (earliest, highwater) in offsets.items():
            self._highwaters[tp] = highwater
            pos = before.get(tp)
            if (
                pos is None
                or pos <= highwater
                or self._positions.get(tp) != pos
                or self._epochs.get(tp) != epochs.get(tp)
            ):
                continue
            latest = self.app.conf.consumer_auto_offset_reset == "latest"
            target = highwater if latest else earliest
            self.log.error(
                "Position %d of %s is beyond the end of its stream (%d): the "
                "stream lost entries (Redis restarted without persistence?); "
                "resetting to %d",
                pos,
                tp,
                highwater,
                target,
            )
            self._set_position(tp, target)

    # --- fetching --------------------------------------------------------------

    def _key_of(self, tp: TP) -> bytes:
        key = self._stream_keys.get(tp)
        if key is None:
            key = self._stream_keys[tp] = names.stream_key(tp.topic, tp.partition).encode()
            self._tp_of_key[key] = tp
        return key

    async def _getmany(
        self, active_partitions: set[TP] | None, timeout: float
    ) -> Mapping[TP, list[Any]]:
        positions = self._positions
        source = self._assigned if active_partitions is None else active_partitions
        tps = [tp for tp in source if tp in positions]
        if not tps:
            await self.sleep(timeout)
            return {}
        epochs = self._epochs
        started = {tp: epochs[tp] for tp in tps}
        keys = [self._key_of(tp) for tp in tps]
        ids = [b"0-%d" % positions[tp] for tp in tps]
        client = self.transport.client
        count = max(MIN_FETCH_PER_STREAM, self._fetch_total // len(keys))
        # While some partitions are paused because an agent's buffer is full,
        # a blocking read of the others (often idle, e.g. the leader topic)
        # would keep the paused ones waiting for the whole block time after
        # the buffer drained: read without blocking and wait for a drain.
        paused = bool(self._buffered_partitions)
        block = () if paused else ("BLOCK", max(1, int(timeout * 1000)))
        try:
            reply = await client.execute_command(
                "XREAD", "COUNT", count, *block, "STREAMS", *keys, *ids
            )
        except CONNECTION_ERRORS as exc:
            delay = self._fetch_backoff.next_delay()
            self.log.warning(
                "Fetch from Redis at %s failed (%s); retrying in %.1f s from the same positions",
                self.transport.location.where,
                exc,
                delay,
            )
            await self.sleep(delay)
            return {}
        if self._fetch_backoff.attempt:
            self.log.info("Fetching from Redis at %s again", self.transport.location.where)
            self._fetch_backoff.reset()
        if not reply:
            if paused:
                self._buffer_dropped.clear()
                await self.wait_for_stopped_or(self._buffer_dropped, min(timeout, PAUSED_POLL))
            return {}
        records: dict[TP, list[Any]] = {}
        now = time.time()
        # RESP3 (redis-py's default) gives a map; RESP2 a list of pairs.
        streams = reply.items() if isinstance(reply, dict) else reply
        for stream, entries in streams:
            tp = self._tp_of_key[stream]
            if epochs.get(tp) != started[tp]:
                continue  # sought while we were reading: drop, re-read from the new position
            try:
                out = await self._parse(tp, stream, entries, now)
            except CONNECTION_ERRORS as exc:
                # Redis went away while dead-lettering. This stream's position
                # did not move (it is re-read later); the streams parsed so far
                # did move, so their records must be delivered, not dropped.
                self.log.warning("Dead-lettering in %s failed (%s); will re-read it", tp, exc)
                break
            if epochs.get(tp) != started[tp]:
                continue
            if out:
                records[tp] = out
        return records

    async def _parse(self, tp: TP, stream: bytes, entries: list[Any], now: float) -> list[Any]:
        """Entries -> records; dead-letters bad ones; advances the position."""
        out: list[Record] = []
        last = -1
        for entry_id, fields in entries:
            if entry_id[:2] != b"0-":
                # Foreign id: it and everything after it are foreign (see
                # deadletter.py). Move them away; the next fetch goes on.
                await self.transport.dead_letters.repair_stream(tp.topic, tp.partition)
                break
            offset = int(entry_id[2:]) - 1
            last = offset
            d = dict(zip(fields[::2], fields[1::2], strict=True))
            value = d.get(VALUE)
            try:
                if value is None:
                    raise ValueError("entry has no 'v' (value) field")
                ts_raw = d.get(TIMESTAMP)
                ts = int(ts_raw) / 1000.0 if ts_raw is not None else now
                h_raw = d.get(HEADERS)
                headers = (
                    [(str(k), str(v).encode()) for k, v in orjson.loads(h_raw).items()]
                    if h_raw is not None
                    else None
                )
            except (ValueError, AttributeError, TypeError) as exc:
                await self.transport.dead_letters.dead_letter(
                    tp.topic, stream, entry_id, fields, str(exc)
                )
                self._ack_skipped(tp, offset)
                continue
            if TOMBSTONE in d:
                value = None
            out.append((offset, d.get(KEY), value, ts, headers))
        if last >= 0:
            self._positions[tp] = last + 1
            if last + 1 > self._highwaters.get(tp, 0):
                self._highwaters[tp] = last + 1
        return out

    def _ack_skipped(self, tp: TP, offset: int) -> None:
        """Count a dead-lettered offset as processed, so commits move past it
        (what ``Consumer.ack`` does for a message)."""
        if not self.app.topics.acks_enabled_for(tp.topic):
            return
        committed = self._committed_offset[tp]
        if committed is not None and offset < committed:
            return
        index = self._acked_index[tp]
        if offset not in index:
            index.add(offset)
            self._acked[tp].append(offset)

    def _to_message(self, tp: TP, record: Any) -> ConsumerMessage:
        offset, key, value, ts, headers = record
        return ConsumerMessage(
            tp.topic,
            tp.partition,
            offset,
            ts,
            0,
            headers,
            key,
            value,
            None,
            len(key) if key is not None else 0,
            len(value) if value is not None else 0,
            tp,
            generation_id=self.app.consumer_generation_id,
        )

    def _new_topicpartition(self, topic: str, partition: int) -> TP:
        return TP(topic, partition)

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
