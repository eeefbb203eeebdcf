"""The sink agents in a real pipeline worker: events in -> suggestions, alerts, history,
subscribe and /metrics out, each checked against what the published events say.

Seven 2-second windows a minute in the past are published before the worker
starts (so windows close by event time): in windows 2-4 the first tier
(``redis``) misses the hot keys and errors on half the reads, so its hit rate
is low; a hot query is always served by ``chroma``. Expectations come from
plain counting over the events, never from the worker's summaries. Custom
Metric events and a publisher stats hash drive the metric alert rules.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sinkdata import read_event
from tierstream.producers.publisher import Publisher
from tierstream.schemas import names

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "processors"))
import faustproc as fp

pytestmark = pytest.mark.timeout(150)

TIERSTREAM = str(Path(sys.executable).with_name("tierstream"))

WINDOW_S, N_WINDOWS = 2, 7
BAD = {2, 3, 4}  # windows where the first tier fails
HOT_SLOW = "hotslow0000000001"
HOT = [f"hotkey000000000{i}" for i in range(5)]
RULES = """
[[rule]]
name = "l1-hit-rate"
metric = "hit_rate"
labels = { tier = "redis" }
comparison = "<"
thresholds = { warning = 0.40, critical = 0.05 }
for = "2s"
hysteresis = 0.05

[[rule]]
name = "queue-depth"
metric = "queue_depth"
source = "metric"
labels = { queue = "*" }
comparison = ">"
thresholds = { warning = 100.0 }

[[rule]]
name = "publisher-dropping"
metric = "publisher_drop_rate"
labels = { publisher = "*" }
comparison = ">"
thresholds = { warning = 0.0 }
"""
KNOBS = {
    "TIERSTREAM_WINDOW_S": WINDOW_S,
    "TIERSTREAM_HOP_SIZE_S": 4,
    "TIERSTREAM_HOP_STEP_S": 2,
    "TIERSTREAM_GRACE_S": 1.0,
    "TIERSTREAM_LATENESS_S": 1.0,
    "TIERSTREAM_MERGE_TIMEOUT_S": 600,
    "TIERSTREAM_COMMIT_INTERVAL": 0.5,
    "TIERSTREAM_PUBLISHER_POLL_S": 0.5,
}


# --- the events and what they imply ---------------------------------------------------


def make_events(start: int) -> list[dict[str, Any]]:
    rng = random.Random(5)
    out: list[dict[str, Any]] = []
    for w in range(N_WINDOWS):
        w0 = start + w * WINDOW_S
        jobs: list[tuple[str, str | None, list[str]]] = [(HOT_SLOW, "chroma", [])] * 30
        for h in HOT:
            jobs += [(h, "postgresql" if w in BAD else "redis", [])] * 20
        for b in range(100):
            served = rng.choice(["redis", "postgresql", "chroma"])
            errs = ["redis"] if w in BAD and served != "redis" and rng.random() < 0.5 else []
            jobs.append((f"cold{w:02d}{b:013d}", served, errs))
        rng.shuffle(jobs)
        for fp_, served, errs in jobs:
            ts = w0 + 0.02 + rng.random() * (WINDOW_S - 0.5)
            ev = read_event(rng, len(out), ts, fp_, served, text=f"q {fp_}", error_tiers=errs)
            ev["event_id"] = f"ev{len(out):07d}"
            out.append(ev)
    out.sort(key=lambda e: e["ts"])
    return out


def per_window(events: list[dict[str, Any]], start: int) -> list[list[dict[str, Any]]]:
    windows: list[list[dict[str, Any]]] = [[] for _ in range(N_WINDOWS)]
    for e in events:
        windows[int((e["ts"] - start) // WINDOW_S)].append(e)
    return windows


def redis_hit_rate(events: list[dict[str, Any]]) -> float:
    attempts = sum(1 for e in events if "redis" in e["tier_latencies"])
    hits = sum(1 for e in events if e["tier_latencies"].get("redis", {}).get("hit"))
    return hits / attempts


def expected_l1_alerts(rates: list[float], start: int) -> list[tuple[str, float, float]]:
    """(state, value, at) by the rule's definition: below 0.40 for 2 s fires (at a window
    end, the breach counted from its window's start); >= 0.45 resolves."""
    out, pending_since, firing = [], None, False
    for w, v in enumerate(rates):
        w_start, w_end = start + w * WINDOW_S, start + (w + 1) * WINDOW_S
        if not firing:
            if v < 0.40:
                pending_since = w_start if pending_since is None else pending_since
                if w_end - pending_since >= 2:
                    out.append(("firing", v, w_end))
                    firing = True
            else:
                pending_since = None
        elif v >= 0.45:
            out.append(("resolved", v, w_end))
            firing, pending_since = False, None
    return out


