"""A redis:// consumer connected to Redis outside a worker, for the tests of
the fetch path (``_getmany``, ``_parse_some``) and of producing and consuming; its
``conftest`` fixture is ``consumer``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import faust
from tierstream.processors.transport import Consumer, Transport

log = logging.getLogger("test")


async def _noop(*args: Any, **kwargs: Any) -> None:
    return None


@asynccontextmanager
async def connected_consumer(app: faust.App) -> AsyncIterator[Consumer]:
    """``app``'s redis:// consumer with the transport connected (nothing
    assigned: tests set positions themselves); the client is closed after."""
    made = app.transport.create_consumer(
        callback=_noop, on_partitions_revoked=_noop, on_partitions_assigned=_noop
    )
    assert isinstance(made, Consumer)
    transport = app.transport
    assert isinstance(transport, Transport)
    await transport.connect(log, lambda: False)
    try:
        yield made
    finally:
        await transport.client.aclose()


@asynccontextmanager
async def standalone_consumer(redis_url: str, app_id: str) -> AsyncIterator[Consumer]:
    """The consumer of a new app ``app_id`` on ``redis_url`` (see
    :func:`connected_consumer`)."""
    async with connected_consumer(faust.App(app_id, broker=redis_url)) as made:
        yield made
