"""The ``tierstream`` command: thin verbs over the library.

Settings come from the environment once, here (``Settings.from_env``), and
from options; nothing below reads ``os.environ``.
"""

from __future__ import annotations

import asyncio
import os
import sys

import click

from tierstream.settings import Settings

redis_option = click.option(
    "--redis-url",
    envvar="TIERSTREAM_REDIS_URL",
    default=Settings.redis_url,
    show_default=True,
    help="Redis (>= 7.0) carrying the topics. Env: TIERSTREAM_REDIS_URL.",
)


@click.group()
@click.version_option(package_name="tierstream")
def main() -> None:
    """tierstream: see and improve how AI agents use tiered memory."""


@main.command()
@redis_option
@click.option("--topic", default=None, help="Topic to publish to (default tierstream.access).")
@click.option(
    "--max-buffer",
    default=1_000_000,
    show_default=True,
    help="Events held while Redis is slow; beyond it lines are dropped and counted.",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    help="Seconds to wait at the end for Redis to acknowledge everything.",
)
def publish(redis_url: str, topic: str | None, max_buffer: int, timeout: float) -> None:
    """Publish MEMORY_TIER_ACCESS events read as JSON lines from standard input.

    Bad lines are reported on standard error with their line number and field;
    good lines are still published. Exit code: 0 all published, 1 some line was
    bad, 2 some events could not be delivered to Redis.
    """
    from tierstream.producers.jsonl import LineReport, parse_lines
    from tierstream.producers.publisher import Publisher
    from tierstream.schemas.names import ACCESS_TOPIC

    report = LineReport()

    async def run() -> Publisher:
        pub = Publisher(
            redis_url, topic=topic or ACCESS_TOPIC, max_buffer=max_buffer, close_timeout=timeout
        )
        await pub.start()
        for event in parse_lines(sys.stdin.buffer, report):
            pub.emit(event)
            if pub.buffered >= 10_000:
                await asyncio.sleep(0)  # let the writer run while we read
        await pub.close()
        return pub

    pub = asyncio.run(run())
    for err in report.errors:
        click.echo(f"error: {err}", err=True)
    click.echo(
        f"published {pub.stats.sent} events, {len(report.errors)} bad lines, "
        f"{pub.stats.dropped} undelivered",
        err=True,
    )
    if pub.stats.dropped or pub.stats.sent < report.good:
        sys.exit(2)
    if report.errors:
        sys.exit(1)


@main.command()
@redis_option
@click.option("--duration", default=100.0, show_default=True, help="Seconds of traffic.")
@click.option("--agents", default=4, show_default=True, help="Simulated agents.")
@click.option(
    "--postgres-dsn",
    envvar="TIERSTREAM_POSTGRES_DSN",
    default=None,
    help="PostgreSQL for the L2 tier (default: try the local one, else embedded "
    "SQLite). Env: TIERSTREAM_POSTGRES_DSN.",
)
def demo(redis_url: str, duration: float, agents: int, postgres_dsn: str | None) -> None:
    """The whole pipeline: a worker, simulated agents, an L1 incident, live results."""
    from tierstream.demo import DemoConfig, run_demo

    settings = Settings.from_env(os.environ)
    cfg = DemoConfig(
        redis_url=redis_url,
        postgres_dsn=postgres_dsn,
        duration_s=duration,
        agents=agents,
        chroma_path=settings.chroma_path,
    )
    sys.exit(asyncio.run(run_demo(cfg)))


from tierstream import cmd_history  # noqa: E402, F401, I001  (registers `tierstream history`)
from tierstream import cmd_subscribe  # noqa: E402, F401  (registers `tierstream subscribe`)
from tierstream import cmd_worker, cmd_replay  # noqa: E402, F401  (registers `tierstream worker`, `replay`)
