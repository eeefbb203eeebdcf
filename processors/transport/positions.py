"""Read positions, offsets and commits of the redis:// consumer.

Responsible for: the read position of every assigned partition (the next
offset the fetcher reads), seeking (which bumps a per-partition *epoch* so a
fetch that was in flight during the seek cannot move the position back to
where that fetch ended), committing offsets (hash :func:`names.commits_key`,
field ``<topic>:<partition>``, value the next offset to read), and
answering Faust's offset questions (position, highwater, earliest), including
noticing a stream that went backwards (out of range).

Offsets: entry ``0-N`` is offset ``N-1`` (:func:`wire.offset_of`); reading
from offset ``o`` is ``XREAD ... 0-o`` (entries with an id greater than
``0-o``).

Commits retry while Redis is away; if one finally fails (only while
stopping) the offsets are committed by the next commit, or the events are
processed again after a restart (at-least-once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

from faust.transport.consumer import ensure_TP
from faust.types import TP
from mode import Service

from ...schemas import names
from .client import CONNECTION_ERRORS
from .delivery import DeliveryLoop
from .fencing import FencedError
from .retention import trim_stream

if TYPE_CHECKING:
    from . import Transport


#: ``generation_id`` given to messages retired by a seek: never a real
#: generation (those count up from 1), so Faust's streams skip them.
RETIRED_GENERATION = -1


class PositionsConsumer(DeliveryLoop):
    """Faust consumer base: positions, seeks, commits, offsets (abstract).

    The state is created by :class:`.consumer.Consumer`'s ``__init__``.
    """

    transport: Transport
    _positions: dict[TP, int]
    _epochs: dict[TP, int]
    _assigned: frozenset[TP]
    _highwaters: dict[TP, int]

    def _stopping(self) -> bool:
        return self.should_stop

    @property
    def _group_key(self) -> str:
        return names.commits_key(self.app.conf.id)

    # --- positions ------------------------------------------------------------

    def _set_position(self, tp: TP, offset: int) -> None:
        self._positions[tp] = max(0, offset)
        self._epochs[tp] = self._epochs.get(tp, 0) + 1

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

    async def position(self, tp: TP) -> int | None:
        """The next offset the fetcher reads from ``tp``."""
        return self._positions.get(tp)

    # --- commits --------------------------------------------------------------

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

    def _new_offset(self, tp: TP) -> int | None:
        """The offset to commit for ``tp`` (one past the first run of
        consecutive acked offsets), and that run dropped from the ack
        bookkeeping: Faust's, with a fast path for the usual case.

        Faust finds the run with ``itertools.groupby`` and a lambda per acked
        offset (every ``broker_commit_every`` messages it walks them all).
        When ``tp`` has no gaps and its acked offsets, sorted, are one run
        without duplicates (a single agent acks in order), the run is the
        whole list: the same result from its first and last element. Anything
        else (gaps, holes, duplicates) takes Faust's own code.
        """
        acked = self._acked.get(tp)
        if acked and not self._gap.get(tp):
            acked.sort()
            first, last = acked[0], acked[-1]
            if last - first == len(acked) - 1 and len(set(acked)) == len(acked):
                committed = self._committed_offset[tp]
                if committed and first - committed > 1:
                    return None  # as Faust: a gap before the first acked offset
                self._acked_index[tp].difference_update(acked)
                acked.clear()
                return last + 1
        return super()._new_offset(tp)

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        mapping = {
            f"{tp.topic}:{tp.partition}": offset
            for tp, offset in offsets.items()
            if tp in self._assigned
        }
        if not mapping:
            return False
        group: Any = getattr(self, "_group", None)
        try:
            if group is not None:
                # Fenced (group.py): refused unless this worker still owns them.
                await self.transport.retrying(
                    lambda: group.commit(self._group_key, mapping), "commit offsets", self._stopping
                )
            else:
                await self.transport.retrying(
                    lambda: self.transport.client.hset(self._group_key, mapping=cast(Any, mapping)),
                    "commit offsets",
                    self._stopping,
                )
        except FencedError as exc:
            self.log.warning("%s", exc)
            group.fenced_out()
            return False
        except CONNECTION_ERRORS as exc:
            # Only reached while stopping: the events after the last good
            # commit will be processed again after the restart.
            self.log.error(
                "Could not commit offsets %r (%s): they will be processed again", mapping, exc
            )
            return False
        return True

    # --- seeking ----------------------------------------------------------------

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Move every assigned partition that has a commit to its committed offset."""
        committed = await self._committed(self._assigned)
        for tp, offset in committed.items():
            self._set_position(tp, offset)
        return committed

    async def seek(self, partition: TP, offset: int) -> None:
        """Read ``partition`` from ``offset`` on, also while the worker runs.

        After the seek, the messages of ``partition`` handed to the agents are
        ``offset``, ``offset + 1``, ... in order with no gap (offsets that were
        dead-lettered excepted): a fetch in flight is dropped
        (:mod:`.fetching` compares epochs), the rest of the batch being
        delivered is dropped (``getmany``), and messages of ``partition``
        that were delivered to stream buffers but not yet taken by a stream
        are skipped by the streams (:meth:`_retire_delivered`). A message a
        stream already took is processed as usual.

        Commit bookkeeping: the committed offset never moves backwards.
        Seeking back re-delivers messages; those below the committed offset
        are processed again but do not move the commit; once the re-read
        passes it, commits go on as usual. Seeking forward counts the
        skipped offsets as processed, so commits do not stall at them.
        """
        tp = ensure_TP(partition)
        offset = max(0, offset)
        last = self._read_offset[tp]  # last offset delivered (None: none yet)
        self.log.dev("SEEK %r -> %r (last delivered %r)", tp, offset, last)
        # Offsets after ``last`` and before ``offset`` were never delivered
        # (the one whose delivery is blocked, if any, included): a gap.
        gap_from = last + 1 if last is not None else (self._committed_offset[tp] or 0)
        self._set_position(tp, offset)
        self._retire_delivered(tp, ack_below=min(offset, gap_from))
        self._read_offset[tp] = offset if offset else None
        if offset > 0 and self.app.topics.acks_enabled_for(tp.topic):
            await self._skip_offsets(tp, gap_from, offset - 1)

    async def _seek(self, partition: TP, offset: int) -> None:
        self._set_position(partition, offset)

    async def _skip_offsets(self, tp: TP, first: int, last: int) -> None:
        """Count offsets ``first..last`` that were never delivered as
        processed (Faust's gap bookkeeping), except those already acked."""
        if first > last:
            return
        acked = sorted(o for o in self._acked_index[tp] if first <= o <= last)
        for o in acked:
            if first < o:
                await self._add_gap(tp, first, o - 1)
            first = o + 1
        if first <= last:
            await self._add_gap(tp, first, last)

    def _retire_delivered(self, tp: TP, ack_below: int) -> None:
        """Make streams skip the messages of ``tp`` that were delivered to
        stream buffers but not yet taken (and the one whose delivery is
        waiting for room): Faust's streams skip a message whose
        ``generation_id`` is not the current one. Messages below
        ``ack_below`` are skipped by a seek forward: acked here, so they
        count as processed. The others are read again (or are in the seek's
        gap): marked acked without counting, so no later ack counts them."""
        retired: list[Any] = []
        conductor: Any = self.app.topics
        for channel in list(conductor._tp_index.get(tp, ())):
            for event in channel.queue._queue:
                message = getattr(event, "message", None)
                if message is not None and message.tp == tp:
                    retired.append(message)
        if self._delivering is not None and self._delivering.tp == tp:
            retired.append(self._delivering)
        for message in retired:
            message.generation_id = RETIRED_GENERATION
            if message.offset < ack_below:
                self.ack(message)  # skipped by the seek: processed
            message.acked = True  # nothing acks it again (not every stream path does)

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

    # --- highwater and earliest ---------------------------------------------------

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

    # --- retention ------------------------------------------------------------------

    #: Seconds between two retention passes over the partitions this worker owns.
    retention_interval: float = 10.0

    @Service.task
    async def _retention_trimmer(self) -> None:
        """Apply topic retention (:mod:`.retention`) to the owned partitions."""
        while not self.should_stop:
            await self.sleep(self.retention_interval)
            try:
                await self.trim_retention()
            except CONNECTION_ERRORS:
                continue  # the fetch loop reports it; the next pass trims

    async def trim_retention(self) -> int:
        """One retention pass: trim every owned partition of every topic whose
        metadata declares ``retention_ms`` or ``maxlen`` (compacting topics
        excepted). Returns the number of entries removed."""
        client = self.transport.client_or_none
        if client is None or self.app.client_only:
            return 0
        by_topic: dict[str, list[TP]] = {}
        for tp in self._assigned:
            by_topic.setdefault(tp.topic, []).append(tp)
        removed = 0
        for topic, tps in sorted(by_topic.items()):
            meta = await self.transport.topics.describe(topic)
            if meta is None or meta.compacting or not (meta.retention_ms or meta.maxlen):
                continue
            for tp in sorted(tps):
                n = await trim_stream(
                    client,
                    names.stream_key(tp.topic, tp.partition).encode(),
                    retention_ms=meta.retention_ms,
                    maxlen=meta.maxlen,
                )
                if n:
                    self.log.info("Retention: trimmed %d entries of %s", n, tp)
                removed += n
        return removed
