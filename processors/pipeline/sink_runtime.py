"""The sink runtimes of the live app: suggestions, alerts, history, ``/metrics``.

Like :mod:`.live`, nothing here imports the Faust app: :mod:`.sinks` hands in
the topics and the table. The pure engines (``sinks.suggest``,
``sinks.alerts``) do the thinking; these classes feed them, publish what they
return and keep their state.

Who does what with several workers. Every 1-partition topic of the app
(partials, summaries, metrics, suggestions, alerts) and the 1-partition sink
state table are co-partitioned by Faust's assignor, so one worker (the owner
of ``tierstream.window-summaries`` partition 0) receives every summary and
metric event, runs the engines, publishes each Suggestion and Alert once and
writes history. The publisher drop-rate poll runs only on that owner too.
``/metrics`` answers on every worker with that worker's own counters (events
it aggregated, lag of its partitions) plus the shared numbers read from Redis
(last summary, dead letters, publishers); alerts firing are known on the owner.

Order of effects (as in :mod:`.live`): records are sent and acknowledged by
Redis, then the engine's state is written to the table, then the input is
acknowledged. A crash in between re-delivers the input to a restored engine
that publishes the same records again (at-least-once; history dedups them).
An input not newer than the engine's last window changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from faust.types import TP, AppT, TableT, TopicT
from redis.exceptions import RedisError

from ...schemas import names
from ...schemas.errors import ValidationError
from ...schemas.metric import METRIC_TYPE, validate_metric
from ...sinks.alerts import AlertEvaluator
from ...sinks.metrics import MetricsState
from ...sinks.publishers import drop_rate_metrics, read_publisher_stats
from ...sinks.rules import Rule
from ...sinks.suggest import SuggestConfig, SuggestionEngine
from .live import ready, table_put

logger = logging.getLogger(__name__)

SUGGEST_KEY = "suggest"
ALERTS_KEY = "alerts"
#: summaries read back from the stream to find the last one for ``/metrics``
LAST_SUMMARY_SCAN = 64


def decode_records(value: bytes | None) -> tuple[list[dict[str, Any]], str | None]:
    """A topic value as records: one JSON object or an array of objects.
    Returns ``(records, problem)``; ``problem`` says why nothing was decoded."""
    if not value:
        return [], "empty value"
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return [], f"value is not valid JSON: {exc}"
    items = obj if isinstance(obj, list) else [obj]
    if not all(isinstance(x, dict) for x in items):
        return [], "value must be a JSON object or an array of objects"
    for x in items:
        x.pop("__faust", None)
    return items, None


def _topic_names(channel: Any) -> tuple[str, ...]:
    return tuple(getattr(channel, "topics", ()) or ())


class SinkRuntime:
    """SuggestionEngine and AlertEvaluator on the owner of the summaries partition."""

    def __init__(
        self,
        app: AppT,
        table: TableT,
        suggestions: TopicT,
        alerts: TopicT,
        metrics: TopicT,
        rules: Sequence[Rule],
        suggest_config: SuggestConfig,
        redis_url: str,
        summaries_topic: str = names.WINDOW_SUMMARIES_TOPIC,
    ) -> None:
        self.app = app
        self.table = table
        self.suggestions = suggestions
        self.alerts = alerts
        self.metrics = metrics
        self.rules = list(rules)
        self.suggest_config = suggest_config
        self.redis_url = redis_url
        self.summaries_topic = summaries_topic
        self.engine: SuggestionEngine | None = None
        self.evaluator: AlertEvaluator | None = None
        self.suggest_lock = asyncio.Lock()
        self.alert_lock = asyncio.Lock()
        self.stats: Counter[str] = Counter()
        self._saved: dict[str, bytes] = {}
        self._declared: set[str] = set()
        self._publishers: dict[str, dict[str, float]] | None = None
        self._client: aioredis.Redis | None = None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.redis_url)
        return self._client

    def owner(self) -> bool:
        """True on the worker that holds the summaries partition (and is not rebalancing)."""
        return ready(self.app) and TP(self.summaries_topic, 0) in self.app.consumer.assignment()

    def forget(self, tps: Iterable[TP]) -> None:
        """Summaries partition revoked: the engines are restored from the table when it returns."""
        if any(tp.topic == self.summaries_topic for tp in tps):
            self.engine = None
            self.evaluator = None
            self._saved.clear()

    def _engine(self) -> SuggestionEngine:
        if self.engine is None:
            state = self.table.data.get(SUGGEST_KEY)
            if state:
                self.engine = SuggestionEngine.from_dict(state)
                self.engine.config = self.suggest_config  # today's settings win
            else:
                self.engine = SuggestionEngine(self.suggest_config)
        return self.engine

    def _evaluator(self) -> AlertEvaluator:
        if self.evaluator is None:
            state = self.table.data.get(ALERTS_KEY)
            self.evaluator = (
                AlertEvaluator.from_dict(state, self.rules) if state else AlertEvaluator(self.rules)
            )
        return self.evaluator

    # --- the agents ------------------------------------------------------------------

    async def on_summary_suggest(self, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
        async with self.suggest_lock:
            engine = self._engine()
            out = engine.observe(summary)
            await self._send(self.suggestions, out)
            self.stats["suggestions"] += len(out)
            self._save(SUGGEST_KEY, engine.to_dict())
            return out

    async def on_alert_input(self, value: bytes | None) -> list[dict[str, Any]]:
        """One entry of the summaries or metrics topic (the alert agent reads both)."""
        records, problem = decode_records(value)
        if problem is not None:
            await self._dead_letter(names.METRICS_TOPIC, problem, value or b"")
            return []
        out: list[dict[str, Any]] = []
        async with self.alert_lock:
            ev = self._evaluator()
            for rec in records:
                if rec.get("record_type") == METRIC_TYPE:
                    try:
                        metric = validate_metric(rec)
                    except ValidationError as exc:
                        await self._dead_letter(names.METRICS_TOPIC, str(exc), orjson.dumps(rec))
                        continue
                    self.stats["metric_events"] += 1
                    out += ev.observe_metric(metric)
                elif "window_end" in rec and "tiers" in rec:
                    out += ev.observe(rec)
                else:
                    await self._dead_letter(
                        names.METRICS_TOPIC, "not a Metric event", orjson.dumps(rec)
                    )
            await self._send(self.alerts, out)
            self.stats["alerts"] += len(out)
            self._save(ALERTS_KEY, ev.to_dict())
        return out

    # --- the timer ----------------------------------------------------------------------

    async def poll_publishers(self, now: float | None = None) -> int:
        """On the owner: publisher drop rates since the last poll, as Metric events on the
        metrics topic (the alert agent evaluates them from there, like any metric)."""
        if not self.owner():
            self._publishers = None
            return 0
        try:
            current = await read_publisher_stats(self.client)
        except RedisError as exc:
            logger.warning("could not read publisher stats: %s", exc)
            return 0
        events = drop_rate_metrics(current, self._publishers, time.time() if now is None else now)
        self._publishers = current
        await self._send(self.metrics, events)
        return len(events)

    # --- helpers ------------------------------------------------------------------------

    async def _send(self, topic: TopicT, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        name = topic.get_topic_name()
        if name not in self._declared:
            # Only written: Faust would not declare it with one partition by itself.
            await topic.maybe_declare()
            self._declared.add(name)
        futures = [await topic.send(value=r) for r in records]
        for fut in futures:
            await fut

    def _save(self, key: str, state: dict[str, Any]) -> None:
        raw = orjson.dumps(state)
        if self._saved.get(key) != raw:
            table_put(self.table, 0, key, state)
            self._saved[key] = raw

    async def _dead_letter(self, topic: str, reason: str, raw: bytes) -> None:
        self.stats["dead_letters"] += 1
        logger.warning("dead letter on %s: %s", topic, reason)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.xadd(
                    names.dead_letter_key(topic),
                    {"reason": reason, "stream": names.stream_key(topic, 0), "v": raw},
                )
                pipe.incr(names.dead_letter_count_key(topic))
                await pipe.execute()
        except RedisError as exc:
            logger.error("could not dead-letter a record of %s (%s): %s", topic, reason, exc)

    # --- /metrics -----------------------------------------------------------------------

    async def metrics_state(self, events_processed: int) -> MetricsState:
        """What ``/metrics`` shows now (see the module docstring for whose numbers)."""
        consumer = self.app.consumer
        lag: dict[tuple[str, int], int] = {}
        # Lag of what the agents read; changelogs are read only while recovering.
        sources = {t for agent in self.app.agents.values() for t in _topic_names(agent.channel)}
        tps = sorted(tp for tp in consumer.assignment() if tp.topic in sources)
        if not ready(self.app):
            tps = []
        if tps:
            highwaters = await consumer.highwaters(*tps)
            for tp in tps:
                pos = await consumer.position(tp)
                if pos is not None:
                    lag[(tp.topic, tp.partition)] = max(0, highwaters.get(tp, 0) - pos)
        firing: Counter[str] = Counter()
        if self.evaluator is not None and self.owner():
            firing.update(a["severity"] for a in self.evaluator.firing())
        return MetricsState(
            last_summary=await self.last_summary(),
            events_processed=events_processed,
            consumer_lag=lag,
            dead_letters=await self._dead_letter_counts(),
            publishers=await read_publisher_stats(self.client),
            alerts_firing=dict(firing),
            suggestions_published=self.stats["suggestions"],
        )

    async def last_summary(self) -> dict[str, Any] | None:
        """The newest tumbling summary on the summaries topic (highest window, then revision)."""
        key = names.stream_key(self.summaries_topic, 0)
        entries: Any = await self.client.xrevrange(key, count=LAST_SUMMARY_SCAN)
        best: dict[str, Any] | None = None
        for _id, fields in entries:
            recs, _problem = decode_records(fields.get(b"v"))
            for s in recs:
                if s.get("view", "tumbling") != "tumbling" or "window_start" not in s:
                    continue
                rank = (s["window_start"], s.get("revision", 0))
                if best is None or rank > (best["window_start"], best.get("revision", 0)):
                    best = s
        return best

    async def _dead_letter_counts(self) -> dict[str, int]:
        prefix = names.dead_letter_count_key("")[:-2]  # "ts:dlq-count:"
        out: dict[str, int] = {}
        async for raw in self.client.scan_iter(match=f"{prefix}*", count=500):
            key = raw.decode() if isinstance(raw, bytes) else raw
            value = await self.client.get(key)
            topic = key[len(prefix) :].strip("{}")
            if value is not None:
                out[topic] = int(value)
        return out
