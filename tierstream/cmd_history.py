"""``tierstream history summaries|suggestions|alerts``: what the history sink stored."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click
import orjson

from tierstream.cli import main

DEFAULT_DSN = "postgresql://127.0.0.1:5432/postgres"
_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")


def parse_since(text: str, now: float) -> float:
    """Epoch seconds of ``30m``/``2h``/``7d`` ago, or of an ISO 8601 time (UTC if no zone)."""
    m = _AGO.match(text)
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use 30m, 2h, 7d or an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _t(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def table_row(kind: str, r: dict[str, Any]) -> list[str]:
    if kind == "summaries":
        return [
            _t(r["window_start"]),
            f"{r['window_s']:g}s",
            str(r["reads"]),
            _pct(r["hit_rate"]),
            _pct(r["cache_effectiveness"]),
            str(r["latency"]["p95_ms"]),
        ]
    if kind == "suggestions":
        subj = r["subject"]
        what = subj["query"] or subj["fingerprint"] or subj["tier"] or "-"
        per_day = r["estimated_saving"]["latency_ms_per_day"]
        return [
            _t(r["created_ts"]),
            r["kind"],
            str(what)[:40],
            "-" if per_day is None else f"{per_day / 1000:.1f}s",
            f"{r['confidence']:.2f}",
        ]
    labels = ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items()))
    return [_t(r["ts"]), r["state"], r["severity"], r["rule"], labels, f"{r['value']:.4g}"]


HEADERS = {
    "summaries": ["window start", "length", "reads", "hit rate", "cache eff.", "p95 ms"],
    "suggestions": ["created", "kind", "subject", "saves/day", "conf."],
    "alerts": ["time", "state", "severity", "rule", "labels", "value"],
}


def render_table(kind: str, records: list[dict[str, Any]]) -> str:
    rows = [HEADERS[kind]] + [table_row(kind, r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


@main.command()
@click.argument("kind", type=click.Choice(["summaries", "suggestions", "alerts"]))
@click.option("--since", default=None, help="30m, 2h, 7d or an ISO 8601 time.")
@click.option("--limit", default=50, show_default=True, help="Most records, newest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@click.option(
    "--dsn",
    envvar=["TIERSTREAM_HISTORY_DSN", "TIERSTREAM_POSTGRES_DSN"],
    default=DEFAULT_DSN,
    show_default=True,
    help="PostgreSQL holding the history. Env: TIERSTREAM_HISTORY_DSN, TIERSTREAM_POSTGRES_DSN.",
)
@click.option("--schema", default="tierstream", show_default=True, help="PostgreSQL schema.")
def history(kind: str, since: str | None, limit: int, as_json: bool, dsn: str, schema: str) -> None:
    """Window summaries, suggestions or alerts stored by the history sink."""
    from tierstream.sinks.errors import HistoryError
    from tierstream.sinks.history import HistoryStore

    since_ts = parse_since(since, time.time()) if since else None

    async def run() -> list[dict[str, Any]]:
        async with HistoryStore(dsn, schema=schema) as store:
            return await store.query(kind, since=since_ts, limit=limit)

    try:
        records = asyncio.run(run())
    except HistoryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if as_json:
        out = sys.stdout.buffer
        for r in records:
            out.write(orjson.dumps(r) + b"\n")
        out.flush()
    else:
        click.echo(render_table(kind, records))
