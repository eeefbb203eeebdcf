"""AlertEvaluator on summaries built by the real core; expected values from the events."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import numpy as np
import pytest
from sinkdata import T0, summarize, window_events
from tierstream.schemas.export import SCHEMA_DIR
from tierstream.schemas.metric import metric_event
from tierstream.sinks.alerts import AlertEvaluator, alert_id
from tierstream.sinks.rules import load_default_rules, parse_rules

SCHEMA = json.loads((SCHEMA_DIR / "alert.v1.json").read_text())

HIT_RULE = """
[[rule]]
name = "l1-hit"
metric = "hit_rate"
labels = { tier = "@first" }
comparison = "<"
thresholds = { warning = 0.40, critical = 0.10 }
for = "90s"
hysteresis = 0.05
"""


def plan(l1: int, l2: int) -> dict[str, dict[str, int]]:
    return {"a": {"redis": l1}, "b": {"postgresql": l2}}


def windows(plans: list[dict], **kw: Any) -> list[tuple[list[dict], dict]]:
    out = []
    for i, p in enumerate(plans):
        start = T0 + 60 * i
        ev = window_events(p, start, seed=100 + i, background=0, **kw)
        out.append((ev, summarize(ev, start)))
    return out


def l1_hit_rate(events: list[dict]) -> float:
    att = [e["tier_latencies"]["redis"] for e in events]
    return sum(a["hit"] for a in att) / len(att)


def test_pending_firing_escalation_hysteresis_resolved() -> None:
    # first-tier hit rates: 0.8, 0.3, 0.3, 0.05, 0.42 (inside hysteresis), 0.6
    plans = [plan(80, 20), plan(30, 70), plan(30, 70), plan(5, 95), plan(42, 58), plan(60, 40)]
    ws = windows(plans)
    rates = [l1_hit_rate(ev) for ev, _ in ws]
    assert rates == [0.8, 0.3, 0.3, 0.05, 0.42, 0.6]
    ev = AlertEvaluator(parse_rules(HIT_RULE))
    out = [ev.observe(s) for _, s in ws]
    assert [len(o) for o in out] == [0, 0, 1, 1, 0, 1]  # pending in window 1 (for = 90 s)
    fired, escalated, resolved = out[2][0], out[3][0], out[5][0]
    started = T0 + 60  # window 1 start: the breach began there
    for rec in (fired, escalated, resolved):
        jsonschema.validate(rec, SCHEMA)
        assert rec["id"] == alert_id("l1-hit", {"tier": "redis"}, started)
        assert rec["labels"] == {"tier": "redis"} and rec["started_at"] == started
        assert rec["fired_at"] == T0 + 180
    assert (fired["state"], fired["severity"], fired["value"]) == ("firing", "warning", 0.3)
    assert fired["threshold"] == 0.40 and fired["resolved_at"] is None
    assert (escalated["state"], escalated["severity"], escalated["value"]) == (
        "firing",
        "critical",
        0.05,
    )
    assert escalated["previous_severity"] == "warning" and escalated["threshold"] == 0.10
    assert (resolved["state"], resolved["value"], resolved["resolved_at"]) == (
        "resolved",
        0.6,
        T0 + 360,
    )
    assert ev.firing() == []


def test_nothing_repeats_and_a_new_episode_gets_a_new_id() -> None:
    rule = HIT_RULE.replace('"90s"', "0")
    plans = [plan(30, 70)] * 3 + [plan(90, 10), plan(20, 80)]
    ev = AlertEvaluator(parse_rules(rule))
    out = [ev.observe(s) for _, s in windows(plans)]
    assert [[r["state"] for r in o] for o in out] == [["firing"], [], [], ["resolved"], ["firing"]]
    assert out[0][0]["id"] == out[3][0]["id"] != out[4][0]["id"]
    assert ev.observe(windows(plans)[4][1]) == []  # the same window again: nothing


def test_a_blip_shorter_than_for_does_not_fire() -> None:
    plans = [plan(30, 70), plan(90, 10), plan(30, 70), plan(90, 10)]
    ev = AlertEvaluator(parse_rules(HIT_RULE))
    assert [ev.observe(s) for _, s in windows(plans)] == [[], [], [], []]


def p95_ms(events: list[dict]) -> float:
    us = np.array([int(e["total_latency_ms"] * 1000 + 0.5) for e in events])
    return float(np.percentile(us, 95, method="inverted_cdf")) / 1000


def test_default_rules_fire_exactly_where_the_events_breach() -> None:
    healthy = {"a": {"redis": 90}, "b": {"postgresql": 10}}
    flushed = {"a": {"postgresql": 60}, "b": {"chroma": 40}}
    ws = windows([healthy, flushed, healthy], lat_scale={"chroma": 3.0}, error_rate={"redis": 0.03})
    ev = AlertEvaluator(load_default_rules())
    out = [ev.observe(s) for _, s in ws]
    events = ws[1][0]
    reads = len(events)
    errors = sum(any(a.get("error") for a in e["tier_latencies"].values()) for e in events)
    values = {
        "first-tier-hit-rate-low": (l1_hit_rate(events), lambda v: v < 0.40),
        "cache-effectiveness-low": (sum(e["cache_hit"] for e in events) / reads, lambda v: v < 0.7),
        "mean-latency-high": (
            sum(int(e["total_latency_ms"] * 1000 + 0.5) for e in events) / reads / 1000,
            lambda v: v > 50,
        ),
        "p95-latency-high": (p95_ms(events), lambda v: v > 100),
        "error-rate-high": (errors / reads, lambda v: v > 0.01),
    }
    want = {name for name, (v, breach) in values.items() if breach(v)}
    assert len(want) >= 3  # the flushed window is bad in several ways
    assert out[0] == [] or {r["rule"] for r in out[0]} <= {"error-rate-high"}
    fired = {r["rule"]: r for r in out[1] if r["state"] == "firing"}
    assert set(fired) == want - {r["rule"] for r in out[0]}
    for name, r in fired.items():
        assert r["value"] == pytest.approx(values[name][0], rel=2e-3)
        jsonschema.validate(r, SCHEMA)
    resolved = {r["rule"] for r in out[2] if r["state"] == "resolved"}
    healthy_events = ws[2][0]
    assert "first-tier-hit-rate-low" in resolved and l1_hit_rate(healthy_events) >= 0.45


def test_metric_events_publisher_drop_rate_and_custom_metrics() -> None:
    rules = load_default_rules() + parse_rules(
        '[[rule]]\nname = "q"\nsource = "metric"\nmetric = "queue.depth"\n'
        'labels = { queue = "jobs" }\ncomparison = ">"\nthresholds = { warning = 100 }\n'
        'for = "10s"\n'
    )
    ev = AlertEvaluator(rules)
    t = T0
    assert ev.observe_metric(metric_event("publisher_drop_rate", 0.0, t, {"publisher": "p1"})) == []
    fired = ev.observe_metric(metric_event("publisher_drop_rate", 0.02, t + 5, {"publisher": "p1"}))
    assert [(r["state"], r["severity"], r["labels"]) for r in fired] == [
        ("firing", "error", {"publisher": "p1"})
    ]
    other = ev.observe_metric(
        metric_event("publisher_drop_rate", 0.001, t + 5, {"publisher": "p2"})
    )
    assert [(r["severity"], r["labels"]["publisher"]) for r in other] == [("warning", "p2")]
    back = ev.observe_metric(metric_event("publisher_drop_rate", 0.0, t + 10, {"publisher": "p1"}))
    assert [r["state"] for r in back] == ["resolved"]
    q = {"queue": "jobs"}
    assert ev.observe_metric(metric_event("queue.depth", 500, t, q)) == []  # pending
    assert ev.observe_metric(metric_event("queue.depth", 500, t, {"queue": "other"})) == []
    assert [r["state"] for r in ev.observe_metric(metric_event("queue.depth", 400, t + 10, q))] == [
        "firing"
    ]


def test_state_round_trips() -> None:
    plans = [plan(30, 70), plan(30, 70), plan(5, 95), plan(80, 20)]
    ws = windows(plans)
    rules = parse_rules(HIT_RULE)
    whole = AlertEvaluator(rules)
    want = [whole.observe(s) for _, s in ws]
    first = AlertEvaluator(rules)
    got = [first.observe(s) for _, s in ws[:2]]
    again = AlertEvaluator.from_dict(json.loads(json.dumps(first.to_dict())), rules)
    got += [again.observe(s) for _, s in ws[2:]]
    assert got == want and sum(map(len, want)) == 3
