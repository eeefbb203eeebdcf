"""What every test app shares: configuration from the environment and a ``/state/`` page.

Environment variables:

``BROKER_URL`` (required)
    ``redis://host:port/db`` of the test's own Redis database.
``APP_ID``
    Faust app id (also the consumer group id); default: the module's name.
``PARTITIONS``
    Partitions of every topic and changelog (default 8).
``COMMIT_INTERVAL``
    ``broker_commit_interval`` in seconds (default 0.5).
``EXIT_WITH_PARENT``
    A process id: the worker exits when its parent is no longer that process
    (the test runner died without killing it), so no worker outlives its test.

The web port and data directory come from the worker's command line
(``--web-port``, ``--datadir``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import faust
from faust.web import Request, Response, View


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


PARTITIONS = env_int("PARTITIONS", 8)


def make_app(default_id: str, **conf: Any) -> faust.App:
    """A Faust app on ``$BROKER_URL`` with in-memory table stores (state lives in changelogs)."""
    app = faust.App(
        os.environ.get("APP_ID", default_id),
        broker=os.environ["BROKER_URL"],
        store="memory://",
        topic_partitions=PARTITIONS,
        broker_commit_interval=env_float("COMMIT_INTERVAL", 0.5),
        # Group membership (several workers): a crashed worker's partitions
        # move after the session timeout; Faust's 60 s default is too slow here.
        broker_session_timeout=env_float("BROKER_SESSION_TIMEOUT", 4.0),
        broker_heartbeat_interval=env_float("BROKER_HEARTBEAT_INTERVAL", 0.3),
        web_host="127.0.0.1",
        autodiscover=False,
        **conf,
    )
    parent = os.environ.get("EXIT_WITH_PARENT")
    if parent:

        @app.timer(interval=1.0)
        async def exit_with_parent() -> None:
            if os.getppid() != int(parent):
                os._exit(3)

    return app


def is_ready(app: faust.App) -> bool:
    """True once the worker has partitions, is not rebalancing, and tables are recovered."""
    consumer = app.consumer
    tables: Any = app.tables  # the TableManager (its interface type lacks .recovery)
    return bool(
        not app.rebalancing
        and tables.recovery.completed.is_set()
        and consumer is not None
        and consumer.assignment()
    )


def add_state_page(app: faust.App, state: Callable[[], dict[str, Any]]) -> None:
    """Serve ``GET /state/``: ``{"ready": bool, "assigned": [...], **state()}`` as JSON."""

    @app.page("/state/")
    async def state_page(web: View, request: Request) -> Response:
        ready = is_ready(app)
        assigned = (
            sorted(f"{tp.topic}:{tp.partition}" for tp in app.consumer.assignment())
            if ready
            else []
        )
        return web.json({"ready": ready, "assigned": assigned, **state()})
