"""The C hot path (``tierstream/_native.c``) gives exactly what its Python twins give.

Validation: every mutant of ``test_fastcheck`` (wrong types, bounds, NaN,
nulls, missing and unknown keys, in the event and in its tier chain) gets the
reference validator's verdict from ``check_batch``; so do mutants of the
nested WindowSummary record (records, maps, lists, objects). Grouping and
HDR recording equal the pure-Python twins on the same events.
"""

from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from tierstream.processors.aggregate.batch import group_batch, group_batch_py
from tierstream.processors.aggregate.latency import HIGHEST_US, LatencyHistogram
from tierstream.schemas.access import ACCESS_RECORD
from tierstream.schemas.fastcheck import native_plan
from tierstream.schemas.summary import SUMMARY_RECORD, validate_summary

from tierstream import native

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "processors"))
from aggregate_truth import make_events
from test_fastcheck import mutants, nested_mutants, reference_ok

ext = native.ext


def test_the_native_module_is_built() -> None:
    # scripts/setup.sh (pip install -e .) compiles it; None means no C compiler was
    # found, or TIERSTREAM_NATIVE=0 is set: the Python twins then run, at half speed.
    assert ext is not None, native.describe()
    # and it is this source's build: an older one lacks the newer functions (the
    # redis:// fetch would quietly take the Python twin of messages())
    functions = "compile_plan check_batch group scan hist_record heavy_add heavy_texts"
    for name in (*functions.split(), "heavy_compact", "message_plan", "messages"):
        assert callable(getattr(ext, name, None)), name


needs_ext = pytest.mark.skipif(ext is None, reason=native.describe())


@needs_ext
def test_native_check_agrees_with_the_reference_on_every_mutant() -> None:
    assert ext is not None
    plan = ext.compile_plan(native_plan(ACCESS_RECORD))
    objs: list[Any] = []
    for ev in make_events(60, seed=11):
        objs.extend(mutants(ev))
    bad = set(ext.check_batch(plan, objs, 1))
    verdicts = [i not in bad for i in range(len(objs))]
    expect = [reference_ok(m) for m in objs]
    wrong = [objs[i] for i, (a, b) in enumerate(zip(verdicts, expect, strict=True)) if a != b]
    assert not wrong, wrong[:3]
    assert len(objs) > 10_000 and 0 < sum(expect) < len(objs)


@needs_ext
def test_native_check_without_the_tail_is_the_field_check() -> None:
    assert ext is not None
    plan = ext.compile_plan(native_plan(ACCESS_RECORD))
    ev = make_events(1, seed=3)[0]
    # cache_hit contradicts the chain: only the cross-field rules (tail 1) see it
    m = {**ev, "cache_hit": not ev["cache_hit"]} if ev["operation"] != "put" else None
    objs = [ev] + ([m] if m else [])
    assert ext.check_batch(plan, objs, 0) == []
    if m:
        assert ext.check_batch(plan, objs, 1) == [1]


@needs_ext
@pytest.mark.parametrize("seed", [1, 2])
def test_native_check_of_nested_records_agrees(seed: int) -> None:
    from tierstream.processors.aggregate import WindowAggregate

    assert ext is not None
    agg = WindowAggregate(1_700_000_000, 1_700_000_060)
    agg.add_batch(make_events(300, seed=seed))
    summary = agg.summary()
    plan = ext.compile_plan(native_plan(SUMMARY_RECORD))
    objs = [summary, *nested_mutants(summary, seed, 3000)]
    bad = set(ext.check_batch(plan, objs, 0))
    for i, m in enumerate(objs):
        assert (i not in bad) == reference_ok(m, validate_summary), m


