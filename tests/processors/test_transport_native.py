"""redis:// transport: the fetch's fast path in C (``_native.messages``) makes the
messages its pure-Python twin (``fastpath.messages_py``) makes, and a fetch
through it gives what a fetch without it gives.

- thousands of random flat replies (the producer's layouts, other layouts,
  odd field names and timestamps, items of other types, runs cut short):
  same stop index, and the messages equal slot by slot;
- a message made in C behaves in Faust: ack, refcounts, tracking, weakrefs,
  attributes of its own, ``repr``; and releases what it holds;
- ``message_plan`` refuses types it cannot make as Python would;
- a real fetch (``_getmany(..., as_messages=True)``) of a stream with dead
  letters, other layouts and holes (``XDEL``) gives the same messages, dead
  letters, acks and positions with the C path and with the twin, and what
  the entries (read back with ``XRANGE``) say.
"""

from __future__ import annotations

import gc
import random
import sys
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from faust.types import TP, ConsumerMessage
from tierstream.processors.transport import Consumer, fastpath
from tierstream.schemas import names
from transport_consumer import standalone_consumer

from tierstream import native

pytestmark = pytest.mark.timeout(120)


ext = native.ext
needs_ext = pytest.mark.skipif(ext is None, reason=native.describe())

MISSING = object()


def _slot_names(cls: type) -> list[str]:
    out: list[str] = []
    for c in cls.__mro__:
        slots = c.__dict__.get("__slots__", ())
        slots = (slots,) if isinstance(slots, str) else slots
        out += [s for s in slots if s not in ("__weakref__", "__dict__")]
    return out


SLOTS = _slot_names(ConsumerMessage)


def _exact(v: Any) -> Any:
    """Floats by their bits (0.0 and -0.0 differ), the rest as is."""
    return ("float", v.hex()) if type(v) is float else v


def state(m: Any) -> tuple[Any, ...]:
    """Everything a message holds: its type, its instance dict, every slot
    along the MRO (unset ones as MISSING), with the types of the values."""
    values = [getattr(m, s, MISSING) for s in SLOTS]
    return (
        type(m),
        dict(vars(m)),
        [(s, type(v), _exact(v)) for s, v in zip(SLOTS, values, strict=True)],
    )


def test_slots_cover_the_message() -> None:
    # the comparison below looks at every slot Faust's Message has
    assert len(SLOTS) == 20
    assert {"offset", "timestamp", "key", "value", "span", "generation_id", "tp"} <= set(SLOTS)


# ---- random flat replies -----------------------------------------------------


class Bytes(bytes):
    pass


def _ts(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.6:
        return str(rng.randint(0, 10**13)).encode()
    if r < 0.75:  # 1..15 digits, leading zeros
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 15))).encode()
    return rng.choice(
        [
            b"",
            b"12a",
            b" 12",
            b"12 ",
            b"-12",
            b"+12",
            b"1_000",
            b"1.5",
            b"9" * 16,
            b"1" + b"0" * 15,
            b"1" * 19,
            b"9" * 30,
            "\u0663".encode(),  # an Arabic digit: not ASCII
            "123",
            123,
            None,
            bytearray(b"123"),
            Bytes(b"123"),
            memoryview(b"123"),
        ]
    )


def _blob(rng: random.Random, odd: float) -> Any:
    if rng.random() < odd:
        return rng.choice(["str", 5, None, bytearray(b"x"), Bytes(b"x"), 1.5, memoryview(b"m")])
    return rng.randbytes(rng.choice([0, 1, 5, 98, 300]))


def _name(rng: random.Random, name: bytes, odd: float) -> Any:
    if rng.random() < odd:
        return rng.choice(
            [name.decode(), name.upper(), name * 2, b"", bytearray(name), Bytes(name), b"x", 0]
        )
    return name


