"""The live pipeline as a Faust app on redis:// (``faust -A tierstream.processors.pipeline.app
worker``, or ``tierstream worker``).

Settings come from the environment once, here, at import (this module is an
edge, like the CLI): :class:`tierstream.settings.Settings` (``TIERSTREAM_*``),
plus ``TIERSTREAM_APP_ID`` (consumer group, default ``tierstream-pipeline``)
and ``TIERSTREAM_COMMIT_INTERVAL`` (seconds, default 1.0).

Topics and tables:

- ``tierstream.access`` (``access_partitions``, raw values): agent
  :func:`aggregate` reads whole stream entries (one entry = many events),
  never single events, and feeds :class:`.live.AggregateRuntime`;
- ``tierstream.window-partials`` (1 partition, JSON): agent :func:`merge`
  feeds :class:`.live.MergeRuntime`, the single merge owner;
- ``tierstream.window-summaries`` (1 partition, JSON): WindowSummary records;
- tables ``tierstream-window-marks`` (per access partition: the recovery
  state of its windows) and ``tierstream-window-merge`` (the merger's
  partials), both written only when windows open, close or merge.

A timer every 0.5 s closes windows by wall clock on caught-up partitions and
merges windows whose merge timeout passed.

Garbage collector (:func:`tune_gc`, once the worker has started). Every
decoded event is a dozen or more dicts and lists, so one 1000-event entry
allocates some 30,000 GC-tracked containers, which all die by reference
count when the entry is done. With CPython's default gen0 threshold (700)
the collector runs dozens of times per entry, promotes the events alive at
that moment and keeps walking the older generations. Measured in-process
(decode + validate + window add, 300,000 events, this 2-core machine): 22
us/event with the default, 15 with gen0 at 50,000 (within noise of the GC
off). So:

- gen0 threshold :data:`GC_GEN0_THRESHOLD` (100,000, above what one entry
  has alive at once: the gen0 count is allocations minus deallocations, so
  an entry's garbage is gone before a collection would see it);
- ``gc.freeze()`` after start-up: the ~90,000 objects of the imports and of
  Faust's start leave the collector's view (a full collection of them took
  70 ms; after the freeze it is free);
- a young collection every :data:`GC_YOUNG_EVERY_S` and a full one every
  :data:`GC_FULL_EVERY` of those, for whatever garbage is cyclic. They were
  added for ``HdrHistogram`` (a 188 KB counts array; made per decoded partial
  and per summary), which sat in a reference cycle inside hdrh: with the high
  threshold alone nothing collected them (worker peak RSS 430 MB instead of
  170 MB on 200,000 events). ``processors/aggregate/latency.py`` now breaks
  that cycle, so histograms are freed by reference counting; whether the
  periodic collections are still needed has not been measured.

Web views (JSON): ``/tierstream/windows/current`` (base windows not merged
yet, with the partials so far, and each partition's open windows),
``/tierstream/windows/last`` (the last summary of each view) and
``/tierstream/windows/top`` (hot queries of the last tumbling window).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Mapping
from typing import Any

import faust
from faust.types import TP, StreamT
from faust.web import Request, Response, View

from tierstream import native
from tierstream.settings import Settings

from ...schemas import names
from .config import PipelineConfig
from .live import AggregateRuntime, MergeRuntime

logger = logging.getLogger(__name__)

TICK_S = 0.5
#: gen0 threshold of the worker's garbage collector (see the module docstring)
GC_GEN0_THRESHOLD = 100_000
#: young generations collected this often, s; everything every GC_FULL_EVERY times
GC_YOUNG_EVERY_S = 1.0
GC_FULL_EVERY = 60
MARKS_TABLE = "tierstream-window-marks"
MERGE_TABLE = "tierstream-window-merge"


def config_from(settings: Settings, env: Mapping[str, str] | None = None) -> PipelineConfig:
    """The pipeline's config from the settings, plus ``TIERSTREAM_MAX_AHEAD_S``
    (far-future limit, default 300) from ``env`` (default: the environment)."""
    env = os.environ if env is None else env
    return PipelineConfig(
        max_ahead_s=float(env.get("TIERSTREAM_MAX_AHEAD_S", "300")),
        window_s=settings.window_s,
        hop_size_s=settings.hop_size_s,
        hop_step_s=settings.hop_step_s,
        grace_s=settings.grace_s,
        lateness_s=settings.lateness_s,
        merge_timeout_s=settings.merge_timeout_s,
        partitions=settings.access_partitions,
        capacity=settings.hot_queries_capacity,
        costs=dict(settings.tier_costs),
    )


SETTINGS = Settings.from_env(os.environ)
CONFIG = config_from(SETTINGS)

app = faust.App(
    os.environ.get("TIERSTREAM_APP_ID", "tierstream-pipeline"),
    broker=SETTINGS.redis_url,
    store="memory://",
    broker_commit_interval=float(os.environ.get("TIERSTREAM_COMMIT_INTERVAL", "1.0")),
    web_host="127.0.0.1",
    autodiscover=False,
)

access_topic = app.topic(
    names.ACCESS_TOPIC,
    partitions=CONFIG.partitions,
    key_serializer="raw",
    value_serializer="raw",
)
partials_topic = app.topic(names.WINDOW_PARTIALS_TOPIC, partitions=1, value_serializer="json")
summaries_topic = app.topic(names.WINDOW_SUMMARIES_TOPIC, partitions=1, value_serializer="json")

# Keys are str, values JSON objects (Faust's default table serializer is JSON).
marks_table = app.Table(MARKS_TABLE, partitions=CONFIG.partitions, key_type=str)
merge_table = app.Table(MERGE_TABLE, partitions=1, key_type=str)

aggregation = AggregateRuntime(app, CONFIG, marks_table, partials_topic, SETTINGS.redis_url)
merging = MergeRuntime(app, CONFIG, merge_table, summaries_topic)


@app.agent(access_topic)
async def aggregate(stream: StreamT[bytes]) -> None:
    """One stream entry (a batch of events) at a time."""
    async for event in stream.events():
        msg = event.message
        await aggregation.on_entry(msg.partition, msg.offset, event.value, msg.timestamp)


@app.agent(partials_topic)
async def merge(stream: StreamT[dict[str, Any]]) -> None:
    async for value in stream:
        await merging.on_partial(value)


@app.task
async def tune_gc() -> None:
    """When the worker has started: see "Garbage collector" above."""
    logger.info("tierstream worker: %s", native.describe())
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)
    n = 0
    while True:
        await asyncio.sleep(GC_YOUNG_EVERY_S)
        n += 1
        gc.collect(2 if n % GC_FULL_EVERY == 0 else 1)


@app.timer(interval=TICK_S)
async def close_by_clock() -> None:
    await aggregation.tick()
    await merging.tick()


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
    aggregation.forget(revoked)
    merging.forget(revoked)


@app.page("/tierstream/windows/current")
async def current_view(web: View, request: Request) -> Response:
    return web.json({**merging.view_current(), "aggregate": aggregation.view()})


@app.page("/tierstream/windows/last")
async def last_view(web: View, request: Request) -> Response:
    return web.json(merging.view_last())


@app.page("/tierstream/windows/top")
async def top_view(web: View, request: Request) -> Response:
    return web.json(merging.view_top())


def main() -> None:
    """Run Faust's command line for this app (``worker``, ``--web-port``, ...)."""
    app.main()


from . import sinks  # noqa: E402, F401  (registers the sink agents, /metrics)
