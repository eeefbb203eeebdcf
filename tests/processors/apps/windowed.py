"""Tumbling-window count keyed by the message key, windowed on the message timestamp.

``events`` (``PARTITIONS`` partitions, JSON values, string keys) -> agent
``count_events`` -> ``window_counts``: a table tumbling over ``WINDOW_SIZE``
seconds (default 10) that expires after ``WINDOW_EXPIRES`` seconds (default
3600). With no ``relative_to_*`` option, Faust windows each event by its
message timestamp, which the redis:// transport takes from the entry's ``t``
field (milliseconds).

``GET /state/`` returns ``{"ready": ..., "windows": [[key, start, end, count], ...]}``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from faust import StreamT

from apps.common import PARTITIONS, add_state_page, env_float, make_app

EVENTS_TOPIC = "events"
TABLE = "window_counts"
WINDOW_SIZE = env_float("WINDOW_SIZE", 10.0)
WINDOW_EXPIRES = env_float("WINDOW_EXPIRES", 3600.0)

app = make_app("windowed")
events = app.topic(EVENTS_TOPIC, key_type=str, partitions=PARTITIONS)
window_counts = app.Table(TABLE, default=int, partitions=PARTITIONS).tumbling(
    WINDOW_SIZE, expires=timedelta(seconds=WINDOW_EXPIRES)
)


@app.agent(events)
async def count_events(stream: StreamT[dict[str, Any]]) -> None:
    async for event in stream.events():
        window_counts[event.key] += 1


def _state() -> dict[str, Any]:
    rows = [
        [str(key), float(start), float(end), int(count)]
        for (key, (start, end)), count in window_counts.table.data.items()
    ]
    return {"windows": sorted(rows)}


add_state_page(app, _state)