@needs_ext
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_native_group_equals_the_python_twin(seed: int) -> None:
    events = make_events(3000, seed=seed)
    # redacted queries, unicode text, int latencies: all must group the same
    rng = random.Random(seed)
    for ev in events[::7]:
        ev["query"] = None
    for ev in events[1::11]:
        ev["query"] = "é " + str(ev["query"])
    for ev in events[2::13]:
        for a in ev["tier_latencies"].values():
            a["latency_ms"] = int(a["latency_ms"])
    rng.shuffle(events)
    a, b = group_batch(events), group_batch_py(events)
    assert a == b
    assert a.events == len(events) and a.queries and a.texts


@needs_ext
def test_native_group_refuses_what_is_not_an_event() -> None:
    ev = make_events(1, seed=2)[0]
    for broken in ({**ev, "tier_latencies": []}, {k: v for k, v in ev.items() if k != "agent_id"}):
        with pytest.raises((TypeError, KeyError)):
            group_batch([broken])


@needs_ext
def test_native_recording_equals_the_python_twin() -> None:
    rng = random.Random(5)
    values = [int(rng.lognormvariate(8, 3)) for _ in range(20_000)]
    values += [0, 1, 2047, 2048, 2049, HIGHEST_US, HIGHEST_US + 1, -5, 2**70, -(2**70)]
    a, b = LatencyHistogram(), LatencyHistogram()
    for chunk in range(0, len(values), 999):
        a.record_us(values[chunk : chunk + 999])
        b.record_us_py(values[chunk : chunk + 999])
    assert a.bucket_counts() == b.bucket_counts()
    assert (a.count, a.sum_us, a.hist.min_value, a.hist.max_value) == (
        b.count,
        b.sum_us,
        b.hist.min_value,
        b.hist.max_value,
    )
    assert a.result() == b.result()


def _reference_entry(value: bytes) -> tuple[int, float, float, Any] | None:
    """What the reference path makes of a whole entry: None if any event is bad."""
    from tierstream.processors.pipeline.decode import decode_entry_events

    events, bad = decode_entry_events(value)
    if bad:
        return None
    if not events:
        return 0, 0.0, 0.0, group_batch_py([])
    tss = [e["ts"] for e in events]
    return len(events), min(tss), max(tss), group_batch_py(events)


def _scan(value: bytes) -> tuple[int, float, float, Any] | None:
    from collections import Counter

    from tierstream.processors.aggregate.batch import Batch
    from tierstream.schemas.access import NATIVE_PLAN

    assert ext is not None
    r = ext.scan(NATIVE_PLAN, value)
    if r is None:
        return None
    n, lo, hi, ev, att, tier_us, total_us, queries, texts = r
    tier_us = {t: list(v) for t, v in tier_us.items()}
    return n, lo, hi, Batch(n, Counter(ev), Counter(att), tier_us, list(total_us), queries, texts)


@needs_ext
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scan_of_valid_entries_equals_the_reference_path(seed: int) -> None:
    import orjson

    events = make_events(2000, seed=seed)
    for ev in events[::7]:
        ev["query"] = None
    for ev in events[1::11]:  # escapes and non-ASCII text in strings
        ev["query"] = f'say "hi"\\ \u00e9\u4e2d\U0001f600\n\t{ev["query"]}'
        ev["agent_id"] = "agent \u00e9"
    for ev in events[2::13]:
        for a in ev["tier_latencies"].values():
            a["latency_ms"] = int(a["latency_ms"])
    for chunk in range(0, len(events), 250):
        part = events[chunk : chunk + 250]
        for value in (orjson.dumps(part), orjson.dumps(part, option=orjson.OPT_INDENT_2)):
            got, want = _scan(value), _reference_entry(value)
            assert got is not None and want is not None
            assert got == want
    # what Python's json module writes by default: every non-ASCII character as
    # a \u escape, emoji as surrogate pairs
    for chunk in range(0, 600, 200):
        value = json.dumps(events[chunk : chunk + 200]).encode()
        assert b"\\ud83d\\ude00" in value or chunk
        got, want = _scan(value), _reference_entry(value)
        assert got is not None and got == want
    one = orjson.dumps(events[0])
    assert _scan(one) == _reference_entry(one)
    assert _scan(b"[]") == (0, 0.0, 0.0, group_batch_py([]))


