"""The pipeline's pure state machines: PartitionWindows and WindowMerger (no I/O).

Aggregates are checked against plain counting over the same events.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tierstream.processors.pipeline import (
    HOPPING,
    TUMBLING,
    Partial,
    PartitionWindows,
    PipelineConfig,
    WindowMerger,
    decode_entry_events,
)
from tierstream.schemas.summary import validate_summary

T = 1_700_000_040  # a multiple of 60, 20, 4 and 2
CFG = PipelineConfig(
    window_s=4,
    hop_size_s=8,
    hop_step_s=4,
    grace_s=1.0,
    lateness_s=1.0,
    merge_timeout_s=10.0,
    partitions=2,
)


def ev(ts: float, q: str = "q1", op: str = "get", hit: bool = True, lat: float = 1.5) -> dict:
    served = "redis" if hit else None
    return {
        "schema_version": 1,
        "event_type": "memory_tier_access",
        "event_id": f"e{ts}{q}",
        "ts": ts,
        "agent_id": "a1",
        "operation": op,
        "query": q,
        "query_fingerprint": q,
        "tier_accessed": served,
        "tier_latencies": {"redis": {"latency_ms": lat, "hit": hit}},
        "total_latency_ms": lat,
        "cache_hit": op != "put" and hit,
        "result_count": 1 if hit else 0,
    }


def closed(partials: list) -> list[tuple[int, int, int]]:
    """(start, events, late) of the windows in a list of Partials (progress skipped)."""
    return [(p.window_start, p.aggregate.events, p.aggregate.late) for p in partials if p.aggregate]


# --- PartitionWindows ----------------------------------------------------------------


def test_base_window_is_gcd_of_the_views() -> None:
    assert PipelineConfig().base_s == 60
    assert PipelineConfig(window_s=60, hop_size_s=300, hop_step_s=90).base_s == 30
    with pytest.raises(ValueError):
        PipelineConfig(window_s=0)
    with pytest.raises(ValueError):
        PipelineConfig(hop_size_s=60, hop_step_s=120)


def test_windows_close_by_event_time_after_lateness() -> None:
    pw = PartitionWindows(0, CFG)  # base 4 s, lateness 1 s
    # The first entry moves event time from nothing to T: progress only.
    assert [p.closed_through for p in pw.add(0, [ev(T + 0.5), ev(T + 3.9)])] == [T]
    assert pw.add(1, [ev(T + 4.5)]) == []  # T+4.5 < end (T+4) + lateness
    out = pw.add(2, [ev(T + 5.0), ev(T + 5.5)])
    assert closed(out) == [(T, 2, 0)]
    assert out[-1].closed_through == T + 4
    assert pw.closed_through == T + 4
    assert pw.mark == 1  # first offset of the oldest open window [T+4, T+8)
    # A jump in event time closes everything before it and reports progress beyond.
    out = pw.add(3, [ev(T + 30)])
    assert closed(out) == [(T + 4, 3, 0)]
    assert [p.closed_through for p in out] == [T + 8, T + 28]
    assert out[-1].aggregate is None


def test_wall_clock_closes_only_when_caught_up() -> None:
    pw = PartitionWindows(0, CFG)
    pw.add(0, [ev(T + 1)])
    assert pw.close_by_clock(T + 100, caught_up=False) == []
    assert pw.windows, "a partition with a backlog must not close by wall clock"
    assert pw.close_by_clock(T + 4.5, caught_up=True) == []  # within grace (1 s)
    out = pw.close_by_clock(T + 5.0, caught_up=True)
    assert closed(out) == [(T, 1, 0)]
    assert pw.closed_through == T + 4


def test_idle_partition_reports_progress_by_wall_clock() -> None:
    pw = PartitionWindows(1, CFG)
    out = pw.close_by_clock(T + 9.5, caught_up=True, position=0)
    assert [(p.aggregate, p.closed_through) for p in out] == [(None, T + 8)]
    assert pw.state()["mark"] == 0


def test_late_events_are_counted_once_in_the_oldest_window_not_closed() -> None:
    pw = PartitionWindows(0, CFG)
    pw.add(0, [ev(T + 1)])
    assert closed(pw.add(1, [ev(T + 9.1)])) == [(T, 1, 0)]  # closes through T+8
    # Two late events (window [T, T+4) and [T+4, T+8) are closed) and one on time.
    assert closed(pw.add(2, [ev(T + 2), ev(T + 6), ev(T + 9.5)])) == []
    out = pw.close_by_clock(T + 20, caught_up=True)
    assert closed(out) == [(T + 8, 2, 2)]
    s = out[0].aggregate.summary()
    assert (s["events"], s["late_events"], s["reads"]) == (2, 2, 2)


def test_duplicates_below_the_next_offset_are_ignored() -> None:
    pw = PartitionWindows(0, CFG)
    pw.add(5, [ev(T + 1)])
    pw.add(5, [ev(T + 1)])
    pw.add(3, [ev(T + 1)])
    assert pw.windows[T].events == 1
    assert pw.next_offset == 6


def random_entries(rng: random.Random, n: int, start: float) -> list[list[dict]]:
    """Entries of 1-6 events, time moving forward with jitter, some late stragglers."""
    out, now = [], start
    for _ in range(n):
        now += rng.random() * 0.8
        batch = []
        for _ in range(rng.randint(1, 6)):
            ts = now - rng.random() * 1.5
            if rng.random() < 0.05:
                ts -= 6  # a straggler: often late
            batch.append(ev(ts, q=f"q{rng.randrange(7)}", hit=rng.random() < 0.7))
        out.append(batch)
    return out


def run_with_crash(
    entries: list[list[dict]], crash_at: int, sent_unsaved: bool, seed: int
) -> list[dict[str, Any]]:
    """Feed ``entries`` (with wall-clock closes now and then) as the live app does: send
    partials, then persist the state. Crash before entry ``crash_at`` (``sent_unsaved``:
    after the last partials were sent but before their state was saved), restore and
    re-feed from the mark. Returns every partial message sent, in order."""
    rng = random.Random(seed)
    sent: list[dict[str, Any]] = []
    saved: dict[str, Any] | None = None
    pw = PartitionWindows(0, CFG)
    clock_at = {i for i in range(len(entries)) if rng.random() < 0.1}

    def step(i: int, save: bool = True) -> None:
        nonlocal saved
        out = pw.add(i, entries[i])
        if i in clock_at:
            now = max(e["ts"] for e in entries[i]) + 1.5
            out += pw.close_by_clock(now, caught_up=True)
        sent.extend(p.to_message() for p in out)
        if pw.changed and save:
            saved = pw.state()

    for i in range(crash_at):
        step(i, save=not (sent_unsaved and i == crash_at - 1))
    pw = PartitionWindows.restore(0, CFG, saved)
    start = pw.next_offset or 0
    for i in range(start, len(entries)):
        step(i)
    sent.extend(p.to_message() for p in pw.close_all())
    return sent


@pytest.mark.parametrize("seed", range(12))
def test_restart_from_the_mark_loses_nothing_and_counts_nothing_twice(seed: int) -> None:
    rng = random.Random(seed)
    entries = random_entries(rng, 120, T)
    baseline = run_with_crash(entries, len(entries), False, seed)
    crash_at = rng.randrange(1, len(entries))
    crashed = run_with_crash(entries, crash_at, seed % 2 == 0, seed)

    def merged(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        m = WindowMerger(PipelineConfig(**{**CFG.__dict__, "partitions": 1}))
        out: list[dict[str, Any]] = []
        for msg in msgs:
            out.extend(m.add(msg, 0.0))
        out.extend(m.flush())
        latest: dict[tuple[str, float], dict[str, Any]] = {}
        for s in out:
            latest[(s["view"], s["window_start"])] = s
        return [latest[k] for k in sorted(latest)]

    want = merged(baseline)
    got = merged(crashed)
    strip = lambda s: {k: v for k, v in s.items() if k != "revision"}  # noqa: E731
    assert [strip(s) for s in got] == [strip(s) for s in want]
    # Every event is either aggregated or counted late, exactly once.
    tumbling = [s for s in want if s["view"] == TUMBLING]
    total = sum(len(e) for e in entries)
    assert sum(s["events"] + s["late_events"] for s in tumbling) == total
    assert any(s["late_events"] for s in tumbling), "the seeded stream should have late events"


# --- WindowMerger ---------------------------------------------------------------------


def partial_msg(p: int, start: int, events: list[dict], ct: int | None = None) -> dict:
    pw = PartitionWindows(p, CFG)
    pw.add(0, events)
    out = pw.close_all(ct)
    assert out[0].window_start == start
    msg = out[0].to_message()
    msg["closed_through"] = ct if ct is not None else start + CFG.base_s
    return msg


def test_merger_waits_for_every_partition_then_merges_in_order() -> None:
    m = WindowMerger(CFG)
    a = [ev(T + 1, "x"), ev(T + 2, "y", hit=False)]
    b = [ev(T + 3, "x", lat=9.0)]
    assert m.add(partial_msg(0, T, a), 0.0) == []  # partition 1 has not reported
    out = m.add(partial_msg(1, T, b), 0.0)
    tumbling = [s for s in out if s["view"] == TUMBLING]
    assert len(tumbling) == 1
    s = validate_summary(tumbling[0])
    assert (s["window_start"], s["window_end"], s["window_s"]) == (T, T + 4, 4)
    assert (s["events"], s["reads"], s["hits"], s["full_misses"]) == (3, 3, 2, 1)
    assert s["complete"] is True and s["revision"] == 0 and s["step_s"] == 4
    assert {q["fingerprint"]: q["count"] for q in s["hot_queries"]} == {"x": 2, "y": 1}
    assert s["latency"]["max_ms"] == pytest.approx(9.0, rel=1 / 1024)


def test_progress_of_an_idle_partition_releases_windows() -> None:
    m = WindowMerger(CFG)
    assert m.add(partial_msg(0, T, [ev(T + 1)]), 0.0) == []
    out = m.add(
        {
            "partition": 1,
            "window_start": None,
            "window_end": None,
            "closed_through": T + 4,
            "partial": None,
        },
        0.0,
    )
    assert [(s["view"], s["window_start"]) for s in out] == [(HOPPING, T - 4), (TUMBLING, T)]
    assert out[0]["events"] == 1 and out[0]["complete"] is True


def test_merge_timeout_closes_a_window_a_partition_never_reports() -> None:
    m = WindowMerger(CFG)
    assert m.add(partial_msg(0, T, [ev(T + 1)]), 100.0) == []
    assert m.tick(109.9) == []
    out = [s for s in m.tick(110.0) if s["view"] == TUMBLING]
    assert [(s["events"], s["complete"]) for s in out] == [(1, False)]
    # The missing partition's partial arrives later: a revision, now complete.
    out = m.add(partial_msg(1, T, [ev(T + 2), ev(T + 3)]), 111.0)
    assert [(s["view"], s["events"], s["revision"], s["complete"]) for s in out] == [
        (HOPPING, 3, 1, True),
        (TUMBLING, 3, 1, True),
    ]


def test_resent_partials_replace_and_never_count_twice() -> None:
    m = WindowMerger(CFG)
    first = partial_msg(0, T, [ev(T + 1)])
    m.add(first, 0.0)
    m.add(first, 0.0)  # redelivered before the merge: replaced, not added
    out = m.add(partial_msg(1, T, [ev(T + 2)]), 0.0)
    assert [s["events"] for s in out] == [2, 2]  # the hopping and the tumbling view
    assert m.add(first, 0.0) == [], "an identical partial after the merge is ignored"
    changed = partial_msg(0, T, [ev(T + 1), ev(T + 1.5)])
    out = m.add(changed, 0.0)
    assert [(s["view"], s["events"], s["revision"]) for s in out] == [
        (HOPPING, 3, 1),
        (TUMBLING, 3, 1),
    ]


def test_hopping_windows_are_assembled_from_base_windows() -> None:
    # window 4 s, hopping 8 s every 4 s: base 4 s.
    rng = random.Random(3)
    events = [
        ev(T + rng.random() * 16, q=f"q{rng.randrange(3)}", hit=rng.random() < 0.5)
        for _ in range(200)
    ]
    m = WindowMerger(CFG)
    out: list[dict] = []
    for p in (0, 1):
        mine = [e for i, e in enumerate(events) if i % 2 == p]
        for start in range(T, T + 16, 4):
            evs = [e for e in mine if start <= e["ts"] < start + 4]
            if evs:
                out += m.add(partial_msg(p, start, evs, ct=start + 4), 0.0)
    out += m.flush()
    hopping = {s["window_start"]: s for s in out if s["view"] == HOPPING}
    tumbling = {s["window_start"]: s for s in out if s["view"] == TUMBLING}
    assert sorted(tumbling) == [T, T + 4, T + 8, T + 12]
    assert sorted(hopping) == [T - 4, T, T + 4, T + 8, T + 12]
    for start, s in hopping.items():
        inside = [e for e in events if start <= e["ts"] < start + 8]
        assert s["window_end"] - s["window_start"] == 8 and s["step_s"] == 4
        assert s["events"] == len(inside)
        assert s["hits"] == sum(e["tier_accessed"] is not None for e in inside)
        counts = Counter(e["query_fingerprint"] for e in inside)
        assert {q["fingerprint"]: q["count"] for q in s["hot_queries"]} == dict(counts)
        assert s["daily_cost"] == 0 and s["window_s"] == 8


def test_merger_state_survives_a_restore() -> None:
    m = WindowMerger(CFG)
    table: dict[str, Any] = {}
    m.add(partial_msg(0, T, [ev(T + 1)]), 0.0)
    table.update(m.take_dirty())
    m2 = WindowMerger.restore(CFG, table.items(), 5.0)
    out = m2.add(partial_msg(1, T, [ev(T + 2)]), 5.0)
    assert [s["events"] for s in out] == [2, 2]


# --- decoding -------------------------------------------------------------------------


def test_decode_splits_good_and_bad_events_with_reasons() -> None:
    import orjson

    bad_lat = ev(T + 1)
    bad_lat["total_latency_ms"] = 1e12
    missing = ev(T + 1)
    del missing["agent_id"]
    good, bad = decode_entry_events(orjson.dumps([ev(T + 1), bad_lat, missing, 7]))
    assert len(good) == 1
    assert [b.index for b in bad] == [1, 2, 3]
    assert "total_latency_ms" in bad[0].reason and "agent_id" in bad[1].reason
    good, bad = decode_entry_events(b"{not json")
    assert good == [] and bad[0].index is None and "JSON" in bad[0].reason


def test_far_future_events_are_bad_and_do_not_close_windows() -> None:
    import orjson

    produced_at = T + 10.0
    near = ev(T + 1)
    edge = ev(produced_at + CFG.max_ahead_s)  # exactly at the limit: kept
    far = ev(produced_at + CFG.max_ahead_s + 0.5)
    broken = ev(T + 1)
    del broken["operation"]
    value = orjson.dumps([near, far, broken, edge])
    good, bad = decode_entry_events(value, produced_at, CFG.max_ahead_s)
    assert [e["ts"] for e in good] == [near["ts"], edge["ts"]]
    assert [b.index for b in bad] == [1, 2]
    assert "ahead of its entry's producer timestamp" in bad[0].reason
    assert orjson.loads(bad[0].raw) == far
    assert "operation" in bad[1].reason
    # without a producer time nothing is judged far-future (the callers always pass one)
    assert len(decode_entry_events(value)[0]) == 3

    # Fed to a partition, the far event would close window T (ts >= end + lateness)
    # and make the next event of T late; dead-lettered, T stays open.
    def closed(out: list[Partial]) -> list[int | None]:
        return [p.window_start for p in out if p.aggregate is not None]

    pw = PartitionWindows(0, CFG)
    assert closed(pw.add(0, good[:1])) == []
    assert closed(pw.add(1, [ev(T + 2)])) == []
    assert pw.windows[T].events == 2 and pw.windows[T].late == 0
    unchecked = PartitionWindows(0, CFG)
    assert closed(unchecked.add(0, [near, far])) == [T]  # what the check prevents
    unchecked.add(1, [ev(T + 2)])
    assert T not in unchecked.windows


def test_max_ahead_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_ahead_s"):
        PipelineConfig(max_ahead_s=0)