def _entry(rng: random.Random, seq: int, odd: float, other: float) -> list[Any]:
    eid = b"0-%d" % seq
    kind = rng.random() * 0.8 if rng.random() >= other else 0.8 + rng.random() * 0.2
    if kind < 0.45:  # the producer's keyed layout
        fields = [
            _name(rng, b"v", odd),
            _blob(rng, odd),
            _name(rng, b"k", odd),
            _blob(rng, odd),
            _name(rng, b"t", odd),
            _ts(rng) if rng.random() < odd * 3 else b"%d" % rng.randint(0, 10**13),
        ]
    elif kind < 0.8:  # keyless
        fields = [
            _name(rng, b"v", odd),
            _blob(rng, odd),
            _name(rng, b"t", odd),
            _ts(rng) if rng.random() < odd * 3 else b"%d" % rng.randint(0, 10**13),
        ]
    elif kind < 0.85:  # another order
        fields = [b"t", b"1700000000000", b"v", b"x"]
    elif kind < 0.9:  # headers, tombstone, count
        fields = [b"v", b"x", b"t", b"1", rng.choice([b"h", b"z", b"n"]), b"1"]
    elif kind < 0.95:  # other field counts
        fields = rng.choice([[], [b"v", b"x"], [b"v", b"x", b"k", b"y", b"t", b"1", b"h", b"{}"]])
    else:  # a field count that is not what follows, or not an int
        fields = [b"v", b"x", b"t", b"1"]
        nf = rng.choice([True, 4.0, "4", -1, 2**70, 5, 3, 8])
        return [eid, nf, *fields]
    return [eid, len(fields), *fields]


def random_flat(rng: random.Random) -> tuple[list[Any], list[int]]:
    """Entries as READ_SCRIPT's reply holds them (no stream header), and the
    index of each entry's id."""
    odd = rng.choice([0.0, 0.0, 0.002, 0.01, 0.05, 0.3])
    other = rng.choice([0.0, 0.0, 0.01, 0.05, 0.2])
    flat: list[Any] = []
    starts: list[int] = []
    for seq in range(1, rng.randint(1, 60)):
        starts.append(len(flat))
        flat += _entry(rng, seq, odd, other)
    if rng.random() < 0.1 and flat:  # cut short: the last entry runs off the end
        del flat[-rng.randint(1, min(4, len(flat))) :]
    return flat, starts


@needs_ext
def test_c_messages_equal_the_python_twin_on_random_replies() -> None:
    assert ext is not None
    rng = random.Random(20261121)
    plans: dict[TP, tuple[Any, Any]] = {}
    full = stopped = made = 0
    stop_kinds: set[str] = set()
    for _ in range(6000):
        tp = TP(rng.choice(["a", "topic-é", "x" * 40]), rng.randint(0, 9))
        if tp not in plans:
            t = fastpath.template(tp)
            plans[tp] = (
                ext.message_plan(t, fastpath.FIELDS),
                fastpath.message_plan_py(t),
            )
        c_plan, py_plan = plans[tp]
        flat, starts = random_flat(rng)
        i = rng.choice(starts) if starts and rng.random() < 0.9 else len(flat)
        n = rng.randint(0, len(starts) + 2)
        first = rng.choice([0, 1, rng.randint(0, 2**40), 2**63 - rng.randint(1, 70)])
        out_c: list[Any] = [None]  # appended to, never replaced
        out_py: list[Any] = [None]
        end_c = ext.messages(c_plan, flat, i, n, first, out_c)
        end_py = fastpath.messages_py(py_plan, flat, i, n, first, out_py)
        assert end_c == end_py, (flat, i, n, first)
        assert [state(m) for m in out_c[1:]] == [state(m) for m in out_py[1:]]
        assert [m.offset for m in out_c[1:]] == list(range(first, first + len(out_c) - 1))
        made += len(out_c) - 1
        entries_after = [s for s in starts if s >= i]
        if len(out_c) - 1 == min(n, len(entries_after)):
            full += 1
        else:
            stopped += 1
            stop_kinds.add(repr(flat[end_c + 1 : end_c + 3])[:12])
    # all three outcomes, on many kinds of entries
    assert made > 20_000 and full > 2000 and stopped > 2000 and len(stop_kinds) > 30


