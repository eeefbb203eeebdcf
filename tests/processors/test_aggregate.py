"""The pure aggregation core against an independent truth (aggregate_truth.py)."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from tierstream.processors.aggregate import (
    AccessCounts,
    CostAggregator,
    HeavyHitters,
    LatencyAggregator,
    LatencyHistogram,
    WindowAggregate,
    hopping_windows,
    split_by_window,
    window_start,
)
from tierstream.processors.aggregate.latency import HIGHEST_US, _new
from tierstream.schemas.errors import ValidationError
from tierstream.schemas.spec import json_schema
from tierstream.schemas.summary import SUMMARY_RECORD, validate_summary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aggregate_truth import T0, make_events, truth, us

PERCENTILES = {"p50_ms": 50, "p90_ms": 90, "p95_ms": 95, "p99_ms": 99, "p999_ms": 99.9}
COSTS = {"redis": 0.000001, "postgresql": 0.00002, "chroma": 0.0005}


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return make_events(30_000, seed=11)


@pytest.fixture(scope="module")
def tru(events: list[dict[str, Any]]) -> dict[str, Any]:
    return truth(events)


def in_batches(agg: Any, events: list[dict[str, Any]], size: int = 700) -> Any:
    for i in range(0, len(events), size):
        agg.add_batch(events[i : i + size])
    return agg


def roundtrip(d: dict[str, Any]) -> Any:
    return json.loads(json.dumps(d))


# --- counts ---------------------------------------------------------------------


def test_counts_and_rates_are_exact(events: list[dict[str, Any]], tru: dict[str, Any]) -> None:
    r = in_batches(AccessCounts(), events).result()
    for k in ("reads", "puts", "hits", "full_misses", "cache_hits", "errors"):
        assert r[k] == tru[k], k
    assert r["hits"] + r["full_misses"] == r["reads"]
    assert r["hit_rate"] == tru["hits"] / tru["reads"]
    assert r["cache_effectiveness"] == tru["cache_hits"] / tru["reads"]
    assert set(r["tiers"]) == set(tru["tiers"])
    for name, t in r["tiers"].items():
        c = tru["tiers"][name]
        assert t["attempts"] == c["attempts"]
        assert t["hits"] == c["hits"]
        assert t["misses"] == c["attempts"] - c["hits"]
        assert t["errors"] == c["errors"]
        assert t["hit_rate"] == c["hits"] / c["attempts"]
        assert t["served"] == c["served"]
        assert t["served_share"] == c["served"] / tru["reads"]
        assert (t["puts"], t["put_stored"], t["put_errors"]) == (
            c["puts"],
            c["put_stored"],
            c["put_errors"],
        )
    assert sum(t["served"] for t in r["tiers"].values()) == tru["hits"]
    assert set(r["agents"]) == set(tru["agents"])
    for name, a in r["agents"].items():
        c = tru["agents"][name]
        assert (a["reads"], a["hits"], a["cache_hits"], a["puts"]) == (
            c["reads"],
            c["hits"],
            c["cache_hits"],
            c["puts"],
        )
        assert a["hit_rate"] == c["hits"] / c["reads"]


def test_empty_counts_have_null_rates() -> None:
    r = AccessCounts().result()
    assert r["reads"] == 0 and r["hit_rate"] is None and r["cache_effectiveness"] is None


# --- latency --------------------------------------------------------------------


def test_bulk_recording_equals_record_value() -> None:
    rng = random.Random(3)
    values = [int(rng.lognormvariate(8, 3)) for _ in range(20_000)]
    values += [0, 1, 2047, 2048, 2049, 4095, 4096, 1_000_000, HIGHEST_US]
    values = [min(v, HIGHEST_US) for v in values]
    ref = _new()
    for v in values:
        ref.record_value(v)
    h = LatencyHistogram()
    h.record_us(values[:7000])
    h.record_us(values[7000:])
    assert list(h.hist.counts) == list(ref.counts)
    assert h.hist.get_total_count() == ref.get_total_count()
    assert (h.hist.get_min_value(), h.hist.get_max_value()) == (
        ref.get_min_value(),
        ref.get_max_value(),
    )


def check_hist(res: dict[str, Any], values: np.ndarray) -> None:
    """Reported percentiles within the stated HDR precision of numpy's inverted_cdf."""
    assert res["count"] == len(values)
    for label, p in PERCENTILES.items():
        want = int(np.percentile(values, p, method="inverted_cdf"))
        got = round(res[label] * 1000)
        assert want <= got <= want * (1 + 1 / 1024), (label, want, got)
    lo, hi = int(values.min()), int(values.max())
    assert lo * (1 - 1 / 1024) <= round(res["min_ms"] * 1000) <= lo
    assert hi <= round(res["max_ms"] * 1000) <= hi * (1 + 1 / 1024)
    assert res["mean_ms"] == pytest.approx(int(values.sum()) / len(values) / 1000, rel=1e-12)


