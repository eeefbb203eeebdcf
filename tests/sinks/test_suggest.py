"""SuggestionEngine on summaries built by the real aggregation core from planned events.

Expected suggestions are derived here from the events by plain counting.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import jsonschema
import pytest
from sinkdata import COSTS, T0, TIERS, summarize, window_events
from tierstream.schemas.export import SCHEMA_DIR
from tierstream.schemas.suggestion import validate_suggestion
from tierstream.sinks.suggest import SuggestConfig, SuggestionEngine, suggestion_id

SCHEMA = json.loads((SCHEMA_DIR / "suggestion.v1.json").read_text())
DAY = 86_400

PLAN = {
    "hot-pg": {"postgresql": 60},  # pre-cache, served by L2
    "hot-chroma": {"chroma": 40},  # pre-cache, bigger gap: ranked first
    "red-mostly-pg": {"postgresql": 30, "redis": 10},  # pre-cache, redacted text
    "ttl": {"redis": 40, "postgresql": 12},  # in the cache, left it: TTL too short
    "hot-fast": {"redis": 80},  # nothing to do
    "rare-slow": {"chroma": 12},  # below N
}


def expected(events: list[dict[str, Any]], n: int = 20) -> dict[tuple[str, str], dict]:
    """(kind, fingerprint) -> slow reads, serving tier, benefit, cost change per window."""
    served: dict[str, Counter] = defaultdict(Counter)
    total_us: dict[tuple[str, str], int] = Counter()
    first_lat = [e["tier_latencies"]["redis"]["latency_ms"] for e in events]
    first_mean = sum(first_lat) / len(first_lat)
    for e in events:
        fp, t = e["query_fingerprint"], e["tier_accessed"]
        served[fp][t] += 1
        total_us[fp, t] += int(e["total_latency_ms"] * 1000 + 0.5)
    out = {}
    for fp, c in served.items():
        if sum(c.values()) < n:
            continue
        slow = {t: k for t, k in c.items() if t not in ("redis", None)}
        answered = sum(k for t, k in c.items() if t is not None)
        if not slow:
            continue
        share = c["redis"] / answered
        if share < 0.5:
            kind = "pre_cache"
        elif sum(slow.values()) >= 2 and sum(slow.values()) / answered >= 0.1:
            kind = "ttl_too_short"
        else:
            continue
        benefit = sum(k * (total_us[fp, t] / k / 1000 - first_mean) for t, k in slow.items())
        chain = {"postgresql": COSTS["postgresql"], "chroma": COSTS["postgresql"] + COSTS["chroma"]}
        cost = -sum(k * chain[t] for t, k in slow.items())
        cost += COSTS["redis"] if kind == "pre_cache" else 0.0
        out[kind, fp] = {
            "slow": sum(slow.values()),
            "serving": max(slow, key=slow.get),
            "benefit": benefit,
            "cost": cost,
        }
    return out


def test_suggestions_match_the_events() -> None:
    events = window_events(PLAN, T0, seed=1)
    summary = summarize(events, T0)
    recs = SuggestionEngine().observe(summary)
    want = expected(events)
    assert {(r["kind"], r["subject"]["fingerprint"]) for r in recs} == set(want)
    assert set(want) == {
        ("pre_cache", "hot-pg"),
        ("pre_cache", "hot-chroma"),
        ("pre_cache", "red-mostly-pg"),
        ("ttl_too_short", "ttl"),
    }
    for r in recs:
        validate_suggestion(r)
        jsonschema.validate(r, SCHEMA)
        w = want[r["kind"], r["subject"]["fingerprint"]]
        ev, saving = r["evidence"], r["estimated_saving"]
        assert ev["counts"]["slow_reads"] == w["slow"]
        assert ev["serving_tier"] == w["serving"] and ev["first_tier"] == "redis"
        assert saving["benefit_ms"] == pytest.approx(w["benefit"], rel=1e-3)
        assert saving["latency_ms_per_day"] == pytest.approx(w["benefit"] * DAY / 60, rel=1e-3)
        assert saving["cost_change_per_day"] == pytest.approx(w["cost"] * DAY / 60, rel=1e-9)
        assert saving["cost_change_per_day"] < 0
        assert (ev["window_start"], ev["window_end"], ev["window_s"]) == (T0, T0 + 60, 60)
        assert r["id"] == suggestion_id(r["kind"], r["subject"]["fingerprint"], None)
        assert r["revision"] == 1 and 0 < r["confidence"] <= 1
    texts = {r["subject"]["fingerprint"]: r["subject"]["query"] for r in recs}
    assert texts["red-mostly-pg"] is None and texts["hot-pg"] == "text of hot-pg"
    pre = [r for r in recs if r["kind"] == "pre_cache"]
    assert [r["rank"] for r in pre] == [1, 2, 3]
    by_benefit = sorted(
        pre, key=lambda r: -want["pre_cache", r["subject"]["fingerprint"]]["benefit"]
    )
    assert [r["subject"]["fingerprint"] for r in pre] == [
        r["subject"]["fingerprint"] for r in by_benefit
    ]
    assert pre[0]["subject"]["fingerprint"] == "hot-chroma"


def test_threshold_n_is_configurable() -> None:
    events = window_events(PLAN, T0, seed=2)
    recs = SuggestionEngine(SuggestConfig(min_reads=10)).observe(summarize(events, T0))
    fps = {r["subject"]["fingerprint"] for r in recs}
    assert "rare-slow" in fps
    assert {(r["kind"], r["subject"]["fingerprint"]) for r in recs} == set(expected(events, 10))


def feed(engine: SuggestionEngine, plans: list[dict]) -> list[list[dict[str, Any]]]:
    out = []
    for i, plan in enumerate(plans):
        start = T0 + 60 * i
        out.append(engine.observe(summarize(window_events(plan, start, seed=10 + i), start)))
    return out


def ids(recs: list[dict[str, Any]]) -> dict[str, int]:
    return {r["subject"]["fingerprint"]: r["revision"] for r in recs}


def test_published_again_only_on_material_change() -> None:
    base = {"q": {"postgresql": 40}, "hot-fast": {"redis": 50}}
    more = {"q": {"postgresql": 52}, "hot-fast": {"redis": 50}}  # +30% frequency
    slight = {"q": {"postgresql": 44}, "hot-fast": {"redis": 50}}  # +10%: not material
    moved = {"q": {"chroma": 44}, "hot-fast": {"redis": 50}}  # other serving tier
    gone = {"hot-fast": {"redis": 50}}
    plans = [base, base, slight, more, more, moved, gone, moved]
    out = feed(SuggestionEngine(), plans)
    assert [ids(o) for o in out] == [
        {"q": 1},
        {},
        {},
        {"q": 2},
        {},
        {"q": 3},
        {},
        {"q": 4},  # went away and came back
    ]


def test_drift_adds_up_against_the_last_publication() -> None:
    plans = [{"q": {"postgresql": n}} for n in (40, 44, 48, 52)]  # +10% per window
    out = feed(SuggestionEngine(), plans)
    assert [ids(o) for o in out] == [{"q": 1}, {}, {}, {"q": 2}]  # 52/40 - 1 >= 25%


def test_state_round_trips_and_continues_identically() -> None:
    plans = [
        {"q": {"postgresql": n}, "t": {"redis": 30, "chroma": n // 4}} for n in (40, 41, 60, 20, 61)
    ]
    whole = feed(SuggestionEngine(), plans)
    first = SuggestionEngine()
    part = feed(first, plans[:2])
    state = json.loads(json.dumps(first.to_dict()))
    resumed = SuggestionEngine.from_dict(state)
    for i, plan in enumerate(plans[2:], start=2):
        start = T0 + 60 * i
        part.append(resumed.observe(summarize(window_events(plan, start, seed=10 + i), start)))
    assert part == whole
    assert any(whole[2:])


def test_old_or_other_view_summaries_are_ignored() -> None:
    engine = SuggestionEngine()
    s = summarize(window_events({"q": {"postgresql": 40}}, T0, seed=3), T0)
    assert engine.observe(s)
    assert engine.observe(s) == []  # a replay of the same window adds nothing
    later = summarize(window_events({"q": {"postgresql": 90}}, T0 + 60, seed=4), T0 + 60)
    assert engine.observe({**later, "view": "hopping"}) == []
    assert ids(engine.observe(later)) == {"q": 2}


def test_unhealthy_tier_by_errors_and_by_latency() -> None:
    engine = SuggestionEngine()
    healthy = {"a": {"redis": 30}}
    for i in range(3):
        assert feed_one(engine, healthy, i) == []
    # window 3: postgresql raises on 40% of the reads that go past it (others never)
    events = window_events(healthy, T0 + 180, seed=23, error_rate={"postgresql": 0.4})
    pg = [e["tier_latencies"]["postgresql"] for e in events if "postgresql" in e["tier_latencies"]]
    pg_errors = sum(a.get("error") is not None for a in pg)
    assert pg_errors / len(pg) > 0.05
    errs = engine.observe(summarize(events, T0 + 180))
    assert [(r["kind"], r["subject"]["tier"]) for r in errs] == [("unhealthy_tier", "postgresql")]
    assert errs[0]["evidence"]["counts"]["attempts"] == len(pg)
    assert errs[0]["evidence"]["counts"]["errors"] == pg_errors
    # window 4: postgresql 10x slower than its baseline of the earlier windows
    slow = feed_one(engine, healthy, 4, lat_scale={"postgresql": 10.0})
    assert [(r["kind"], r["subject"]["tier"]) for r in slow] == [("unhealthy_tier", "postgresql")]
    lat = slow[0]["evidence"]["latencies_ms"]
    assert lat["p95"] > lat["p95_limit"] > 0
    for r in errs + slow:
        jsonschema.validate(r, SCHEMA)
        assert r["estimated_saving"]["latency_ms_per_day"] is None


def feed_one(engine: SuggestionEngine, plan: dict, i: int, **kw: Any) -> list[dict[str, Any]]:
    start = T0 + 60 * i
    return engine.observe(summarize(window_events(plan, start, seed=20 + i, **kw), start))


def test_tier_order_is_inferred_or_configured() -> None:
    from tierstream.sinks.tiers import tier_order

    s = summarize(window_events({"q": {"chroma": 30}}, T0, seed=5), T0)
    assert tier_order(s) == list(TIERS)
    assert tier_order(s, ("postgresql",)) == ["postgresql", "redis", "chroma"]