@needs_ext
def test_timestamps_are_pythons_division_bit_for_bit() -> None:
    assert ext is not None
    rng = random.Random(5)
    tp = TP("t", 0)
    plan = ext.message_plan(fastpath.template(tp), fastpath.FIELDS)
    raws = [b"0", b"1", b"999", b"1000", b"000000000000001", b"9" * 15, b"4503599627370497"[:15]]
    for digits in range(1, 16):
        raws += [str(rng.randrange(10 ** (digits - 1), 10**digits)).encode() for _ in range(300)]
    flat: list[Any] = []
    for r in raws:
        flat += [b"0-1", 4, b"v", b"x", b"t", r]
    out: list[Any] = []
    assert ext.messages(plan, flat, 0, len(raws), 0, out) == len(flat)
    assert [m.timestamp.hex() for m in out] == [(int(r) / 1000.0).hex() for r in raws]


@needs_ext
async def test_a_c_message_works_in_faust(consumer: Consumer) -> None:
    """The same life on a message made in C and one made by Faust's __init__."""
    assert ext is not None
    tp = TP("acks", 2)
    consumer.app.topics._acking_topics.add(tp.topic)  # type: ignore[attr-defined]
    flat = [b"0-8", 6, b"v", b"value", b"k", b"key", b"t", b"1700000000123"] * 2
    made: list[Any] = []
    ext.messages(ext.message_plan(fastpath.template(tp), fastpath.FIELDS), flat, 0, 1, 7, made)
    plan_py = fastpath.message_plan_py(fastpath.template(tp))
    fastpath.messages_py(plan_py, flat, 8, 1, 8, made)
    lives = []
    while made:
        m = made.pop(0)
        life: list[Any] = [repr(m), m.tracked, m.acked, m.refcount, m.generation_id]
        ref = weakref.ref(m)
        m.extra = 5  # an attribute of its own (the managed __dict__)
        life += [ref() is m, vars(m)]
        m.tracked = True
        consumer.track_message(m)
        life.append(m in consumer._unacked_messages)
        m.incref(3)
        life += [m.refcount, m.decref(), m.ack(consumer), m.refcount, m.acked]
        life += [m.ack(consumer), m.acked, m.offset in consumer._acked_index[tp]]
        life += [m in consumer._unacked_messages, m.ack(consumer)]
        lives.append(life)
        del m
        gc.collect()
        life.append(ref())
    assert consumer._acked[tp] == [7, 8]
    assert lives[0][0] == "<ConsumerMessage: TP(topic='acks', partition=2) offset=7>"
    assert lives[1][0] == "<ConsumerMessage: TP(topic='acks', partition=2) offset=8>"
    assert lives[0][1:] == lives[1][1:]
    assert lives[0][1:8] == [False, False, 0, None, True, {"extra": 5}, True]
    assert lives[0][8:] == [3, 2, False, 1, False, True, True, True, False, False, None]


@needs_ext
def test_c_messages_release_what_they_hold() -> None:
    assert ext is not None
    tp = TP("refs", 1)
    template = fastpath.template(tp)
    plan = ext.message_plan(template, fastpath.FIELDS)
    value, key, ts = b"v" * 50, b"k" * 7, b"1700000000999"
    flat = [b"0-1", 6, b"v", value, b"k", key, b"t", ts, b"0-2", 4, b"v", value, b"t", ts]
    watched = (value, key, ts, tp, tp.topic, template.tp)
    before = [sys.getrefcount(o) for o in watched]
    for _ in range(3000):
        out: list[Any] = []
        assert ext.messages(plan, flat, 0, 2, 10**12, out) == len(flat)
        assert (out[0].key, out[1].key, out[1].value) == (key, None, value)
        del out
    gc.collect()
    assert [sys.getrefcount(o) for o in watched] == before