def test_percentiles_within_hdr_precision(
    events: list[dict[str, Any]], tru: dict[str, Any]
) -> None:
    r = in_batches(LatencyAggregator(), events).result()
    check_hist(r["end_to_end"], tru["total_us"])
    assert set(r["tiers"]) == set(tru["tier_us"])
    for name, res in r["tiers"].items():
        check_hist(res, tru["tier_us"][name])


def test_empty_histogram_result_and_roundtrip() -> None:
    h = LatencyHistogram.from_dict(roundtrip(LatencyHistogram().to_dict()))
    r = h.result()
    assert r["count"] == 0 and r["p99_ms"] is None and r["max_ms"] is None


def test_histogram_encoding_roundtrips_exactly() -> None:
    h = LatencyHistogram()
    h.record_ms([0.0004, 0.25, 1.5, 17.25, 250.0, 3_600_000.0])
    back = LatencyHistogram.from_dict(roundtrip(h.to_dict()))
    assert back.bucket_counts() == h.bucket_counts()
    assert back.result() == h.result()
    assert back.to_dict() == h.to_dict()


# --- heavy hitters --------------------------------------------------------------


@pytest.mark.parametrize("capacity", [16, 50, 200])
def test_heavy_hitters_bounds(
    events: list[dict[str, Any]], tru: dict[str, Any], capacity: int
) -> None:
    hh = in_batches(HeavyHitters(capacity), events)
    true_counts = tru["query_counts"]
    n = sum(true_counts.values())
    assert hh.n == n
    assert hh.error_bound <= n / (capacity + 1)
    assert hh.error_bound > 0  # more distinct queries than 2k: the bound is exercised
    assert len(hh.entries) <= 2 * capacity
    rows = {r["fingerprint"]: r for r in hh.result(top=10**9)}
    for fp, f in true_counts.items():
        if f > n / capacity:
            assert fp in rows, (fp, f)
    for fp, r in rows.items():
        f = true_counts[fp]
        assert f <= r["count"] <= f + n / capacity
        assert r["count"] - r["error"] <= f
        assert r["observed"] <= f
        assert r["observed"] == sum(t["count"] for t in r["tiers"].values()) + r["full_misses"]
    ranked = [r["count"] for r in hh.result(top=10)]
    assert ranked == sorted(ranked, reverse=True)


def test_heavy_hitters_exact_when_capacity_suffices(events: list[dict[str, Any]]) -> None:
    hh = in_batches(HeavyHitters(4096), events)
    assert hh.error_bound == 0
    reads = [e for e in events if e["operation"] != "put"]
    top = hh.result(top=5)
    for row in top:
        mine = [e for e in reads if e["query_fingerprint"] == row["fingerprint"]]
        assert row["count"] == row["observed"] == len(mine)
        texts = [e["query"] for e in mine if e["query"] is not None]
        assert row["query"] == (min(texts) if texts else None)
        for tier, t in row["tiers"].items():
            served = [us(e["total_latency_ms"]) for e in mine if e["tier_accessed"] == tier]
            assert t["count"] == len(served)
            assert t["mean_latency_ms"] == sum(served) / len(served) / 1000.0
        assert row["full_misses"] == sum(e["tier_accessed"] is None for e in mine)