# --- helpers -----------------------------------------------------------------------------


def read_topic(client: redis.Redis, topic: str) -> list[dict[str, Any]]:
    entries: Any = client.xrange(names.stream_key(topic, 0))
    return [orjson.loads(fields[b"v"]) for _id, fields in entries if b"v" in fields]


def add_metric(client: redis.Redis, raw: bytes) -> None:
    client.xadd(names.stream_key(names.METRICS_TOPIC, 0), {b"v": raw}, id="0-*")  # type: ignore[arg-type]


def metric(name: str, value: float, ts: float, **labels: str) -> bytes:
    rec = {"schema_version": 1, "record_type": "metric", "name": name, "value": value}
    return orjson.dumps({**rec, "labels": labels, "ts": ts, "source": "test"})


def sinks_state(worker: fp.FaustWorker) -> dict[str, Any]:
    status, body = worker.get("/tierstream/sinks")
    assert status == 200, body
    return dict(orjson.loads(body))


def wait_records(
    client: redis.Redis, topic: str, pred: Any, worker: fp.FaustWorker, what: str, timeout: float
) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    def check() -> bool:
        nonlocal got
        got = read_topic(client, topic)
        return bool(pred(got))

    fp.wait_for(check, timeout, what, [worker], describe=lambda: f"{topic}: {got}")
    return got


async def history_counts(dsn: str, schema: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            t: int(await conn.fetchval(f'SELECT count(*) FROM "{schema}".{t}'))
            for t in ("window_summaries", "suggestions", "alerts")
        }
    finally:
        await conn.close()


async def drop_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def schema(pg_dsn: str, unique: str) -> Iterator[str]:
    yield unique
    asyncio.run(drop_schema(pg_dsn, unique))


def start_worker(redis_url: str, tmp_path: Path, name: str, **knobs: Any) -> fp.FaustWorker:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    env = fp.app_env(
        redis_url,
        "pipeline",
        TIERSTREAM_REDIS_URL=redis_url,
        TIERSTREAM_APP_ID="pipeline",
        TIERSTREAM_ALERT_RULES=str(rules),
        # on when a test gives a DSN (tests/processors/faustproc.py turns it off by default)
        TIERSTREAM_HISTORY="1" if "TIERSTREAM_POSTGRES_DSN" in knobs else "0",
        **{**KNOBS, **knobs},
    )
    return fp.FaustWorker("apps.pipeline_app", env, tmp_path, name).start()


# --- the tests -----------------------------------------------------------------------------