@needs_ext
def test_message_plan_refuses_what_it_cannot_make_as_python_does() -> None:
    assert ext is not None
    tp = TP("p", 0)
    args = ("p", 0, 0, 0.0, 0, None, None, b"", None, 0, 0, tp)

    class OwnNew(ConsumerMessage):
        def __new__(cls, *a: Any, **k: Any) -> OwnNew:
            return super().__new__(cls)

    class OwnSetattr(ConsumerMessage):
        def __setattr__(self, name: str, value: Any) -> None:
            super().__setattr__(name, value)

    class Shadowed(ConsumerMessage):
        @property  # type: ignore[override]
        def offset(self) -> int:
            return 0

        @offset.setter
        def offset(self, value: int) -> None:
            pass

    class MoreSlots(ConsumerMessage):
        __slots__ = ("extra",)

    class Plain:
        __slots__ = ("a",)

    with_attr = ConsumerMessage(*args)
    with_attr.note = "x"
    mutable = ConsumerMessage(*args)
    mutable.checksum = [1]
    for bad, why in (
        (OwnNew(*args), "own __new__"),
        (OwnSetattr(*args), "own __setattr__"),
        (Shadowed(*args), "hidden by another attribute: offset"),
        (with_attr, "instance attributes"),
        (mutable, "not immutable: checksum"),
        (Plain(), "no slot: offset"),
        (object(), "no slot: offset"),
        (5, "own __new__"),
    ):
        with pytest.raises(TypeError, match=why):
            ext.message_plan(bad, fastpath.FIELDS)
    for fields in ((b"v", b"k"), (b"v", "k", b"t"), [b"v", b"k", b"t"]):
        with pytest.raises(TypeError):
            ext.message_plan(fastpath.template(tp), fields)
    # a subclass with more slots is fine: they are copied from the template
    more = MoreSlots(*args)
    more.extra = "same"
    plan = ext.message_plan(more, fastpath.FIELDS)
    out: list[Any] = []
    ext.messages(plan, [b"0-1", 4, b"v", b"x", b"t", b"5"], 0, 1, 0, out)
    assert type(out[0]) is MoreSlots and out[0].extra == "same" and out[0].value == b"x"
    # a type changed after its plan was made: C makes none (Python's code makes them)
    flat = [b"0-1", 4, b"v", b"x", b"t", b"5"]
    plan = ext.message_plan(MoreSlots(*args), fastpath.FIELDS)
    assert ext.messages(plan, flat, 0, 1, 0, []) == len(flat)
    MoreSlots.__init__ = ConsumerMessage.__init__  # type: ignore[method-assign]
    out = []
    assert ext.messages(plan, flat, 0, 1, 0, out) == 0 and out == []
    with pytest.raises(ValueError):
        ext.messages(object(), [], 0, 0, 0, [])
    with pytest.raises(ValueError):  # another function's plan
        ext.messages(ext.compile_plan((True, frozenset(), ())), [], 0, 0, 0, [])


def test_a_type_the_c_twin_refuses_gets_the_python_twin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class OwnSetattr(ConsumerMessage):
        def __setattr__(self, name: str, value: Any) -> None:
            super().__setattr__(name, value)

    tp = TP("refused", 0)
    for _ in range(2):
        run, plan = fastpath.fast_run(tp, OwnSetattr)
        assert run is fastpath.messages_py
        out: list[Any] = []
        assert run(plan, [b"0-1", 4, b"v", b"x", b"t", b"5"], 0, 1, 0, out) == 6
        assert type(out[0]) is OwnSetattr and out[0].value == b"x"
    refusals = [r for r in caplog.records if "made in Python" in r.getMessage()]
    assert len(refusals) == (1 if ext is not None else 0)
    assert fastpath.fast_run(tp)[0] is (fastpath.messages_py if ext is None else ext.messages)