@needs_ext
def test_scan_vouches_only_for_entries_the_reference_accepts_whole() -> None:
    import orjson

    rng = random.Random(9)
    base = make_events(40, seed=4)
    accepted = declined = 0
    values: list[bytes] = []
    for ev in base:
        for m in mutants(ev):
            others = rng.sample(base, 3)
            try:
                values.append(orjson.dumps([*others, m]))
            except TypeError:  # 2**70, NaN: the json module writes what orjson refuses
                values.append(json.dumps([*others, m]).encode())
    raw = orjson.dumps(base[:3])
    # JSON-level oddities: duplicate keys, escapes, numbers, trailing data, bad UTF-8
    values += [
        raw.replace(b'"ts":', b'"ts":1.0e9,"ts":', 1),
        raw.replace(b'"agent_id":"', b'"agent_id":"\\ud83d\\ude00', 1),
        raw.replace(b'"agent_id":"', b'"agent_id":"\\ud83d', 1),
        raw.replace(b'"agent_id":"', b'"agent_id":"\\ude00', 1),
        raw.replace(b'"agent_id":"', b'"agent_id":"\\ud83d\\u0041', 1),
        raw.replace(b'"agent_id":"', b'"agent_id":"\\ud83d\\ud83d', 1),
        raw.replace(b'"agent_id":"', b'"agent_id":"\\u00e9', 1),
        raw.replace(b'"agent_id":"', b'"agent_id":"\xc3', 1),
        raw.replace(b'"agent_id":"', b'"agent_id":"\xed\xa0\x80', 1),
        raw.replace(b'"result_count":', b'"result_count":1e0,"x":', 1),
        raw.replace(b'"result_count":', b'"result_count":-0,"x":', 1),
        raw.replace(b'"schema_version":1', b'"schema_version":1.0', 1),
        raw.replace(b'"schema_version":1', b'"schema_version":01', 1),
        raw + b" ",
        raw + b"x",
        raw[:-1],
        raw[:-1] + b",]",
        b" " + raw,
        b'[{"ts":1}]',
        b"{}",
        b"[1]",
        b"[[]]",
        b"null",
        b"",
    ]
    for value in values:
        try:
            want = _reference_entry(value)
        except Exception:
            want = None
        got = _scan(value)
        if got is None:
            declined += 1
            continue
        accepted += 1
        assert got == want, value[:300]
    assert accepted > 100 and declined > 1000


@needs_ext
def test_scan_parses_numbers_exactly_as_orjson() -> None:
    import orjson

    rng = random.Random(17)
    ev = make_events(1, seed=6)[0]
    texts: list[str] = []
    for _ in range(4000):
        x = rng.uniform(1e9, 1e10)
        texts += [repr(x), f"{x:.3f}", f"{x:.6f}", f"{x:.9e}", f"{x:.15g}", f"{x:.17g}"]
    texts += ["1e9", "1E9", "1000000000", "1000000000.0", "1.0e+9", "9999999999.999999"]
    texts += ["10000000000", "1700000000.1", "1700000000.000000000000000001"]
    value = orjson.dumps(ev)
    head, _, tail = value.partition(b'"ts":')
    tail = tail[tail.index(b",") :]
    checked = 0
    for text in texts:
        raw = head + b'"ts":' + text.encode() + tail
        want = orjson.loads(raw)["ts"]
        got = _scan(raw)
        if got is None:
            assert not (1e9 <= want <= 1e10)
            continue
        assert got[1] == got[2] == want, text
        checked += 1
    assert checked > 20_000


