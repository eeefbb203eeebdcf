"""Fixtures of the processor tests (the shared ones are in ``tests/conftest.py``)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tierstream.processors.transport import Consumer

# the tests' own modules (apps/, faustproc, transport_consumer), as the test files do
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
async def consumer(redis_url: str, unique: str) -> AsyncIterator[Consumer]:
    """A connected redis:// consumer outside a worker (``transport_consumer``)."""
    from transport_consumer import standalone_consumer

    async with standalone_consumer(redis_url, unique) as made:
        yield made
