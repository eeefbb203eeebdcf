"""Fetching and parsing for the redis:// consumer.

Responsible for: reading the assigned (active) partitions with one
``XREAD COUNT n STREAMS k... id...`` (no Redis consumer groups: Faust
assigns partitions itself), run by a script that returns the reply flat
(:data:`READ_SCRIPT`), then, if nothing was there, a blocking
``XREAD ... BLOCK ms``; turning entries into records and Faust
messages, dead-lettering entries that are not in the wire format
(:mod:`.deadletter`; their offsets are acknowledged so commits move on), and
advancing the read positions kept by :mod:`.positions`.

A partition sought while a fetch was in flight (its epoch changed) has that
fetch's entries dropped: they are re-read from the new position.

Redis going away: a fetch that fails with a connection error is logged, the
fetch loop backs off and retries from the same positions (nothing was
consumed, so nothing is lost).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from faust.types import TP, ConsumerMessage, Message
from redis.commands.core import AsyncScript

from ...schemas import names
from ...schemas.wire import HEADERS, KEY, TIMESTAMP, TOMBSTONE, VALUE
from .client import CONNECTION_ERRORS, Backoff
from .fastpath import Run, fast_run
from .positions import PositionsConsumer

#: Entries per XREAD (over all partitions) when ``broker_max_poll_records`` is
#: not set. Measured (8 partitions, one agent): 1000 was as fast as anything
#: smaller and ~15% faster than 4000-8000, because bigger fetches overflow the
#: agent's buffer (``stream_buffer_maxsize``) and deliveries start to wait.
DEFAULT_FETCH_TOTAL = 1000

#: Longest wait for new entries on the unpaused partitions while others are
#: paused (their agent buffers are full): the latency cost of not blocking.
PAUSED_POLL = 0.05

#: XREAD COUNT is per stream; never ask for fewer than this per stream,
#: unless the entries are big (see FETCH_BYTES).
MIN_FETCH_PER_STREAM = 100

#: Rough bound on the bytes one XREAD brings in, over all the streams it
#: reads. Entries can be large (a Publisher batch of 1000 access events is
#: ~400 KB), and 100 of them from each of 8 partitions would be ~300 MB per
#: fetch: COUNT (which is per stream) is lowered so that COUNT x streams x
#: (largest recent entry size) stays within it. Before any entry size is
#: known (the first fetch after start) COUNT is :data:`FIRST_FETCH_PER_STREAM`:
#: the first fetch of a backlog used to be unbounded and was most of the
#: worker's peak memory (pipeline --quick: 800 entries, 286 MB in one reply;
#: peak RSS 475 MB, 186 MB with the bound).
FETCH_BYTES = 8 * 1024 * 1024

#: COUNT per stream while no entry size is known (~30 MB of Publisher batches
#: over 8 partitions at most); the sizes of what it brings set the next COUNT.
FIRST_FETCH_PER_STREAM = 10

#: A parsed entry: (offset, key, value, timestamp seconds, headers).
Record = tuple[int, bytes | None, bytes | None, float, list[tuple[str, bytes]] | None]

#: ``XREAD COUNT ARGV[1] STREAMS KEYS... ARGV[2]...`` (never blocks), its reply
#: flat: for each stream with entries ``key, n, span, last id``, then for each
#: of its ``n`` entries ``id, number of fields, field, value, ...`` (``span``:
#: how many items follow the last id). XREAD's own reply is two lists per
#: entry, which the client builds and Python's garbage collector counts: a
#: fetch of 1000 entries set off ~3.7 young collections, each of which moved
#: the messages in flight on towards the old generation, and so full
#: collections of the whole worker. Measured for 1000 entries of ~100 bytes:
#: client CPU 1.3 ms nested, 0.55 ms flat, and no collection; Redis' own time
#: goes from ~1.5 to ~2.5 ms (on its own core). Declared ``no-writes`` (Redis
#: 7 script flags): it only reads, and runs while Redis is above ``maxmemory``
#: (tested).
READ_SCRIPT = """#!lua flags=no-writes
local args = {'XREAD', 'COUNT', ARGV[1], 'STREAMS'}
for i = 1, #KEYS do args[#args + 1] = KEYS[i] end
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
local reply = redis.call(unpack(args))
local out, n = {}, 0
if not reply then return out end
for _, s in ipairs(reply) do
  local entries = s[2]
  if #entries > 0 then
    local head = n
    out[n + 1] = s[1]; out[n + 2] = #entries; out[n + 3] = 0; out[n + 4] = entries[#entries][1]
    n = n + 4
    for _, e in ipairs(entries) do
      local f = e[2]
      out[n + 1] = e[1]; out[n + 2] = #f
      n = n + 2
      for i = 1, #f do out[n + i] = f[i] end
      n = n + #f
    end
    out[head + 3] = n - head - 4
  end