# ---- a real fetch --------------------------------------------------------------


@pytest.fixture
async def consumer(redis_url: str, unique: str) -> AsyncIterator[Consumer]:
    async with standalone_consumer(redis_url, unique) as made:
        yield made


def _entries(rng: random.Random, count: int) -> list[dict[bytes, bytes]]:
    out: list[dict[bytes, bytes]] = []
    for o in range(count):
        ts = b"%d" % (1_700_000_000_000 + rng.randint(0, 10**9))
        r = rng.random()
        if r < 0.55:
            d = {b"v": b"v%d" % o, b"k": b"k%d" % o, b"t": ts}
        elif r < 0.8:
            d = {b"v": b"v%d" % o, b"t": ts}
        else:
            d = rng.choice(
                [
                    {b"v": b"v%d" % o, b"k": b"k", b"t": ts, b"h": b'{"a": "b", "n": 1}'},
                    {b"v": b"", b"k": b"k", b"t": ts, b"z": b"1"},  # tombstone
                    {b"t": ts, b"v": b"v%d" % o},  # another order
                    {b"v": b"v%d" % o, b"t": b"12" + b"0" * 15},  # 17 digits: Python's path
                    {b"v": b"v%d" % o, b"t": b"-5"},  # accepted by the general path
                    {b"k": b"no value", b"t": ts},  # dead letter
                    {b"v": b"x", b"t": b"soon"},  # dead letter
                    {b"v": b"x", b"t": ts, b"h": b"[1]"},  # dead letter: headers not an object
                ]
            )
        out.append(d)
    return out