def test_events_in_suggestions_alerts_history_metrics_out(
    redis_url: str, rdb: redis.Redis, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    start = (int(time.time()) - 60) // 4 * 4
    events = make_events(start)
    windows = per_window(events, start)
    rates = [redis_hit_rate(w) for w in windows]
    # The plan's premise (fixed seed): bad windows between the thresholds, good ones clear.
    assert all(0.05 < rates[w] < 0.40 for w in BAD) and all(
        rates[w] >= 0.45 for w in range(N_WINDOWS) if w not in BAD
    ), rates

    async def publish() -> None:
        pub = await Publisher(redis_url, batch_size=100).start()
        for e in events:
            pub.emit(e)  # type: ignore[arg-type]
        await pub.close()
        assert pub.stats.sent == len(events)

    asyncio.run(publish())
    # A subscriber in another process, following alerts from now.
    sub = subprocess.Popen(
        [TIERSTREAM, "subscribe", "alerts", "--follow", "--json", "--redis-url", redis_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    worker = start_worker(
        redis_url,
        tmp_path,
        "sinks",
        TIERSTREAM_POSTGRES_DSN=pg_dsn,
        TIERSTREAM_HISTORY_SCHEMA=schema,
    )
    try:
        run_checks(rdb, worker, events, windows, rates, start, pg_dsn, schema, sub)
    finally:
        sub.kill()
        sub.wait(5)
        worker.stop(timeout=5)
        print(worker.describe(60))


def run_checks(
    rdb: redis.Redis,
    worker: fp.FaustWorker,
    events: list[dict[str, Any]],
    windows: list[list[dict[str, Any]]],
    rates: list[float],
    start: int,
    pg_dsn: str,
    schema: str,
    sub: subprocess.Popen[bytes],
) -> None:
    last_end = start + N_WINDOWS * WINDOW_S

    def all_windows(summaries: list[dict[str, Any]]) -> bool:
        return {s["window_end"] for s in summaries if s["view"] == "tumbling"} >= {
            start + (w + 1) * WINDOW_S for w in range(N_WINDOWS)
        }

    wait_records(rdb, names.WINDOW_SUMMARIES_TOPIC, all_windows, worker, "summaries", 90)

    # Alerts on the first tier's hit rate: exactly the expected records.
    def l1(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in recs if a["rule"] == "l1-hit-rate"]

    want = expected_l1_alerts(rates, start)
    assert [s for s, _v, _at in want] == ["firing", "resolved"]
    alerts = wait_records(
        rdb, names.ALERTS_TOPIC, lambda r: len(l1(r)) >= 2, worker, "l1 alerts", 30
    )
    got = l1(alerts)
    assert [(a["state"], a["ts"]) for a in got] == [(s, at) for s, _v, at in want]
    for a, (_s, v, _at) in zip(got, want, strict=True):
        assert a["value"] == pytest.approx(v, abs=1e-9)
        assert a["labels"] == {"tier": "redis"} and a["threshold"] == 0.40
        assert a["severity"] == "warning" and a["started_at"] == start + min(BAD) * WINDOW_S
    assert (
        got[1]["resolved_at"] == start + (max(BAD) + 2) * WINDOW_S and got[0]["id"] == got[1]["id"]
    )

    # Suggestions: pre-cache exactly the hot queries that some window mostly served slow.
    suggestions = read_topic(rdb, names.SUGGESTIONS_TOPIC)
    pre = [s for s in suggestions if s["kind"] == "pre_cache"]
    expected_fps = set()
    for w in windows:
        reads = Counter(e["query_fingerprint"] for e in w)
        first = Counter(e["query_fingerprint"] for e in w if e["tier_accessed"] == "redis")
        expected_fps |= {f for f, n in reads.items() if n >= 20 and first[f] < n / 2}
    assert {s["subject"]["fingerprint"] for s in pre} == expected_fps == {HOT_SLOW, *HOT}
    slow = [s for s in pre if s["subject"]["fingerprint"] == HOT_SLOW]
    assert len(slow) == 1, "the same evidence every window must be published once"
    ev = slow[0]["evidence"]
    assert ev["window_end"] == start + WINDOW_S and ev["serving_tier"] == "chroma"
    assert ev["counts"]["slow_reads"] == 30 and ev["first_tier"] == "redis"
    chroma_ms = [e["total_latency_ms"] for e in windows[0] if e["query_fingerprint"] == HOT_SLOW]
    assert ev["latencies_ms"]["serving_tier_mean"] == pytest.approx(
        sum(chroma_ms) / len(chroma_ms), rel=1e-6
    )
    assert slow[0]["subject"]["query"] == f"q {HOT_SLOW}"

    # Custom metric events: fire, resolve; a bad entry is dead-lettered and counted.
    now = time.time()
    add_metric(rdb, metric("queue_depth", 150, now - 2, queue="jobs"))
    add_metric(rdb, b"{not json")
    add_metric(rdb, metric("queue_depth", 20, now - 1, queue="jobs"))

    def qd(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in recs if a["rule"] == "queue-depth"]

    alerts = wait_records(rdb, names.ALERTS_TOPIC, lambda r: len(qd(r)) >= 2, worker, "qd", 20)
    assert [(a["state"], a["value"], a["labels"]) for a in qd(alerts)] == [
        ("firing", 150, {"queue": "jobs"}),
        ("resolved", 20, {"queue": "jobs"}),
    ]
    assert int(rdb.get(names.dead_letter_count_key(names.METRICS_TOPIC)) or 0) == 1

    # Publisher drop rate from a publisher's stats hash (polled by the worker's timer).
    key = names.publisher_stats_key("pub-x")
    rdb.hset(key, mapping={"sent": 100, "dropped": 0, "ts": time.time()})
    time.sleep(1.5)
    rdb.hset(key, mapping={"sent": 150, "dropped": 50, "ts": time.time()})

    def drops(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [a for a in recs if a["rule"] == "publisher-dropping"]

    wait_records(rdb, names.ALERTS_TOPIC, lambda r: len(drops(r)) >= 1, worker, "drop fired", 20)
    rdb.hset(key, mapping={"sent": 250, "dropped": 50, "ts": time.time()})
    alerts = wait_records(
        rdb, names.ALERTS_TOPIC, lambda r: len(drops(r)) >= 2, worker, "drop resolved", 20
    )
    assert [(a["state"], a["value"], a["labels"]) for a in drops(alerts)] == [
        ("firing", 0.5, {"publisher": "pub-x"}),
        ("resolved", 0.0, {"publisher": "pub-x"}),
    ]

    # /metrics: parses, and carries the last summary's numbers as counted from the events.
    status, body = worker.get("/metrics")
    assert status == 200
    got_m = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }
    last = windows[-1]
    assert got_m["tierstream_window_end_seconds", ()] == last_end
    assert got_m["tierstream_window_reads", ()] == len(last)
    assert got_m["tierstream_tier_hit_rate", (("tier", "redis"),)] == pytest.approx(rates[-1])
    served = Counter(e["tier_accessed"] for e in last)
    for tier in ("redis", "postgresql", "chroma"):
        assert got_m["tierstream_tier_served", (("tier", tier),)] == served[tier]
    assert got_m["tierstream_events_processed_total", ()] == len(events)
    assert got_m["tierstream_dead_letters_total", (("topic", names.METRICS_TOPIC),)] == 1
    for p in range(names.ACCESS_PARTITIONS):
        lag = got_m[
            "tierstream_consumer_lag", (("partition", str(p)), ("topic", names.ACCESS_TOPIC))
        ]
        assert lag == 0
    assert got_m["tierstream_publisher_dropped_total", (("publisher", "pub-x"),)] == 50
    assert got_m["tierstream_suggestions_published_total", ()] == len(suggestions)
    assert ("tierstream_tier_latency_ms", (("quantile", "0.95"), ("tier", "chroma"))) in got_m

    # History: every record once; re-feeding the same summaries adds no rows and no records.
    all_alerts = read_topic(rdb, names.ALERTS_TOPIC)
    summaries = read_topic(rdb, names.WINDOW_SUMMARIES_TOPIC)
    distinct = {(s["view"], s["window_start"]) for s in summaries}
    want_rows = {
        "window_summaries": len(distinct),
        "suggestions": len(suggestions),
        "alerts": len(all_alerts),
    }
    fp.wait_for(
        lambda: asyncio.run(history_counts(pg_dsn, schema)) == want_rows,
        20,
        f"history rows {want_rows}",
        [worker],
        describe=lambda: str(asyncio.run(history_counts(pg_dsn, schema))),
    )
    before = sinks_state(worker)["history"]["written"]["summaries"]
    stream = names.stream_key(names.WINDOW_SUMMARIES_TOPIC, 0)
    for _id, fields in rdb.xrange(stream):  # type: ignore[union-attr]
        rdb.xadd(stream, {b"v": fields[b"v"]}, id="0-*")  # type: ignore[arg-type]
    fp.wait_for(
        lambda: sinks_state(worker)["history"]["written"]["summaries"] >= before + len(summaries),
        20,
        "the re-fed summaries written again",
        [worker],
    )
    time.sleep(1.0)
    assert asyncio.run(history_counts(pg_dsn, schema)) == want_rows
    assert read_topic(rdb, names.SUGGESTIONS_TOPIC) == suggestions
    assert read_topic(rdb, names.ALERTS_TOPIC) == all_alerts

    # The subscriber in the other process saw every alert, in order.
    sub.kill()
    out, _err = sub.communicate(timeout=5)
    assert [orjson.loads(line) for line in out.splitlines() if line.strip()] == all_alerts


def test_worker_keeps_running_without_postgresql(
    redis_url: str, rdb: redis.Redis, tmp_path: Path
) -> None:
    start = (int(time.time()) - 60) // 4 * 4
    events = [e for e in make_events(start) if e["ts"] < start + 2 * WINDOW_S]

    async def publish() -> None:
        pub = await Publisher(redis_url).start()
        for e in events:
            pub.emit(e)  # type: ignore[arg-type]
        await pub.close()

    asyncio.run(publish())
    dead = f"postgresql://postgres@127.0.0.1:{fp.free_port()}/test"
    worker = start_worker(redis_url, tmp_path, "nopg", TIERSTREAM_POSTGRES_DSN=dead)
    try:
        sugg = wait_records(rdb, names.SUGGESTIONS_TOPIC, bool, worker, "a suggestion", 60)
        assert any(s["subject"]["fingerprint"] == HOT_SLOW for s in sugg)
        fp.wait_for(
            lambda: sinks_state(worker)["history"]["failures"] >= 2, 20, "retries", [worker]
        )
        assert worker.alive
        log = worker.logfile.read_text()
        assert "history: cannot write" in log and f"127.0.0.1:{dead.rsplit(':', 1)[1]}" in log
    finally:
        worker.stop(timeout=5)


def test_bad_rule_file_stops_the_worker_with_file_and_line(redis_url: str, tmp_path: Path) -> None:
    rules = tmp_path / "bad.toml"
    rules.write_text(
        '[[rule]]\nname = "x"\nmetric = "hit_rate"\n'
        'thresholds = { warning = 1 }\ncomparison = "=="\n'
    )
    proc = subprocess.run(
        [TIERSTREAM, "worker", "--redis-url", redis_url],
        env={**fp.app_env(redis_url, "bad"), "TIERSTREAM_ALERT_RULES": str(rules)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert f"{rules}:5:" in proc.stderr and "comparison" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
