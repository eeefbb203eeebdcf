"""Changelog compaction for the redis:// transport: snapshot plus trim.

Redis has no log compaction, so a table's changelog stream would grow with
the age of the table and so would recovery. The owner of a table partition
compacts its changelog partition when the stream is longer than
``max(2 x live keys at the last compaction, min_length)``:

1. read the stream up to its current end (offset ``E``), collecting every
   key that has an entry;
2. without yielding to the event loop, look each key up in the table and
   queue its *current* value as an ordinary changelog entry (Faust's
   ``send_changelog``, through the producer buffer: FIFO behind every
   earlier write of this worker and ahead of every later one). Keys no
   longer in the table (deleted, or windows that expired) are not re-sent;
3. wait until Redis has acknowledged all of them, then trim everything up to
   ``E`` (``XTRIM MINID``) with the fenced script (only the owner trims).

Every key that had an entry up to ``E`` and is still live has a newer entry
after ``E`` carrying its current value, so replaying the stream from its
first entry gives the same table; recovery reads O(table partition), not
O(history). Offsets stay dense (re-sent values are ordinary entries).
A crash between steps 2 and 3 leaves a longer stream, never a wrong one.
Global tables (written by everyone) are not compacted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faust.types import TP, AppT

from ...schemas import names
from ...schemas.wire import KEY, TOMBSTONE, VALUE
from .group import GroupMember

logger = logging.getLogger(__name__)

#: Streams shorter than this are never compacted. Faust recovers about
#: 10,000 changelog entries a second on these machines (bench/scale.py), so
#: 2,000 per partition keeps the recovery of 8 partitions within ~2 s.
MIN_LENGTH = 2_000

#: Seconds between checks of the owned changelog partitions' lengths.
INTERVAL = 5.0

#: Entries per XRANGE while reading a changelog partition.
READ_CHUNK = 5_000


class Compactor:
    """Compacts the changelog partitions this worker owns."""

    def __init__(
        self, app: AppT, consumer: Any, group: GroupMember, min_length: int = MIN_LENGTH
    ) -> None:
        self.app = app
        self.consumer = consumer
        self.group = group
        self.min_length = min_length
        self._live: dict[TP, int] = {}

    def _tables(self) -> dict[str, Any]:
        tables: Any = self.app.tables
        return {t.changelog_topic.get_topic_name(): t for t in tables.values() if not t.is_global}

    async def run_once(self) -> dict[TP, int]:
        """Compact every owned changelog partition over its threshold;
        returns ``{tp: live keys re-sent}`` for those compacted."""
        done: dict[TP, int] = {}
        tables = self._tables()
        client = self.consumer.transport.client
        for tp in sorted(self.consumer.assignment()):
            table = tables.get(tp.topic)
            if table is None or self.group.token is None:
                continue
            if tp not in self.app.assignor.assigned_actives():
                continue  # a standby: read only
            length = int(await client.xlen(names.stream_key(tp.topic, tp.partition)))
            if length > max(2 * self._live.get(tp, 0), self.min_length):
                done[tp] = await self.compact(table, tp)
        return done

    async def compact(self, table: Any, tp: TP) -> int:
        """Snapshot ``tp`` of ``table`` into its changelog and trim what came
        before; returns the number of live keys re-sent."""
        client = self.consumer.transport.client
        stream = names.stream_key(tp.topic, tp.partition)
        token = self.group.token
        last: dict[bytes, tuple[int, Any]] = {}  # raw key -> (offset, fields)
        end = -1
        start = "-"
        while True:
            entries = await client.xrange(stream, min=start, count=READ_CHUNK)
            for entry_id, fields in entries:
                end = int(entry_id.split(b"-")[1]) - 1
                key = fields.get(KEY)
                if key is not None:
                    last[key] = (end, fields)
            if len(entries) < READ_CHUNK:
                break
            start = f"0-{end + 2}"
        if end < 0:
            return 0
        keys = []
        for raw, (offset, fields) in last.items():
            value = None if TOMBSTONE in fields else fields.get(VALUE)
            message = self.consumer._to_message(tp, (offset, raw, value, 0.0, None))
            event = await table.changelog_topic.decode(message, propagate=True)
            keys.append(table._to_key(event.key))
        if self.group.token != token:
            return 0  # rebalanced meanwhile
        # No await from here until every value is queued: see the docstring.
        data = table.data
        futures = []
        for key in keys:
            value = data.get(key)
            if value is not None:
                futures.append(table.send_changelog(tp.partition, key, value))
        if futures:
            await asyncio.gather(*futures)
        removed = await self.group.trim(tp.topic, tp.partition, stream, f"0-{end + 2}")
        self._live[tp] = len(futures)
        logger.info(
            "Compacted changelog %s: %d live keys re-sent, %d entries up to offset %d trimmed",
            tp,
            len(futures),
            removed,
            end,
        )
        return len(futures)
