"""Topics on Redis: metadata, partition counts, highwater and earliest offsets.

Responsible for: creating a topic (its metadata hash
:func:`names.topic_meta_key` and its entry in :data:`names.TOPICS_INDEX_KEY`;
the partition streams themselves appear with the first ``XADD``); knowing
how many partitions a topic has (cached: the count never changes once a
topic exists); and the offsets Faust asks about, read from ``XINFO STREAM``:

* highwater (the next offset to be written, Kafka's log end offset) is the
  sequence of ``last-generated-id`` ``0-N``, which equals ``entries-added``
  for a stream written only with ``0-*``; both survive ``XTRIM``/``XDEL``.
* earliest (the first offset still stored) is ``seq - 1`` of the first
  entry, or the highwater when the stream is empty or fully trimmed.

A stream whose last id is foreign (see :mod:`.deadletter`) is repaired first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from faust.types import TP

from ...schemas import names
from .deadletter import DeadLetters

logger = logging.getLogger(__name__)

#: Create the metadata hash unless it exists; return the partition count in
#: force. KEYS: meta hash, topics index. ARGV: topic, then field/value pairs.
CREATE_SCRIPT = """
local existing = redis.call('HGET', KEYS[1], 'partitions')
if existing then return {0, tonumber(existing)} end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SADD', KEYS[2], ARGV[1])
return {1, tonumber(redis.call('HGET', KEYS[1], 'partitions'))}
"""


@dataclass(frozen=True)
class TopicMeta:
    """What the metadata hash of a topic says."""

    partitions: int
    retention_ms: int | None = None
    maxlen: int | None = None
    compacting: bool = False
    created_ms: int | None = None


def _seq(entry_id: bytes | str | None) -> int | None:
    """N of an id ``0-N``; None for anything else (foreign or missing)."""
    if entry_id is None:
        return None
    raw = entry_id if isinstance(entry_id, bytes) else entry_id.encode()
    if raw[:2] != b"0-":
        return None
    tail = raw[2:]
    return int(tail) if tail.isdigit() else None


class TopicRegistry:
    """Topic metadata and offsets for one Redis client (one per Transport)."""

    def __init__(self, client: aioredis.Redis, dead_letters: DeadLetters) -> None:
        self.client = client
        self.dead_letters = dead_letters
        self._partitions: dict[str, int] = {}
        self._create = client.register_script(CREATE_SCRIPT)

    # --- metadata ---------------------------------------------------------

    def cached_partitions(self, topic: str) -> int | None:
        """Partition count if known to this process (no Redis call)."""
        return self._partitions.get(topic)

    async def create(
        self,
        topic: str,
        partitions: int,
        *,
        retention_ms: int | None = None,
        maxlen: int | None = None,
        compacting: bool | None = None,
    ) -> int:
        """Create ``topic`` if it does not exist; return its partition count.

        An existing topic keeps its metadata: if it has another partition
        count, that count wins (and is logged), as with Kafka, where a topic
        cannot be re-created with another count by declaring it.
        """
        if partitions < 1:
            raise ValueError(f"topic {topic!r}: partitions must be >= 1, got {partitions}")
        fields: list[Any] = [
            "partitions",
            partitions,
            "created_ms",
            int(time.time() * 1000),
            "compacting",
            int(bool(compacting)),
        ]
        if retention_ms:
            fields += ["retention_ms", int(retention_ms)]
        if maxlen:
            fields += ["maxlen", int(maxlen)]
        created, actual = await self._create(
            keys=[names.topic_meta_key(topic), names.TOPICS_INDEX_KEY], args=[topic, *fields]
        )
        actual = int(actual)
        if created:
            logger.info("Created topic %r with %d partitions", topic, actual)
        elif actual != partitions:
            logger.warning(
                "Topic %r exists with %d partitions (declared with %d): keeping the existing %d",
                topic,
                actual,
                partitions,
                actual,
            )
        self._partitions[topic] = actual
        return actual

    async def describe(self, topic: str) -> TopicMeta | None:
        """The metadata of ``topic``, or None if it was never created."""
        raw = await self.client.hgetall(names.topic_meta_key(topic))
        if not raw or b"partitions" not in raw:
            return None

        def opt(name: bytes) -> int | None:
            v = raw.get(name)
            return int(v) if v is not None and v.isdigit() else None

        meta = TopicMeta(
            partitions=int(raw[b"partitions"]),
            retention_ms=opt(b"retention_ms"),
            maxlen=opt(b"maxlen"),
            compacting=raw.get(b"compacting") == b"1",
            created_ms=opt(b"created_ms"),
        )
        self._partitions[topic] = meta.partitions
        return meta

    async def partitions(self, topic: str) -> int | None:
        """Partition count of ``topic`` (cached), None if the topic does not exist."""
        n = self._partitions.get(topic)
        if n is not None:
            return n
        raw = await self.client.hget(names.topic_meta_key(topic), "partitions")
        if raw is None:
            return None
        n = self._partitions[topic] = int(raw)
        return n

    async def ensure(self, topic: str, default_partitions: int) -> int:
        """Partition count of ``topic``, creating it with ``default_partitions``
        if it does not exist (Kafka's auto-create on first use)."""
        n = await self.partitions(topic)
        if n is None:
            n = await self.create(topic, default_partitions)
        return n

    # --- offsets ----------------------------------------------------------

    async def _xinfo(self, tps: list[TP]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for tp in tps:
                pipe.xinfo_stream(names.stream_key(tp.topic, tp.partition))
            return list(await pipe.execute(raise_on_error=False))

    async def stream_offsets(self, tps: Iterable[TP]) -> dict[TP, tuple[int, int]]:
        """``{tp: (earliest, highwater)}`` for each partition, one round trip
        (two if a stream with foreign entries needs repairing first)."""
        tps = list(tps)
        result: dict[TP, tuple[int, int]] = {}
        replies = await self._xinfo(tps)
        broken: list[TP] = []
        for tp, info in zip(tps, replies, strict=True):
            offsets = self._offsets_of(tp, info)
            if offsets is None:
                broken.append(tp)
            else:
                result[tp] = offsets
        if broken:
            for tp in broken:
                await self.dead_letters.repair_stream(tp.topic, tp.partition)
            for tp, info in zip(broken, await self._xinfo(broken), strict=True):
                result[tp] = self._offsets_of(tp, info) or (0, 0)
        return result

    def _offsets_of(self, tp: TP, info: Any) -> tuple[int, int] | None:
        if isinstance(info, redis.exceptions.ResponseError):
            if "no such key" in str(info).lower():
                return (0, 0)  # nothing written yet
            raise info
        if isinstance(info, Exception):
            raise info
        last = info.get("last-generated-id")
        highwater = _seq(last)
        if highwater is None:
            return None  # foreign tail: repair first
        first = info.get("first-entry")
        first_seq = _seq(first[0]) if first else None
        earliest = first_seq - 1 if first_seq is not None else highwater
        return (earliest, highwater)

    async def highwaters(self, tps: Iterable[TP]) -> dict[TP, int]:
        """Next offset to be written for each partition."""
        return {tp: hw for tp, (_, hw) in (await self.stream_offsets(tps)).items()}

    async def earliest(self, tps: Iterable[TP]) -> dict[TP, int]:
        """First offset still stored for each partition (highwater if none)."""
        return {tp: e for tp, (e, _) in (await self.stream_offsets(tps)).items()}


def partitions_map(topics: Mapping[str, int]) -> set[TP]:
    """All partitions of ``{topic: partition count}``."""
    return {TP(t, p) for t, n in topics.items() for p in range(n)}
