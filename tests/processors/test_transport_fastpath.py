"""redis:// transport: the consumer's fast paths give what Faust's own code gives.

- commit offsets: the consumer's ``_new_offset`` (a shortcut for in-order acks)
  against Faust's ``Consumer._new_offset`` on the same ack bookkeeping;
- parsing: offsets of entries read in one fetch, with and without holes
  (``XDEL``) in the ids (dense ids are not parsed one by one).

The delivery loop's worker test (holes, waiting deliveries, frequent commits)
is in ``test_transport_seek.py``, beside the other ``apps.seek`` workers.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from tierstream.processors.transport import Consumer
from tierstream.schemas import names

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytestmark = pytest.mark.timeout(90)


def _ack_states(rng: random.Random) -> Iterator[tuple[list[int], set[int], int | None, bool]]:
    """(acked offsets, acked index, committed offset, with a gap) as the
    bookkeeping can hold them: in order, shuffled, with a hole, a duplicate."""
    for _ in range(5000):
        first = rng.randint(0, 40)
        acked = list(range(first, first + rng.randint(1, 30)))
        kind = rng.random()
        if kind < 0.3:
            rng.shuffle(acked)
        elif kind < 0.5 and len(acked) > 1:
            acked.pop(rng.randrange(len(acked)))
        elif kind < 0.6:
            acked.append(rng.choice(acked))  # e.g. a gap offset acked again
        committed = rng.choice([None, 0, first - 1, first, first - 2, first - 5])
        yield (
            acked,
            set(acked),
            committed if committed is None or committed >= 0 else None,
            (rng.random() < 0.1),
        )


async def test_commit_offsets_are_fausts_for_any_ack_bookkeeping(consumer: Consumer) -> None:
    tp = TP("t", 0)
    for acked, index, committed, gap in _ack_states(random.Random(7)):
        results = []
        for new_offset in (
            consumer._new_offset,
            lambda tp: FaustConsumer._new_offset(consumer, tp),
        ):
            consumer._acked.clear()
            consumer._acked_index.clear()
            consumer._gap.clear()
            consumer._acked[tp] = list(acked)
            consumer._acked_index[tp] = set(index)
            consumer._committed_offset[tp] = committed
            if gap:
                consumer._gap[tp].addi(max(acked) + 2, max(acked) + 5)
            offset = new_offset(tp)
            results.append((offset, list(consumer._acked[tp]), set(consumer._acked_index[tp])))
        assert results[0] == results[1], (acked, committed, gap)


async def test_offsets_of_a_fetch_with_and_without_holes(
    consumer: Consumer, aredis: aioredis.Redis, unique: str
) -> None:
    key = names.stream_key(unique, 0)
    for i in range(300):
        await aredis.xadd(key, {b"v": b"%d" % i, b"t": b"%d" % (1_700_000_000_000 + i)}, id="0-*")
    tp = TP(unique, 0)
    consumer._assigned = frozenset({tp})
    consumer._set_position(tp, 0)
    consumer._entry_bytes[tp] = 3  # small entries known: no first-fetch limit
    got = await consumer._getmany({tp}, 0.05)
    assert [r[0] for r in got[tp]] == list(range(300))
    assert [r[2] for r in got[tp]] == [b"%d" % i for i in range(300)]
    assert got[tp][5][3] == (1_700_000_000_000 + 5) / 1000.0
    assert await consumer.position(tp) == 300
    # Holes: inside, right after the position, and the last entry.
    await aredis.xdel(key, "0-101", "0-102", "0-150", "0-151", "0-200", "0-300")
    truth = [int(eid[2:]) - 1 for eid, _ in await aredis.xrange(key)]
    for position in (0, 99, 100, 150):
        consumer._set_position(tp, position)
        records = (await consumer._getmany({tp}, 0.05))[tp]
        assert [r[0] for r in records] == [o for o in truth if o >= position], position
        assert all(r[2] == b"%d" % r[0] for r in records)
        assert await consumer.position(tp) == 299  # after the last entry read
