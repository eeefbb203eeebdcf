"""HistoryStore against the real PostgreSQL: migrations, idempotent replays, retention, queries."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sinkdata import T0, summarize, window_events
from tierstream.sinks.alerts import AlertEvaluator
from tierstream.sinks.history import LATEST_VERSION, HistoryStore
from tierstream.sinks.rules import load_default_rules
from tierstream.sinks.suggest import SuggestionEngine


def records(n: int) -> tuple[list[dict], list[dict], list[dict]]:
    """n consecutive windows: summaries, and what the engines make of them."""
    sugg, alerts = SuggestionEngine(), AlertEvaluator(load_default_rules())
    summaries, s_out, a_out = [], [], []
    for i in range(n):
        start = T0 + 60 * i
        plan = (
            {"q": {"postgresql": 40 + 20 * i}, "a": {"redis": 80}}
            if i % 2 == 0
            else {"q": {"chroma": 50}, "a": {"postgresql": 90}}
        )
        s = summarize(window_events(plan, start, seed=i), start)
        summaries.append(s)
        s_out += sugg.observe(s)
        a_out += alerts.observe(s)
    return summaries, s_out, a_out


@pytest.fixture
async def store(pg_dsn: str, unique: str) -> AsyncIterator[HistoryStore]:
    st = await HistoryStore(pg_dsn, schema=unique).start()
    yield st
    await st.drop()
    await st.close()


async def test_migration_is_idempotent_and_concurrent_safe(pg_dsn: str, unique: str) -> None:
    stores = [HistoryStore(pg_dsn, schema=unique) for _ in range(3)]
    await asyncio.gather(*(s.start() for s in stores))  # concurrent first starts
    try:
        again = await HistoryStore(pg_dsn, schema=unique).start()
        assert await again.schema_version() == LATEST_VERSION
        rows = await again.pool.fetch(f'SELECT version FROM "{unique}".schema_version')
        assert [r[0] for r in rows] == [v for v in range(1, LATEST_VERSION + 1)]
        await again.close()
    finally:
        await stores[0].drop()
        for s in stores:
            await s.close()


async def test_replay_adds_no_duplicates(store: HistoryStore) -> None:
    summaries, suggestions, alerts = records(5)
    assert suggestions and alerts
    assert await store.write_summaries(summaries) == 5
    assert await store.write_suggestions(suggestions) == len(suggestions)
    assert await store.write_alerts(alerts) == len(alerts)
    # the replay: the same records again, in other batches and order
    assert await store.write_summaries(summaries[::-1] + summaries[:2]) == 0
    assert await store.write_suggestions(suggestions[1:]) == 0
    assert await store.write_suggestions(suggestions[:1] * 3) == 0
    assert await store.write_alerts(alerts + alerts) == 0
    assert await store.count("summaries") == 5
    assert await store.count("suggestions") == len(suggestions)
    assert await store.count("alerts") == len(alerts)
    got = await store.query("summaries", limit=10)
    assert got == summaries[::-1]  # newest first, records intact
    assert sorted(json.dumps(r, sort_keys=True) for r in await store.query("alerts")) == sorted(
        json.dumps(r, sort_keys=True) for r in alerts
    )


async def test_a_revised_summary_replaces_the_stored_one(store: HistoryStore) -> None:
    (s,), _, _ = records(1)
    revised = {**s, "revision": 2, "reads": s["reads"] + 7}
    assert await store.write_summaries([s]) == 1
    assert await store.write_summaries([revised, s]) == 1
    assert await store.write_summaries([s]) == 0  # an older revision does not win
    (got,) = await store.query("summaries")
    assert got["revision"] == 2 and got["reads"] == s["reads"] + 7


async def test_retention_and_since(store: HistoryStore, pg_dsn: str) -> None:
    summaries, suggestions, alerts = records(6)
    await store.write_summaries(summaries)
    await store.write_suggestions(suggestions)
    await store.write_alerts(alerts)
    since = T0 + 60 * 3
    recent = await store.query("summaries", since=since + 60)  # window_end >= since + 60
    assert [r["window_start"] for r in recent] == [T0 + 300, T0 + 240, T0 + 180]
    assert len(await store.query("summaries", limit=2)) == 2
    keep = HistoryStore(pg_dsn, schema=store.schema, retention_days=1.0)
    await keep.start()  # retention on start uses the wall clock: T0 is long ago
    assert await keep.count("summaries") == 0 and await keep.count("alerts") == 0
    await keep.close()
    await store.write_summaries(summaries)
    store.retention_days = 60 / 86400  # one minute, before a "now" of our choosing
    deleted = await store.apply_retention(now=T0 + 360)
    assert deleted["summaries"] == 4  # window ends T0+60 .. T0+240 are before T0+300
    assert [r["window_end"] for r in await store.query("summaries")] == [T0 + 360, T0 + 300]


async def test_history_cli(store: HistoryStore, pg_dsn: str) -> None:
    summaries, suggestions, alerts = records(4)
    await store.write_summaries(summaries)
    await store.write_suggestions(suggestions)
    await store.write_alerts(alerts)
    for kind, want in (("summaries", summaries), ("suggestions", suggestions), ("alerts", alerts)):
        out = run_cli("history", kind, "--dsn", pg_dsn, "--schema", store.schema, "--json")
        lines = [json.loads(x) for x in out.splitlines()]
        assert len(lines) == len(want)
        assert {json.dumps(x, sort_keys=True) for x in lines} == {
            json.dumps(x, sort_keys=True) for x in want
        }
    table = run_cli("history", "alerts", "--dsn", pg_dsn, "--schema", store.schema, "--limit", "1")
    assert len(table.strip().splitlines()) == 2  # header and one row
    assert alerts[-1]["rule"] in table


def run_cli(*args: str) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tierstream", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parent,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_unreachable_database_is_a_clear_error() -> None:
    from tierstream.sinks.errors import HistoryError

    with pytest.raises(HistoryError, match="cannot connect"):
        await HistoryStore("postgresql://postgres@127.0.0.1:1/test").start()