@needs_ext
def test_scan_with_many_agents_and_tiers_equals_the_reference_path() -> None:
    # past the scanner's name cache (64) and its key table (768 keys, then flushed)
    import orjson

    events = make_events(6000, seed=8)
    rng = random.Random(8)
    for i, ev in enumerate(events):
        ev["agent_id"] = f"agent-{i % 300}"
        if rng.random() < 0.3:
            chain = ev["tier_latencies"]
            renamed = {f"{t}-{i % 20}": a for t, a in chain.items()}
            served = ev["tier_accessed"]
            ev["tier_latencies"] = renamed
            ev["tier_accessed"] = None if served is None else f"{served}-{i % 20}"
    value = orjson.dumps(events)
    got, want = _scan(value), _reference_entry(value)
    assert got is not None and got == want
    assert len(got[3].event_keys) > 768


@needs_ext
def test_native_heavy_add_equals_the_python_twin() -> None:
    from tierstream.processors.aggregate.heavy import HeavyHitters

    assert ext is not None
    a, b = HeavyHitters(64), HeavyHitters(64)
    for seed in range(6):
        batch = group_batch_py(make_events(700, seed=seed, n_queries=400))
        na = ext.heavy_add(a.entries, batch.queries)
        nb = b._add_queries_py(batch.queries)
        assert na == nb == sum(c for c, _ in batch.queries.values())
        assert a.entries == b.entries
    # whole adds, with compactions (capacity 16) and texts, against the twins
    c, py = HeavyHitters(16), HeavyHitters(16)
    for seed in range(8):
        batch = group_batch_py(make_events(400, seed=seed, n_queries=300))
        c.add_grouped(batch)
        py.n += py._add_queries_py(batch.queries)
        py._merge_texts_py(batch.texts)
        if len(py.entries) > 2 * py.capacity:
            py._compact_py()
        assert (c.entries, c.texts, c.decrement, c.n) == (py.entries, py.texts, py.decrement, py.n)
        assert list(c.entries) == list(py.entries) and list(c.texts) == list(py.texts)
    assert c.decrement > 0 and c.texts
    # the batch's own lists are never changed (entries hold copies)
    batch = group_batch_py(make_events(50, seed=1))
    before = copy.deepcopy(batch.queries)
    ext.heavy_add(a.entries, batch.queries)
    ext.heavy_add(a.entries, batch.queries)
    assert batch.queries == before


@pytest.mark.parametrize("native_on", [True, False])
def test_feed_entry_gives_the_same_result_on_both_paths(
    native_on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Far-future entries are dead-lettered and replay's time range is applied,
    whether the scan or the reference path takes the entry."""
    import orjson
    from tierstream.processors.pipeline import decode
    from tierstream.processors.pipeline.config import PipelineConfig
    from tierstream.processors.pipeline.partition import PartitionWindows

    if not native_on:
        monkeypatch.setattr(decode, "NATIVE_PLAN", None)
    evs = make_events(20, seed=3)
    t0 = 1_700_000_040.0  # a window start: all 20 events in one window
    for i, ev in enumerate(evs):
        ev["ts"] = t0 + i
    value = orjson.dumps(evs)
    pw = PartitionWindows(0, PipelineConfig())
    _, bad, n = decode.feed_entry(pw, 0, value, t0 - 1000, 300)
    assert n == 0 and len(bad) == 20 and all("ahead of its entry" in b.reason for b in bad)
    _, bad, n = decode.feed_entry(pw, 1, value, t0 + 60, 300)
    assert n == 20 and not bad and pw.windows[int(t0 // 60) * 60].events == 20
    _, bad, n = decode.feed_entry(pw, 2, value, None, None, keep=(t0, t0 + 10))
    assert n == 10 and not bad and pw.windows[int(t0 // 60) * 60].events == 30
    _, bad, n = decode.feed_entry(pw, 3, value, None, None, keep=(t0 - 5, t0 + 100))
    assert n == 20 and not bad and pw.windows[int(t0 // 60) * 60].events == 50
