"""The sink agents of the live app (registered by the last line of :mod:`.app`).

Agents, on the worker that owns the summaries partition (see
:mod:`.sink_runtime` for why that makes every record produced once):

- ``suggest``: tumbling WindowSummary records -> :class:`SuggestionEngine`
  -> Suggestion records on ``tierstream.suggestions``; engine state in the
  table ``tierstream-sinks`` (key ``suggest``).
- ``alert``: summaries and Metric events (``tierstream.metrics``: custom
  metrics any process publishes, and the publisher drop rates the
  ``poll_publishers`` timer derives from the publishers' stats hashes) ->
  :class:`AlertEvaluator` -> Alert records on ``tierstream.alerts``; state
  in the same table (key ``alerts``). Entries of the metrics topic that are
  not Metric events go to its dead-letter stream with the reason.
- ``history``: summaries, suggestions and alerts, read back from their
  topics in batches (up to 500 or 2 s) -> PostgreSQL
  (:class:`.history_sink.HistorySink`: policy for outages and defaults there).

Web views: ``/metrics`` (Prometheus text, ``sinks.metrics.render_metrics``)
and ``/tierstream/sinks`` (JSON: counters, alerts firing, history state).

Settings (environment, read once at import like :mod:`.app`):
``TIERSTREAM_ALERT_RULES`` (a TOML rule file; default the shipped
``sinks/default_rules.toml``; a bad file stops the worker at start with the
file, line and problem), ``TIERSTREAM_SUGGEST_MIN_READS`` (20),
``TIERSTREAM_POSTGRES_DSN`` (history database; default: the local one if it
answers), ``TIERSTREAM_HISTORY`` (``0`` = off), ``TIERSTREAM_HISTORY_SCHEMA``
(``tierstream``), ``TIERSTREAM_HISTORY_RETENTION_DAYS`` (30),
``TIERSTREAM_PUBLISHER_POLL_S`` (5).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from faust.types import TP, StreamT
from faust.web import Request, Response, View

from ...schemas import names
from ...sinks.errors import RuleFileError
from ...sinks.metrics import CONTENT_TYPE, render_metrics
from ...sinks.rules import Rule, load_default_rules, load_rules
from ...sinks.suggest import SuggestConfig
from .app import SETTINGS, aggregation, app
from .history_sink import HistorySink
from .sink_runtime import SinkRuntime

SINKS_TABLE = "tierstream-sinks"


@dataclass(frozen=True)
class SinkSettings:
    """The sink settings (module docstring), typed, from the environment once."""

    alert_rules: str | None = None
    suggest_min_reads: int = 20
    history: bool = True
    history_schema: str = "tierstream"
    history_retention_days: float = 30.0
    publisher_poll_s: float = 5.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SinkSettings:
        d = cls()
        return cls(
            alert_rules=env.get("TIERSTREAM_ALERT_RULES") or None,
            suggest_min_reads=int(env.get("TIERSTREAM_SUGGEST_MIN_READS", d.suggest_min_reads)),
            history=env.get("TIERSTREAM_HISTORY", "1").strip().lower()
            not in {"0", "false", "no", "off"},
            history_schema=env.get("TIERSTREAM_HISTORY_SCHEMA", d.history_schema),
            history_retention_days=float(
                env.get("TIERSTREAM_HISTORY_RETENTION_DAYS", d.history_retention_days)
            ),
            publisher_poll_s=float(env.get("TIERSTREAM_PUBLISHER_POLL_S", d.publisher_poll_s)),
        )

    def rules(self) -> list[Rule]:
        """The alert rules; a bad file stops the process with its file, line and problem."""
        try:
            return load_rules(self.alert_rules) if self.alert_rules else load_default_rules()
        except RuleFileError as exc:
            raise SystemExit(
                f"tierstream: bad alert rule file (TIERSTREAM_ALERT_RULES): {exc}"
            ) from None


SINK_SETTINGS = SinkSettings.from_env(os.environ)

suggestions_topic = app.topic(names.SUGGESTIONS_TOPIC, partitions=1, value_serializer="json")
alerts_topic = app.topic(names.ALERTS_TOPIC, partitions=1, value_serializer="json")
metrics_topic = app.topic(names.METRICS_TOPIC, partitions=1, value_serializer="json")
# Agent inputs: their own channels over the same streams. Faust decodes a
# message once for all the channels of a partition whose key and value
# *types* are equal, with the serializers of whichever channel its set
# iterates first: the raw channel must differ in type (bytes) from the json
# ones, or one of them gets the other's decoding (the suggest agent crashed
# on bytes when the set's order changed).
suggest_input = app.topic(names.WINDOW_SUMMARIES_TOPIC, partitions=1, value_serializer="json")
alert_input = app.topic(
    names.WINDOW_SUMMARIES_TOPIC,
    names.METRICS_TOPIC,
    partitions=1,
    key_type=bytes,
    value_type=bytes,
    key_serializer="raw",
    value_serializer="raw",  # decoded by the runtime: a bad metric entry is a dead letter
)
history_input = app.topic(
    names.WINDOW_SUMMARIES_TOPIC,
    names.SUGGESTIONS_TOPIC,
    names.ALERTS_TOPIC,
    partitions=1,
    value_serializer="json",
)

sinks_table = app.Table(SINKS_TABLE, partitions=1, key_type=str)

sinking = SinkRuntime(
    app,
    sinks_table,
    suggestions_topic,
    alerts_topic,
    metrics_topic,
    SINK_SETTINGS.rules(),
    SuggestConfig(min_reads=SINK_SETTINGS.suggest_min_reads),
    SETTINGS.redis_url,
)
history_sink = HistorySink(
    SETTINGS.postgres_dsn,
    enabled=SINK_SETTINGS.history,
    schema=SINK_SETTINGS.history_schema,
    retention_days=SINK_SETTINGS.history_retention_days,
)


@app.agent(suggest_input)
async def suggest(stream: StreamT[dict[str, Any]]) -> None:
    async for summary in stream:
        await sinking.on_summary_suggest(summary)


@app.agent(alert_input)
async def alert(stream: StreamT[bytes]) -> None:
    async for value in stream:
        await sinking.on_alert_input(value)


if SINK_SETTINGS.history:

    @app.agent(history_input)
    async def history(stream: StreamT[dict[str, Any]]) -> None:
        async for batch in stream.take(500, within=2.0):
            await history_sink.write(batch)


@app.timer(interval=SINK_SETTINGS.publisher_poll_s)
async def poll_publishers() -> None:
    await sinking.poll_publishers()


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _on_sinks_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    sinking.forget(revoked)


@app.page("/metrics")
async def metrics_view(web: View, request: Request) -> Response:
    state = await sinking.metrics_state(int(aggregation.stats["events"]))
    # aiohttp refuses a charset in content_type=; the full header goes in headers.
    return web.bytes(render_metrics(state).encode(), headers={"Content-Type": CONTENT_TYPE})


@app.page("/tierstream/sinks")
async def sinks_view(web: View, request: Request) -> Response:
    ev = sinking.evaluator
    return web.json(
        {
            "owner": sinking.owner(),
            "stats": dict(sinking.stats),
            "firing": ev.firing() if ev is not None else [],
            "history": {
                "enabled": history_sink.enabled,
                "database": history_sink.dsn.split("@")[-1],
                "written": history_sink.written,
                "failures": history_sink.failures,
            },
        }
    )