def test_redacted_queries_have_no_text(events: list[dict[str, Any]]) -> None:
    hh = in_batches(HeavyHitters(4096), events)
    redacted = [r for r in hh.result(top=10**9) if int(r["fingerprint"], 16) % 5 == 0]
    assert redacted and all(r["query"] is None for r in redacted)


# --- cost -----------------------------------------------------------------------


def test_cost_is_exact(events: list[dict[str, Any]], tru: dict[str, Any]) -> None:
    costs = {**COSTS}
    del costs["chroma"]  # unknown tiers cost 0
    r = in_batches(CostAggregator(costs, window_s=60), events).result()
    total = 0.0
    for name, c in sorted(tru["tiers"].items()):
        price = costs.get(name, 0.0)
        t = r["tiers"][name]
        assert t["accesses"] == c["all_attempts"]
        assert t["cost"] == c["all_attempts"] * price
        assert t["daily_cost"] == t["cost"] * 86400 / 60
        total += t["cost"]
    assert r["tiers"]["chroma"]["cost"] == 0.0
    assert r["cost"] == total and r["daily_cost"] == total * 86400 / 60


# --- merging and transport -------------------------------------------------------


def partitions(events: list[dict[str, Any]], n: int = 4, seed: int = 5) -> list[list[Any]]:
    rng = random.Random(seed)
    parts: list[list[Any]] = [[] for _ in range(n)]
    for e in events:
        parts[rng.randrange(n)].append(e)
    return parts


def window(capacity: int = 4096) -> WindowAggregate:
    return WindowAggregate(T0, T0 + 60, COSTS, capacity=capacity)


def merged(parts: list[WindowAggregate], order: list[int], tree: bool = False) -> WindowAggregate:
    # every partial crosses a JSON round trip, as between workers
    ps = [WindowAggregate.from_dict(roundtrip(parts[i].to_dict())) for i in order]
    if tree:
        ps[0].merge(ps[1])
        ps[2].merge(ps[3])
        ps[0].merge(ps[2])
        return ps[0]
    out = window(parts[0].heavy.capacity)
    for p in ps:
        out.merge(p)
    return out


@pytest.mark.parametrize("capacity", [4096, 40])
def test_merge_in_any_order_equals_one_pass(events: list[dict[str, Any]], capacity: int) -> None:
    whole = in_batches(window(capacity), events, size=1000)
    parts = [in_batches(window(capacity), p, size=333) for p in partitions(events)]
    for i, p in enumerate(parts):
        p.add_late(i)
    results = [
        merged(parts, [0, 1, 2, 3]),
        merged(parts, [3, 1, 0, 2]),
        merged(parts, [2, 3, 0, 1], tree=True),
    ]
    s_whole = whole.summary()
    n = whole.heavy.n
    true_counts = truth(events)["query_counts"]
    for m in results:
        assert m.events == whole.events and m.late == 6
        assert m.counts.result() == whole.counts.result()
        assert m.cost.result() == whole.cost.result()
        assert m.latency.result() == whole.latency.result()
        assert m.latency.total.bucket_counts() == whole.latency.total.bucket_counts()
        for t, h in whole.latency.tiers.items():
            assert m.latency.tiers[t].bucket_counts() == h.bucket_counts()
        s = m.summary()
        validate_summary(s)
        if capacity >= 4096:  # no key ever dropped: exact and order-independent
            assert {**s, "late_events": 0} == s_whole
        else:
            assert m.heavy.n == n and m.heavy.error_bound <= n / (capacity + 1)
            rows = {r["fingerprint"]: r for r in m.heavy.result(top=10**9)}
            for fp, f in true_counts.items():
                if f > n / capacity:
                    assert f <= rows[fp]["count"] <= f + n / capacity


def test_batch_boundaries_do_not_matter(events: list[dict[str, Any]]) -> None:
    a = in_batches(window(), events[:5000], size=1)
    b = in_batches(window(), events[:5000], size=5000)
    assert a.summary() == b.summary()


