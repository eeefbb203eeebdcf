"""A counting table whose changelog is compacted early (for compaction tests).

``items`` (keys ``k<n>``, values ignored) -> agent ``count`` -> table
``item_counts``. Compaction runs every 0.5 s once a changelog partition has
more than ``COMPACT_MIN`` (default 300) entries.

``GET /state/`` returns ``{"ready": ..., "counts": {key: n}}``.
"""

from __future__ import annotations

from typing import Any

from faust import StreamT
from tierstream.processors.transport import compaction

from apps.common import PARTITIONS, add_state_page, env_int, make_app

compaction.MIN_LENGTH = env_int("COMPACT_MIN", 300)
compaction.INTERVAL = 0.5

app = make_app("compacting")
items = app.topic("items", key_type=str, value_type=str, partitions=PARTITIONS)
item_counts = app.Table("item_counts", default=int, partitions=PARTITIONS)


@app.agent(items)
async def count(stream: StreamT[str]) -> None:
    async for event in stream.events():
        item_counts[event.key] += 1


def _state() -> dict[str, Any]:
    return {"counts": {str(k): int(v) for k, v in item_counts.items()}}


add_state_page(app, _state)
