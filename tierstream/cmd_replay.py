"""``tierstream replay``: the pipeline's windows over the stored access stream."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click
import orjson

from tierstream.cli import main, redis_option
from tierstream.cmd_worker import window_env, window_options
from tierstream.settings import Settings


def _t(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


@main.command()
@redis_option
@click.option("--since", required=True, help="Start: ISO 8601, or an age like 2h, 30m.")
@click.option("--until", default=None, help="End (exclusive; default now).")
@click.option("--json", "as_json", is_flag=True, help="WindowSummary JSON lines.")
@window_options
def replay(redis_url: str, since: str, until: str | None, as_json: bool, **options: Any) -> None:
    """Recompute window summaries from the stored access stream (events with
    since <= ts < until), with the live pipeline's own code."""
    from tierstream.processors.pipeline.app import config_from
    from tierstream.processors.pipeline.replay import parse_time
    from tierstream.processors.pipeline.replay import replay as run

    settings = Settings.from_env({**os.environ, **window_env(options)})
    now = time.time()
    try:
        t0 = parse_time(since, now)
        t1 = parse_time(until, now) if until else now
        res = asyncio.run(run(redis_url, config_from(settings), t0, t1))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if as_json:
        out = sys.stdout.buffer
        for s in res.summaries:
            out.write(orjson.dumps(s) + b"\n")
        out.flush()
    else:
        click.echo(
            f"{'view':<9} {'window start (UTC)':<19} {'len':>5} {'events':>8} {'late':>5} "
            f"{'hit rate':>8} {'cache':>7} {'p50 ms':>8} {'p99 ms':>8}  top query"
        )
        for s in res.summaries:
            top = s["hot_queries"][0] if s["hot_queries"] else None
            top_s = f"{top['query'] or top['fingerprint']} ({top['count']})" if top else "-"
            click.echo(
                f"{s['view']:<9} {_t(s['window_start']):<19} {s['window_s']:>5.0f} "
                f"{s['events']:>8} {s['late_events']:>5} {_pct(s['hit_rate']):>8} "
                f"{_pct(s['cache_effectiveness']):>7} {_ms(s['latency']['p50_ms']):>8} "
                f"{_ms(s['latency']['p99_ms']):>8}  {top_s}"
            )
    click.echo(
        f"replayed {res.events} events in {res.entries} entries of {res.partitions} partitions "
        f"({_t(res.since)} .. {_t(res.until)} UTC); {res.bad_events} invalid events skipped",
        err=True,
    )