def test_aggregators_roundtrip_through_json(events: list[dict[str, Any]]) -> None:
    for make in (AccessCounts, LatencyAggregator, lambda: HeavyHitters(30), CostAggregator):
        agg = in_batches(make(), events[:8000])
        back = type(agg).from_dict(roundtrip(agg.to_dict()))
        assert back.result() == agg.result()
        assert back.to_dict() == agg.to_dict()
    w = in_batches(window(30), events[:8000])
    w.add_late(3)
    back = WindowAggregate.from_dict(roundtrip(w.to_dict()))
    assert back.summary() == w.summary()
    assert back.to_dict() == w.to_dict()


def test_merge_refuses_other_windows_and_capacities() -> None:
    with pytest.raises(ValueError, match="cannot merge"):
        window().merge(WindowAggregate(T0 + 60, T0 + 120))
    with pytest.raises(ValueError, match="capacities"):
        HeavyHitters(10).merge(HeavyHitters(20))
    with pytest.raises(ValueError, match="version"):
        WindowAggregate.from_dict({"version": 99})


# --- summary record ---------------------------------------------------------------


def test_summary_validates_against_record_and_json_schema(events: list[dict[str, Any]]) -> None:
    w = in_batches(window(64), events)
    s = w.summary()
    validate_summary(s)
    jsonschema.validate(roundtrip(s), json_schema(SUMMARY_RECORD))
    assert s["tiers"]["chroma"]["cost"] == s["tiers"]["chroma"]["cost_per_access"] * (
        s["tiers"]["chroma"]["attempts"] + s["tiers"]["chroma"]["puts"]
    )
    assert len(s["hot_queries"]) == 20
    empty = window().summary()
    validate_summary(empty)
    jsonschema.validate(roundtrip(empty), json_schema(SUMMARY_RECORD))
    assert empty["hit_rate"] is None and empty["latency"]["p50_ms"] is None


def test_summary_validation_names_nested_fields(events: list[dict[str, Any]]) -> None:
    s = in_batches(window(64), events[:3000]).summary()
    bad = json.loads(json.dumps(s))
    bad["hot_queries"][1]["tiers"]["redis"]["count"] = -1
    with pytest.raises(ValidationError, match=r"hot_queries\[1\]\.tiers\.redis\.count"):
        validate_summary(bad)
    bad = json.loads(json.dumps(s))
    bad["latency"]["p99_ms"] = "slow"
    with pytest.raises(ValidationError, match=r"latency\.p99_ms"):
        validate_summary(bad)
    bad["latency"] = None
    with pytest.raises(ValidationError, match="latency"):
        validate_summary(bad)
    bad = json.loads(json.dumps(s))
    bad["hot_queries"] = {}
    with pytest.raises(ValidationError, match="must be an array"):
        validate_summary(bad)


# --- windows --------------------------------------------------------------------


def test_tumbling_window_boundaries() -> None:
    assert window_start(1_700_000_000.0, 60) == 1_699_999_980
    assert window_start(1_699_999_980.0, 60) == 1_699_999_980
    assert window_start(1_700_000_039.999, 60) == 1_699_999_980
    assert window_start(1_700_000_040.0, 60) == 1_700_000_040
    with pytest.raises(ValueError):
        window_start(1.0, 0)
    evs = [{"ts": t} for t in (100.0, 119.99, 120.0, 59.0)]
    assert split_by_window(evs, 60) == {60: evs[:2], 120: [evs[2]], 0: [evs[3]]}


@pytest.mark.parametrize(("size", "step"), [(60, 10), (60, 60), (30, 7), (10, 20)])
def test_hopping_windows_match_brute_force(size: int, step: int) -> None:
    rng = random.Random(size * step)
    points = [1000.0, 1000.0 + step, 1000.0 + size, 999.999] + [
        1000 + rng.random() * 500 for _ in range(200)
    ]
    for ts in points:
        want = [s for s in range(0, 3000, step) if s <= ts < s + size]
        assert hopping_windows(ts, size, step) == want, ts
    assert hopping_windows(125.0, 60, 60) == [window_start(125.0, 60)]