end
return out
"""

#: Above this many streams in one read, plain XREAD (flattened here): Lua's
#: ``unpack`` is limited to a few thousand values.
SCRIPT_MAX_STREAMS = 1000


class Unparsed:
    """One stream's entries of a fetch that are not made into records or
    messages yet: where :meth:`FetchingConsumer._parse_some` goes on."""

    __slots__ = (
        "as_messages",
        "dense",
        "epoch",
        "fast",
        "flat",
        "i",
        "last",
        "now",
        "offset",
        "remaining",
        "stream",
        "tp",
    )
    tp: TP
    stream: bytes
    #: the fetch's flat reply; the next entry is at ``flat[i]``
    flat: list[Any]
    i: int
    #: entries not taken yet
    remaining: int
    #: offset of the last entry taken (dense ids: the next is ``offset + 1``)
    offset: int
    dense: bool
    #: offset of the last entry taken that counts for the position (-1: none)
    last: int
    now: float
    #: the partition's position epoch when read (a seek changes it)
    epoch: int | None
    as_messages: bool
    #: the fast path's (run, plan), for dense ids and messages
    fast: tuple[Run, Any] | None


def flatten(reply: Any) -> list[Any]:
    """An ``XREAD`` reply (RESP3 map, RESP2 pairs, or None: nothing to
    read) in the flat form of :data:`READ_SCRIPT`."""
    out: list[Any] = []
    if not reply:
        return out
    streams = reply.items() if isinstance(reply, dict) else reply
    for stream, entries in streams:
        if not entries:
            continue
        head = len(out)
        out += (stream, len(entries), 0, entries[-1][0])
        for entry_id, fields in entries:
            out += (entry_id, len(fields))
            out += fields
        out[head + 2] = len(out) - head - 4
    return out


class FetchingConsumer(PositionsConsumer):
    """Faust consumer base: fetching and parsing (abstract).

    The state is created by :class:`.consumer.Consumer`'s ``__init__``.
    """

    _stream_keys: dict[TP, bytes]
    _tp_of_key: dict[bytes, TP]
    _fetch_total: int
    #: per partition: recent value size in bytes (moving average of samples)
    _entry_bytes: dict[TP, int]
    _fetch_backoff: Backoff
    _buffer_dropped: asyncio.Event
    _read_script: AsyncScript | None = None
    #: per partition: the fast path's (run, plan) (see :mod:`.fastpath`)
    _message_plans: dict[TP, tuple[Run, Any]]

    def _reader(self, client: Any) -> AsyncScript:
        """:data:`READ_SCRIPT` on ``client`` (redis-py loads it again if Redis
        lost it)."""
        script = self._read_script
        if script is None or script.registered_client is not client:
            script = self._read_script = client.register_script(READ_SCRIPT)
        return script

    def _key_of(self, tp: TP) -> bytes:
        key = self._stream_keys.get(tp)
        if key is None:
            key = self._stream_keys[tp] = names.stream_key(tp.topic, tp.partition).encode()
            self._tp_of_key[key] = tp
        return key

    async def _getmany(
        self,
        active_partitions: set[TP] | None,
        timeout: float,
        *,
        as_messages: bool = False,
        lazy: bool = False,
    ) -> Mapping[TP, Any]:
        """One ``XREAD`` of the partitions: records (:data:`Record`) per
        partition, or with ``as_messages`` Faust messages (what the delivery
        loop hands on; their ``generation_id`` is set when delivered), or
        with ``lazy`` an :class:`Unparsed` per partition, whose messages
        :meth:`_parse_some` makes a chunk at a time (the delivery loop's
        way: see :mod:`.pacing` for why)."""
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
        sizes = self._entry_bytes
        if not sizes:
            count = FIRST_FETCH_PER_STREAM  # no entry size known yet (see FETCH_BYTES)
        else:
            # a stream not sampled yet counts as the biggest sampled anywhere
            fallback = max(sizes.values())
            biggest = max(sizes.get(tp, fallback) for tp in tps)
            if biggest * count * len(keys) > FETCH_BYTES:
                count = max(1, FETCH_BYTES // (biggest * len(keys)))
        # While some partitions are paused because an agent's buffer is full,
        # a blocking read of the others (often idle, e.g. the leader topic)
        # would keep the paused ones waiting for the whole block time after
        # the buffer drained: read without blocking and wait for a drain.
        paused = bool(self._buffered_partitions)
        try:
            if len(keys) <= SCRIPT_MAX_STREAMS:
                flat = await self._reader(client)(keys=keys, args=[count, *ids])
            else:
                flat = flatten(
                    await client.execute_command("XREAD", "COUNT", count, "STREAMS", *keys, *ids)
                )
            if not flat and not paused:
                flat = flatten(
                    await client.execute_command(
                        "XREAD",
                        "COUNT",
                        count,
                        "BLOCK",
                        max(1, int(timeout * 1000)),
                        "STREAMS",
                        *keys,
                        *ids,
                    )
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
        if not flat:
            if paused:
                self._buffer_dropped.clear()
                await self.wait_for_stopped_or(self._buffer_dropped, min(timeout, PAUSED_POLL))
            return {}
        records: dict[TP, Any] = {}
        now = time.time()
        pos, end = 0, len(flat)
        while pos < end:
            stream, n, span, last_id = flat[pos : pos + 4]
            start = pos + 4
            pos = start + span
            tp = self._tp_of_key[stream]
            epoch = epochs.get(tp)
            if epoch != started[tp]:
                continue  # sought while we were reading: drop, re-read from the new position
            if last_id[:2] == b"0-" and last_id[2:].isdigit() and tp in self._positions:
                # the offset after the last entry (offset = sequence - 1), known
                # before any entry is parsed (not for a partition revoked meanwhile)
                after = int(last_id[2:])
                if after > self._highwaters.get(tp, 0):
                    self._highwaters[tp] = after
            unparsed = self._unparsed(
                tp, stream, flat, start, n, last_id, now, epoch, as_messages or lazy
            )
            if lazy:
                records[tp] = unparsed
                continue
            try:
                out = await self._parse_some(unparsed, n)
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

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Fetch once and yield the messages, partition by partition.

        Faust's version, except that a partition sought while its messages
        are being delivered has the rest of them dropped (they are read
        again from the new position), so a seek takes effect at once.
        """
        records, _active = await self._wait_next_records(timeout)
        if not records or self.should_stop or not self.flow_active:
            return
        app = self.app
        generation_id = app.consumer_generation_id
        epochs = self._epochs
        # No await since the fetch checked the epochs: these are the fetch's.
        started = {tp: epochs.get(tp) for tp in records}
        to_message = self._to_message
        track = app.monitor.track_tp_end_offset
        for tp, batch in records.items():
            track(tp, self.highwater(tp))
            for record in batch:
                if (
                    epochs.get(tp) != started[tp]
                    or not self.flow_active
                    or app.consumer_generation_id != generation_id
                ):
                    break
                yield tp, to_message(tp, record)
            if not self.flow_active or app.consumer_generation_id != generation_id:
                return

    def _unparsed(
        self,
        tp: TP,
        stream: bytes,
        flat: list[Any],
        i: int,
        n: int,
        last_id: bytes,
        now: float,
        epoch: int | None,
        as_messages: bool,
    ) -> Unparsed:
        """The ``n`` entries of a stream at ``flat[i:]`` (:data:`READ_SCRIPT`'s
        form), read at position epoch ``epoch``, ready for :meth:`_parse_some`."""
        u = Unparsed()
        u.tp, u.stream, u.flat, u.i, u.remaining = tp, stream, flat, i, n
        u.now, u.epoch, u.as_messages, u.last = now, epoch, as_messages, -1
        # Dense ids: if the first and last entries are ``0-a`` and ``0-b`` with
        # b - a + 1 entries, every id in between is ``0-x`` (ids increase) and
        # they are a, a+1, ..., b: no id needs parsing. Otherwise (a foreign
        # id, or entries deleted in between) each id is parsed.
        u.offset, u.dense, u.fast = -1, False, None
        if n:
            first_id = flat[i]
            if (
                first_id[:2] == b"0-"
                and last_id[:2] == b"0-"
                and first_id[2:].isdigit()
                and last_id[2:].isdigit()
            ):
                u.offset = int(first_id[2:]) - 2
                u.dense = int(last_id[2:]) - u.offset - 2 == n - 1
        if u.dense and as_messages:
            plans = self._message_plans
            fast = plans.get(tp)
            if fast is None:
                fast = plans[tp] = fast_run(tp)
            u.fast = fast
        return u

    async def _parse_some(self, u: Unparsed, limit: int) -> list[Any]:
        """The next (up to) ``limit`` records (or messages) of ``u``;
        dead-letters bad entries on the way; advances the position (unless
        the partition was sought meanwhile). Empty: ``u`` is done.

        With dense ids, runs of entries in the producer's own layout are made
        into messages by :mod:`.fastpath` (in C when built); the entry such a
        run stops at is taken by the code below, then the next run starts.
        The code below makes a record per entry, and a message from it when
        messages are asked for."""
        tp, flat, as_messages = u.tp, u.flat, u.as_messages
        out: list[Any] = []
        append = out.append
        i, remaining, offset, dense, last = u.i, u.remaining, u.offset, u.dense, u.last
        try:
            while remaining > 0 and len(out) < limit:
                if u.fast is not None:
                    run, plan = u.fast
                    made = len(out)
                    i = run(plan, flat, i, min(remaining, limit - made), offset + 1, out)
                    made = len(out) - made
                    if made:
                        offset += made
                        last = offset
                        remaining -= made
                        if not remaining or len(out) >= limit:
                            break
                remaining -= 1
                entry_id, nf = flat[i], flat[i + 1]
                at = i + 2
                i = at + nf
                if dense:
                    offset += 1
                else:
                    if entry_id[:2] != b"0-":
                        # Foreign id: it and everything after it are foreign (see
                        # deadletter.py). Move them away; the next fetch goes on.
                        remaining = 0
                        await self.transport.dead_letters.repair_stream(tp.topic, tp.partition)
                        break
                    offset = int(entry_id[2:]) - 1
                last = offset
                # Fast path: the producer's own layout (producer.py), ``v <value>
                # k <key> t <ms>`` or ``v <value> t <ms>``; anything else (headers,
                # tombstones, other writers' fields, bad values) takes the general path.
                if nf == 6:
                    f_value, value, f_key, key, f_ts, ts_raw = flat[at:i]
                    fast = (
                        f_value == VALUE and f_key == KEY and f_ts == TIMESTAMP and ts_raw.isdigit()
                    )
                elif nf == 4:
                    f_value, value, f_ts, ts_raw = flat[at:i]
                    key = None
                    fast = f_value == VALUE and f_ts == TIMESTAMP and ts_raw.isdigit()
                else:
                    fast = False
                if fast:
                    record: Record = (offset, key, value, int(ts_raw) / 1000.0, None)
                    append(self._to_message(tp, record, None) if as_messages else record)
                    continue
                fields = flat[at:i]
                try:
                    d = dict(zip(fields[::2], fields[1::2], strict=True))
                    value = d.get(VALUE)
                    if value is None:
                        raise ValueError("entry has no 'v' (value) field")
                    ts_raw = d.get(TIMESTAMP)
                    ts = int(ts_raw) / 1000.0 if ts_raw is not None else u.now
                    h_raw = d.get(HEADERS)
                    headers = (
                        [(str(k), str(v).encode()) for k, v in orjson.loads(h_raw).items()]
                        if h_raw is not None
                        else None
                    )
                except (ValueError, AttributeError, TypeError) as exc:
                    await self.transport.dead_letters.dead_letter(
                        tp.topic, u.stream, entry_id, fields, str(exc)
                    )
                    self._ack_skipped(tp, offset)
                    continue
                if TOMBSTONE in d:
                    value = None
                record = (offset, d.get(KEY), value, ts, headers)
                append(self._to_message(tp, record, None) if as_messages else record)
        finally:
            u.i, u.remaining, u.offset, u.last = i, remaining, offset, last
        # Not if the partition was sought (or revoked) while dead-lettering:
        # the seek set the position.
        if last >= 0 and self._epochs.get(tp) == u.epoch and tp in self._positions:
            self._positions[tp] = last + 1
            if last + 1 > self._highwaters.get(tp, 0):
                self._highwaters[tp] = last + 1
        if out:
            # one sample per chunk: the value size of its last entry
            sample = out[-1].value if as_messages else out[-1][2]
            if sample is not None:
                sizes = self._entry_bytes
                old = sizes.get(tp, 0)
                sizes[tp] = len(sample) if old == 0 else (3 * old + len(sample)) // 4
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

    def _to_message(self, tp: TP, record: Any, generation_id: int | None = None) -> ConsumerMessage:
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
            generation_id=(
                self.app.consumer_generation_id if generation_id is None else generation_id
            ),
        )

    def _new_topicpartition(self, topic: str, partition: int) -> TP:
        return TP(topic, partition)
