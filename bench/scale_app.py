"""The table-updating Faust app that bench/scale.py runs as worker processes.

Topic ``$TOPIC`` (``$PARTITIONS`` partitions, raw values): each entry is a
JSON array of events ``{"k": key}``; the agent counts the events per key in
table ``counts``, one table update per key per entry (batch work, as the
pipeline does), so 1,000,000 events make far fewer changelog writes. Keys
of partition p are only ever on partition p (the table is co-partitioned).
Settings from the environment: ``BROKER_URL``, ``APP_ID``, ``TOPIC``,
``PARTITIONS``, ``BROKER_SESSION_TIMEOUT`` (default 4 s).
"""

from __future__ import annotations

import os
from collections import Counter

import faust
import orjson
from faust.types import StreamT

PARTITIONS = int(os.environ.get("PARTITIONS", "8"))

app = faust.App(
    os.environ.get("APP_ID", "scale"),
    broker=os.environ["BROKER_URL"],
    store="memory://",
    topic_partitions=PARTITIONS,
    broker_commit_interval=0.5,
    broker_session_timeout=float(os.environ.get("BROKER_SESSION_TIMEOUT", "4.0")),
    broker_heartbeat_interval=0.3,
    web_enabled=False,
    autodiscover=False,
)
events = app.topic(
    os.environ.get("TOPIC", "scale-events"),
    partitions=PARTITIONS,
    key_serializer="raw",
    value_serializer="raw",
)
counts = app.Table("counts", default=int, partitions=PARTITIONS, key_type=str, value_type=int)


@app.agent(events)
async def count(stream: StreamT[bytes]) -> None:
    async for value in stream:
        for key, n in Counter(e["k"] for e in orjson.loads(value)).items():
            counts[key] += n
