"""``tierstream subscribe suggestions|alerts|summaries``: print a result topic."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from datetime import datetime
from typing import Any

import click
import orjson

from tierstream.cli import main, redis_option


def _t(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(float(ts)).strftime("%H:%M:%S")
    except (TypeError, ValueError):
        return "?"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.1%}"


def readable(rec: dict[str, Any]) -> str:
    """One human-readable line for a record of any result topic."""
    kind = rec.get("record_type")
    if kind == "suggestion":
        return (
            f"{_t(rec.get('created_ts'))} suggestion {rec.get('kind')} "
            f"(rev {rec.get('revision')}, confidence {rec.get('confidence', 0):.2f}): "
            f"{rec.get('message')}"
        )
    if kind == "alert":
        labels = ",".join(f"{k}={v}" for k, v in sorted((rec.get("labels") or {}).items()))
        return (
            f"{_t(rec.get('ts'))} alert {str(rec.get('state')).upper()} {rec.get('severity')} "
            f"{rec.get('rule')}{{{labels}}}: {rec.get('message')}"
        )
    if kind == "window_summary":
        tiers = " ".join(
            f"{n}:{_pct(t.get('hit_rate'))}/p95 {t.get('latency', {}).get('p95_ms')}ms"
            for n, t in sorted((rec.get("tiers") or {}).items())
        )
        return (
            f"{_t(rec.get('window_start'))} summary {rec.get('window_s')}s "
            f"reads={rec.get('reads')} hit={_pct(rec.get('hit_rate'))} "
            f"cache={_pct(rec.get('cache_effectiveness'))} "
            f"p95={(rec.get('latency') or {}).get('p95_ms')}ms  {tiers}"
        )
    if kind == "metric":
        labels = ",".join(f"{k}={v}" for k, v in sorted((rec.get("labels") or {}).items()))
        return f"{_t(rec.get('ts'))} metric {rec.get('name')}{{{labels}}} = {rec.get('value')}"
    return orjson.dumps(rec).decode()


@main.command()
@click.argument("what", type=click.Choice(["suggestions", "alerts", "summaries", "metrics"]))
@click.option("--from-beginning", is_flag=True, help="Start with everything stored.")
@click.option(
    "--follow",
    is_flag=True,
    help="Keep waiting for new records (Ctrl-C to stop). Without it: print what is "
    "stored and exit.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@redis_option
def subscribe(what: str, from_beginning: bool, follow: bool, as_json: bool, redis_url: str) -> None:
    """Print suggestions, alerts or window summaries as they are published."""
    from tierstream.sinks.subscribe import subscribe as open_subscription

    out = sys.stdout.buffer

    async def run() -> int:
        sub = open_subscription(what, from_beginning, redis_url, follow=follow)
        try:
            async for rec in sub:
                line = orjson.dumps(rec) if as_json else readable(rec).encode()
                out.write(line + b"\n")
                out.flush()
        finally:
            for problem in sub.stats.problems:
                click.echo(f"skipped: {problem}", err=True)
            await sub.close()
        return 0

    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(run()))