def _expected(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> tuple[list[Any], list[int]]:
    """What the wire format (schemas/wire.py) says each entry is: (offset, key,
    value, timestamp, headers) of a message, or its offset as a dead letter."""
    messages: list[Any] = []
    dead: list[int] = []
    for eid, d in entries:
        offset = int(eid.split(b"-")[1]) - 1
        try:
            if b"v" not in d:
                raise ValueError
            ts = int(d[b"t"]) / 1000.0
            h = orjson.loads(d[b"h"]) if b"h" in d else None
            headers = None if h is None else [(k, str(v).encode()) for k, v in h.items()]
        except (ValueError, AttributeError):
            dead.append(offset)
            continue
        value = None if b"z" in d else d[b"v"]
        messages.append((offset, d.get(b"k"), value, ts, headers))
    return messages, dead


async def _fetch_everything(
    c: Consumer, tp: TP, position: int, end: int
) -> tuple[list[Any], list[int], int, Any, int]:
    """All messages from ``position`` to ``end``, fetch by fetch (100 entries
    each), and what the consumer's bookkeeping says after; the last item is
    how many messages the fast path made."""
    run, plan = fastpath.fast_run(tp)
    counted = 0

    def counting(plan: Any, flat: list[Any], i: int, n: int, first: int, out: list[Any]) -> int:
        nonlocal counted
        before = len(out)
        i = run(plan, flat, i, n, first, out)
        counted += len(out) - before
        return i

    c._message_plans = {tp: (counting, plan)}
    c._assigned = frozenset({tp})
    c._set_position(tp, position)
    c._entry_bytes[tp] = 10  # small entries: COUNT is the fetch total
    c._fetch_total = 100
    c.app.topics._acking_topics.add(tp.topic)  # type: ignore[attr-defined]
    got: list[Any] = []
    for _ in range(100):
        batch = (await c._getmany({tp}, 0.01, as_messages=True)).get(tp, [])
        got += batch
        if await c.position(tp) >= end:
            break
    return got, list(c._acked[tp]), c._highwaters[tp], run, counted


@pytest.mark.parametrize("holes", [False, True])
async def test_a_fetch_gives_the_same_messages_with_c_and_with_the_twin(
    redis_url: str,
    aredis: aioredis.Redis,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    holes: bool,
) -> None:
    rng = random.Random(11 + holes)
    key = names.stream_key(unique, 0)
    for d in _entries(rng, 1500):
        await aredis.xadd(key, d, id="0-*")  # type: ignore[arg-type]
    if holes:  # single, runs of them, at a fetch's start, the last one; fetches without
        gone = sorted({*rng.sample(range(1, 1500), 4), 101, 102, 103, 201, *range(650, 656), 1500})
        await aredis.xdel(key, *(b"0-%d" % s for s in gone))
    stored: Any = await aredis.xrange(key)
    end = int(stored[-1][0].split(b"-")[1])
    want, want_dead = _expected(stored)
    assert len(want) > 700 and len(want_dead) > 50
    tp = TP(unique, 0)
    dl_key = names.dead_letter_key(unique)
    runs: dict[str, Any] = {}
    for path in ("c", "twin"):
        if path == "twin":
            monkeypatch.setattr(fastpath, "_native", None)
        elif ext is None:
            continue
        async with standalone_consumer(redis_url, f"{unique}-{path}") as c:
            got, acked, highwater, run, counted = await _fetch_everything(c, tp, 0, end)
            runs[path] = (
                [state(m) for m in got],
                acked,
                highwater,
                await c.position(tp),
                [f for _, f in await aredis.xrange(dl_key)],
            )
            assert (run is fastpath.messages_py) == (path == "twin")
            # the fast path made most messages (with holes: in the fetches without one)
            assert counted > (300 if holes else 1000), counted
            await aredis.delete(dl_key)
        assert [(m.offset, m.key, m.value, m.timestamp, m.headers) for m in got] == want
        assert sorted(acked) == want_dead
        assert [int(f[b"id"].split(b"-")[1]) - 1 for f in runs[path][4]] == want_dead
        assert runs[path][2:4] == (end, end)
    if ext is not None:
        assert runs["c"] == runs["twin"]


async def test_offsets_past_int64_take_pythons_path(
    consumer: Consumer, aredis: aioredis.Redis, unique: str
) -> None:
    # Stream ids go up to 0-(2**64 - 1); offsets past 2**63 - 1 do not fit in C.
    key = names.stream_key(unique, 0)
    first = 2**63 - 3
    for s in range(first, first + 5):
        await aredis.xadd(key, {b"v": b"%d" % s, b"t": b"5"}, id=f"0-{s}")
    tp = TP(unique, 0)
    consumer._assigned = frozenset({tp})
    consumer._set_position(tp, first - 1)
    consumer._entry_bytes[tp] = 3
    got = (await consumer._getmany({tp}, 0.05, as_messages=True))[tp]
    assert [(m.offset, m.value) for m in got] == [
        (s - 1, b"%d" % s) for s in range(first, first + 5)
    ]
    assert all(m.timestamp == 0.005 for m in got)


def test_every_run_stops_where_the_reply_ends() -> None:
    """Both paths on the same reply: no index past the end, whatever n says."""
    flat = [b"0-1", 4, b"v", b"x", b"t", b"1"]
    runs: list[Callable[..., int]] = [fastpath.messages_py]
    plans = [fastpath.message_plan_py(fastpath.template(TP("e", 0)))]
    if ext is not None:
        runs.append(ext.messages)
        plans.append(ext.message_plan(fastpath.template(TP("e", 0)), fastpath.FIELDS))
    for run, plan in zip(runs, plans, strict=True):
        out: list[Any] = []
        assert run(plan, flat, 0, 5, 0, out) == len(flat) and len(out) == 1
        assert run(plan, flat, len(flat), 5, 0, out) == len(flat) and len(out) == 1
        assert run(plan, flat, 0, 0, 0, out) == 0 and len(out) == 1
        with pytest.raises(ValueError):
            run(plan, flat, -1, 1, 0, out)
