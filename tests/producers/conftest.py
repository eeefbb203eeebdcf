"""Fixtures for the tier and TieredMemory tests: a recording sink, PostgreSQL
tables that are dropped afterwards, and one embedded Chroma per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import chromadb
import pytest
from chromadb.api import ClientAPI
from chromadb.config import Settings
from tierstream.schemas.access import validate_access


class RecordingSink:
    """An EventSink that keeps every event it is given, in order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: Any) -> None:
        self.events.append(event)

    @property
    def last(self) -> dict[str, Any]:
        assert self.events, "no event was emitted"
        return self.events[-1]


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    """A recording sink; every event it received must validate."""
    recorder = RecordingSink()
    yield recorder
    for event in recorder.events:
        validate_access(event)


@pytest.fixture
async def pg_table(pg_dsn: str, unique: str) -> AsyncIterator[str]:
    """A table name of this test's own; the table is dropped afterwards."""
    yield unique
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {unique}")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def chroma_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClientAPI]:
    """One embedded Chroma per module (creating it is the slow part); use a
    unique collection per test."""
    path: Path = tmp_path_factory.mktemp("chroma")
    client = chromadb.PersistentClient(str(path), settings=Settings(anonymized_telemetry=False))
    yield client
    client.close()  # type: ignore[attr-defined]  # Client has it; ClientAPI does not say
