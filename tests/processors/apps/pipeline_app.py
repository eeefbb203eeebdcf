"""The live pipeline app (``tierstream.processors.pipeline.app``) for tests.

Adds what the shared test apps have: exit with the test runner
(``EXIT_WITH_PARENT``) and ``GET /state/`` (ready, assigned partitions, the
aggregate runtime's counters). ``ENTRY_DELAY`` (seconds, default 0) makes the
aggregate agent sleep before each entry, so a test can kill it mid-stream.
Settings come from ``TIERSTREAM_*`` like the real app.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from tierstream.processors.pipeline import app as pipeline

from apps.common import add_state_page, env_float

app = pipeline.app
DELAY = env_float("ENTRY_DELAY", 0.0)

if DELAY > 0:
    _on_entry = pipeline.aggregation.on_entry

    async def _slow_on_entry(
        p: int, offset: int, value: bytes | None, produced_at: float | None = None
    ) -> None:
        await asyncio.sleep(DELAY)
        await _on_entry(p, offset, value, produced_at)

    pipeline.aggregation.on_entry = _slow_on_entry  # type: ignore[method-assign]

_parent = os.environ.get("EXIT_WITH_PARENT")
if _parent:

    @app.timer(interval=1.0)
    async def exit_with_parent() -> None:
        if os.getppid() != int(_parent):
            os._exit(3)


def _state() -> dict[str, Any]:
    return pipeline.aggregation.view()


add_state_page(app, _state)
