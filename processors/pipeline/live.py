"""The live runtimes: the pure machines driven by Faust agents and timers.

:class:`AggregateRuntime` (per worker) owns a :class:`PartitionWindows` for
each assigned access partition; :class:`MergeRuntime` owns the
:class:`WindowMerger` while this worker holds the single partition of
``tierstream.window-partials``. Neither imports the Faust app: it is handed
the topics and tables (see :mod:`.app`).

Order of effects, which is what makes a crash lose nothing:

1. partials (or summaries) are sent and acknowledged by Redis;
2. only then the machine's state is written to its table (changelog);
3. the consumed message is acknowledged after that, and Faust flushes the
   producer (so the table write) before it commits an offset.

Recovery of an access partition: the first time a worker handles a partition
(start, restart, reassignment) its machine is restored from the marks table
and the entries from the mark up to the delivered offset are read straight
from the partition's stream (``XRANGE``) and fed first. The same happens for
any hole in the delivered offsets (entries the transport dead-lettered are
skipped). Reading the gap directly instead of ``consumer.seek(mark)`` avoids a
race: messages of a batch fetched before the seek are still delivered and move
the consumer's read offset past the mark, so the re-read would be filtered out.
Offsets below the next expected one are redeliveries and are ignored.

Invalid events go to the access topic's dead-letter stream (same format as
the transport's: ``reason``, ``stream``, ``id``, then ``index`` and ``v``, the
offending event or value) and are counted; dead letters are at-least-once (an
entry re-read after a crash is dead-lettered again).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from faust.types import TP, AppT, TableT, TopicT
from redis.exceptions import RedisError

from ...schemas import names
from ...schemas.wire import TIMESTAMP, VALUE
from .config import PipelineConfig
from .decode import BadEvent, feed_entry
from .merger import WindowMerger
from .partition import Partial, PartitionWindows

logger = logging.getLogger(__name__)

#: Entries per XRANGE while re-reading a gap.
REFILL_CHUNK = 500
#: Summaries kept in memory for the web views.
KEEP_SUMMARIES = 64


def table_put(table: TableT, partition: int, key: str, value: Any) -> None:
    """Set ``key`` in ``table`` and write it to changelog partition ``partition``
    (works outside stream iteration, e.g. in a timer). ``None`` deletes."""
    if value is None:
        table.data.pop(key, None)
        table.send_changelog(partition, key, None, value_serializer="raw")
    else:
        table.data[key] = value
        table.send_changelog(partition, key, value)


def entry_time(fields: dict[bytes, bytes]) -> float:
    """Producer timestamp of a stream entry (its ``t``, ms), else the time now."""
    raw = fields.get(TIMESTAMP)
    return int(raw) / 1000.0 if raw is not None and raw.isdigit() else time.time()


def ready(app: AppT) -> bool:
    tables: Any = app.tables
    return bool(not app.rebalancing and tables.recovery.completed.is_set())


class AggregateRuntime:
    """Per-partition windows of the access partitions this worker owns."""

    def __init__(
        self,
        app: AppT,
        cfg: PipelineConfig,
        marks: TableT,
        partials: TopicT,
        redis_url: str,
        topic: str = names.ACCESS_TOPIC,
    ) -> None:
        self.app = app
        self.cfg = cfg
        self.marks = marks
        self.partials = partials
        self.redis_url = redis_url
        self.topic = topic
        self.parts: dict[int, PartitionWindows] = {}
        #: partitions handled since they were (re)assigned
        self.started: set[int] = set()
        self.locks: dict[int, asyncio.Lock] = {}
        self.stats: Counter[str] = Counter()
        self._client: aioredis.Redis | None = None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.redis_url)
        return self._client

    def _lock(self, p: int) -> asyncio.Lock:
        lock = self.locks.get(p)
        if lock is None:
            lock = self.locks[p] = asyncio.Lock()
        return lock

    def _machine(self, p: int) -> PartitionWindows:
        pw = self.parts.get(p)
        if pw is None:
            pw = self.parts[p] = PartitionWindows.restore(p, self.cfg, self.marks.data.get(str(p)))
        return pw

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions revoked: their windows are rebuilt from the marks when they return."""
        for tp in tps:
            if tp.topic == self.topic:
                self.parts.pop(tp.partition, None)
                self.started.discard(tp.partition)

    # --- the agent ---------------------------------------------------------------

    async def on_entry(
        self, p: int, offset: int, value: bytes | None, produced_at: float | None = None
    ) -> None:
        """One access-topic entry; ``produced_at``: its producer timestamp (the
        entry's ``t``; the read time when absent), for the far-future check."""
        async with self._lock(p):
            pw = self._machine(p)
            self.started.add(p)
            out: list[Partial] = []
            if pw.next_offset is not None and offset > pw.next_offset:
                out += await self._refill(pw, pw.next_offset, offset)
            if pw.next_offset is not None and offset < pw.next_offset:
                self.stats["duplicates"] += 1
                return
            out += await self._feed(
                pw, offset, value, time.time() if produced_at is None else produced_at
            )
            await self._publish(pw, out)

    async def _feed(
        self, pw: PartitionWindows, offset: int, value: bytes | None, produced_at: float
    ) -> list[Partial]:
        out, bad, n = feed_entry(pw, offset, value, produced_at, self.cfg.max_ahead_s)
        self.stats["entries"] += 1
        self.stats["events"] += n
        if bad:
            await self._dead_letter(pw.partition, offset, bad)
        return out

    async def _refill(self, pw: PartitionWindows, start: int, end: int) -> list[Partial]:
        """Feed entries ``start .. end-1`` read straight from the stream."""
        key = names.stream_key(self.topic, pw.partition)
        out: list[Partial] = []
        lo = start
        logger.info(
            "partition %d: re-reading offsets %d..%d from %s", pw.partition, start, end, key
        )
        while lo < end:
            entries: Any = await self.client.xrange(
                key, min=f"0-{lo + 1}", max=f"0-{end}", count=REFILL_CHUNK
            )
            if not entries:
                break
            for entry_id, fields in entries:
                off = int(entry_id.split(b"-")[1]) - 1
                lo = off + 1
                self.stats["refilled"] += 1
                if VALUE not in fields:
                    continue  # the transport dead-letters it
                out += await self._feed(pw, off, fields[VALUE], entry_time(fields))
        if pw.next_offset is not None and pw.next_offset < end:
            logger.error(
                "partition %d: offsets %d..%d are no longer in %s (trimmed?): not aggregated",
                pw.partition,
                pw.next_offset,
                end,
                key,
            )
            self.stats["missing"] += end - pw.next_offset
        return out

    async def _dead_letter(self, p: int, offset: int, bad: list[BadEvent]) -> None:
        stream = names.stream_key(self.topic, p)
        entry_id = f"0-{offset + 1}"
        self.stats["dead_letters"] += len(bad)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for b in bad:
                    fields: dict[Any, Any] = {"reason": b.reason, "stream": stream, "id": entry_id}
                    fields["index"] = "" if b.index is None else str(b.index)
                    fields["v"] = b.raw
                    pipe.xadd(names.dead_letter_key(self.topic), fields)
                pipe.incrby(names.dead_letter_count_key(self.topic), len(bad))
                await pipe.execute()
        except RedisError as exc:
            self.stats["dead_letter_errors"] += len(bad)
            logger.error(
                "could not dead-letter %d events of %s %s: %s", len(bad), stream, entry_id, exc
            )
        for b in bad[:3]:
            logger.warning("dead letter %s %s[%s]: %s", stream, entry_id, b.index, b.reason)

    async def _publish(self, pw: PartitionWindows, out: list[Partial]) -> None:
        if out:
            futures = [await self.partials.send(value=part.to_message()) for part in out]
            for fut in futures:
                await fut
            self.stats["partials"] += len(out)
        if pw.changed:
            table_put(self.marks, pw.partition, str(pw.partition), pw.state())

    # --- the timer -----------------------------------------------------------------

    async def tick(self, now: float | None = None) -> None:
        """Close windows by wall clock on the partitions that are caught up."""
        if not ready(self.app):
            return
        consumer = self.app.consumer
        tps = sorted(tp for tp in consumer.assignment() if tp.topic == self.topic)
        if not tps:
            return
        # Fresh highwaters (one XINFO pipeline): the consumer's cached ones start at 0
        # for partitions that had a commit, which would look caught up.
        highwaters = await consumer.highwaters(*tps)
        now = time.time() if now is None else now
        for tp in tps:
            async with self._lock(tp.partition):
                pw = self._machine(tp.partition)
                out: list[Partial] = []
                if tp.partition not in self.started and pw.next_offset is not None:
                    # Restored but no message delivered yet (everything up to the
                    # commit was consumed before a restart): re-read from the mark
                    # up to the fetch position; later offsets will be delivered.
                    pos = await consumer.position(tp)
                    if pos is not None and pos > pw.next_offset:
                        out += await self._refill(pw, pw.next_offset, pos)
                    self.started.add(tp.partition)
                hw = highwaters.get(tp, 0)
                nxt = pw.next_offset
                caught_up = (nxt is not None and nxt >= hw) or (nxt is None and hw == 0)
                out += pw.close_by_clock(now, caught_up, position=hw)
                await self._publish(pw, out)

    def view(self) -> dict[str, Any]:
        return {
            "stats": dict(self.stats),
            "partitions": {
                str(p): {
                    "next_offset": pw.next_offset,
                    "closed_through": pw.closed_through,
                    "mark": pw.mark,
                    "open_windows": sorted(pw.windows),
                }
                for p, pw in sorted(self.parts.items())
            },
        }


