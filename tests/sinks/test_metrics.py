"""/metrics exposition checked with prometheus_client's parser and a strict line grammar;
publisher drop rates from a real Publisher's stats hash."""

from __future__ import annotations

import re

import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from sinkdata import T0, summarize, window_events
from tierstream.producers.publisher import Publisher
from tierstream.schemas.metric import validate_metric
from tierstream.sinks.metrics import MetricsState, render_metrics
from tierstream.sinks.publishers import drop_rate_metrics, read_publisher_stats

LINE = re.compile(
    r"^(# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*"
    r"|# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|summary|histogram|untyped)"
    r'|[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
    r"(-?[0-9.e+-]+|NaN|[+-]Inf))$"
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_exposition_parses_and_carries_the_window() -> None:
    plan = {"a": {"redis": 70}, "b": {"postgresql": 20}, "c": {"chroma": 10}}
    events = window_events(plan, T0, seed=9, error_rate={"postgresql": 0.2})
    summary = summarize(events, T0)
    state = MetricsState(
        last_summary=summary,
        events_processed=len(events),
        consumer_lag={("tierstream.access", 0): 3, ("tierstream.access", 1): 0},
        dead_letters={"tierstream.access": 2},
        publishers={"host 1-ab": {"sent": 990, "dropped": 10}},
        alerts_firing={"warning": 1},
        suggestions_published=4,
    )
    text = render_metrics(state)
    assert text.endswith("\n")
    for line in text.splitlines():
        assert LINE.match(line), line
    got = samples(text)
    redis_att = [e["tier_latencies"]["redis"] for e in events]
    assert got["tierstream_tier_hit_rate", (("tier", "redis"),)] == sum(
        a["hit"] for a in redis_att
    ) / len(redis_att)
    pg = [e["tier_latencies"]["postgresql"] for e in events if "postgresql" in e["tier_latencies"]]
    assert got["tierstream_tier_errors", (("tier", "postgresql"),)] == sum(
        a.get("error") is not None for a in pg
    )
    assert got["tierstream_window_reads", ()] == len(events)
    for tier, t in summary["tiers"].items():
        assert (
            got["tierstream_tier_latency_ms", (("quantile", "0.95"), ("tier", tier))]
            == (t["latency"]["p95_ms"])
        )
    assert got["tierstream_events_processed_total", ()] == len(events)
    lag = (("partition", "0"), ("topic", "tierstream.access"))
    assert got["tierstream_consumer_lag", lag] == 3
    assert got["tierstream_dead_letters_total", (("topic", "tierstream.access"),)] == 2
    assert got["tierstream_publisher_dropped_total", (("publisher", "host 1-ab"),)] == 10
    assert got["tierstream_window_end_seconds", ()] == T0 + 60


def test_labels_are_escaped_and_nulls_left_out() -> None:
    weird = 'we"ird\\tier\nname'
    summary = summarize(window_events({"a": {"redis": 5}}, T0, seed=1, background=0), T0)
    summary["tiers"][weird] = summary["tiers"].pop("postgresql", summary["tiers"]["redis"])
    summary["hit_rate"] = None
    text = render_metrics(MetricsState(last_summary=summary))
    for line in text.splitlines():
        assert LINE.match(line), line
    got = samples(text)
    assert any(("tier", weird) in labels for _, labels in got)
    assert ("tierstream_window_hit_rate", ()) not in got
    assert "# TYPE tierstream_window_hit_rate gauge" in text


def test_empty_state_is_valid() -> None:
    text = render_metrics(MetricsState())
    assert samples(text)["tierstream_events_processed_total", ()] == 0


async def test_publisher_drop_rate_from_a_real_publisher(
    aredis: aioredis.Redis, redis_url: str
) -> None:
    pub = Publisher(redis_url, max_buffer=5, publisher_id="p-test")
    await pub.start()
    for i in range(20):  # no await in between: the buffer holds 5, 15 are dropped
        pub.emit({"event_id": f"e{i}", "query_fingerprint": f"{i:016x}", "agent_id": "a", "ts": T0})
    await pub.close()
    stats = await read_publisher_stats(aredis)
    assert stats["p-test"]["sent"] == 5 and stats["p-test"]["dropped"] == 15
    (m,) = drop_rate_metrics(stats, None, T0)
    validate_metric(m)
    assert (m["value"], m["labels"]) == (0.75, {"publisher": "p-test"})
    later = {"p-test": {"sent": 105, "dropped": 15}}
    assert drop_rate_metrics(later, stats, T0 + 5)[0]["value"] == 0.0
    assert drop_rate_metrics(stats, stats, T0 + 10) == []  # nothing happened
    restarted = {"p-test": {"sent": 3, "dropped": 1}}
    assert drop_rate_metrics(restarted, later, T0 + 15)[0]["value"] == 0.25