class MergeRuntime:
    """The merge step, on the worker that holds the partials topic's partition."""

    def __init__(
        self,
        app: AppT,
        cfg: PipelineConfig,
        table: TableT,
        summaries: TopicT,
        topic: str = names.WINDOW_PARTIALS_TOPIC,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.cfg = cfg
        self.table = table
        self.summaries = summaries
        self.topic = topic
        self.clock = clock
        self.merger: WindowMerger | None = None
        self.lock = asyncio.Lock()
        self.last: deque[dict[str, Any]] = deque(maxlen=KEEP_SUMMARIES)
        self.stats: Counter[str] = Counter()
        self._declared = False

    def _get(self) -> WindowMerger:
        if self.merger is None:
            self.merger = WindowMerger.restore(self.cfg, self.table.data.items(), self.clock())
        return self.merger

    def forget(self, tps: Iterable[TP]) -> None:
        if any(tp.topic == self.topic for tp in tps):
            self.merger = None

    async def on_partial(self, msg: dict[str, Any]) -> None:
        async with self.lock:
            m = self._get()
            stale = m.stale
            out = m.add(msg, self.clock())
            if m.stale > stale:
                logger.error(
                    "partial of partition %s for window %s arrived after its window was "
                    "forgotten (older than %d s): not merged",
                    msg.get("partition"),
                    msg.get("window_start"),
                    self.cfg.retention_s,
                )
            await self._emit(m, out)

    async def tick(self) -> None:
        if not ready(self.app) or TP(self.topic, 0) not in self.app.consumer.assignment():
            return
        async with self.lock:
            m = self._get()
            await self._emit(m, m.tick(self.clock()))

    async def _emit(self, m: WindowMerger, out: list[dict[str, Any]]) -> None:
        if out:
            if not self._declared:
                # A topic that is only written is not declared by Faust; without this
                # the transport would create it with the app's default partition count.
                await self.summaries.maybe_declare()
                self._declared = True
            futures = [await self.summaries.send(value=s) for s in out]
            for fut in futures:
                await fut
            self.last.extend(out)
            self.stats["summaries"] += len(out)
        for key, value in m.take_dirty().items():
            table_put(self.table, 0, key, value)

    def view_current(self) -> dict[str, Any]:
        if self.merger is None:
            return {"owner": False}
        return {"owner": True, **self.merger.pending()}

    def view_last(self) -> dict[str, Any]:
        latest: dict[str, dict[str, Any]] = {}
        for s in self.last:
            latest[s["view"]] = s
        return {"summaries": latest, "stats": dict(self.stats)}

    def view_top(self) -> dict[str, Any]:
        last = self.view_last()["summaries"].get("tumbling")
        if last is None:
            return {"window_start": None, "window_end": None, "hot_queries": []}
        return {
            "window_start": last["window_start"],
            "window_end": last["window_end"],
            "hot_queries": last["hot_queries"],
            "hot_queries_error_bound": last["hot_queries_error_bound"],
        }
