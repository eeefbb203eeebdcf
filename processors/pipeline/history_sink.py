"""The history sink of the live app: summaries, suggestions and alerts into PostgreSQL.

:class:`HistorySink` wraps :class:`tierstream.sinks.history.HistoryStore` for
the history agent (:mod:`.sinks`), which reads the summaries, suggestions and
alerts topics in batches (on the worker that owns their single partitions)
and hands each batch to :meth:`HistorySink.write`.

Policy:

- *Which database.* A DSN given explicitly (``TIERSTREAM_POSTGRES_DSN``) is
  used and must work. Without one, the default local DSN is tried once, at the
  first batch: if it does not answer, history is off for the life of the
  worker (logged once at WARNING) and batches are acknowledged unwritten.
  ``TIERSTREAM_HISTORY=0`` turns history off.
- *Outages.* When writing fails (PostgreSQL down, restarted, refusing), the
  batch is kept and retried with exponential backoff (1 s doubling to 60 s),
  logging an ERROR that names the database and the number of records waiting
  at most once a minute. The agent waits meanwhile, so its offsets are not
  committed and nothing is lost (the records stay in their topics); the
  worker and its other agents keep running. The worker never exits because
  of PostgreSQL.
- *Duplicates.* Writes are idempotent (natural keys, see
  ``sinks/history.py``), so a batch written twice (retry after a lost reply,
  a re-delivery after a crash, a replay) adds no rows.
- *Retention.* ``retention_days`` is applied on start and then every
  ``retention_every_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from ...schemas.alert import ALERT_TYPE
from ...schemas.suggestion import SUGGESTION_TYPE
from ...schemas.summary import SUMMARY_TYPE
from ...sinks.errors import HistoryError
from ...sinks.history import HistoryStore

logger = logging.getLogger(__name__)

#: The default local PostgreSQL tried when no DSN is configured.
DEFAULT_DSN = "postgresql://127.0.0.1:5432/postgres"
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
LOG_EVERY_S = 60.0
_DB_ERRORS = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def where(dsn: str) -> str:
    """The DSN without credentials, for log lines."""
    return dsn.split("@")[-1]


class HistorySink:
    """Batched, idempotent history writes with the outage policy of the module docstring."""

    def __init__(
        self,
        dsn: str | None,
        *,
        enabled: bool = True,
        schema: str = "tierstream",
        retention_days: float | None = 30.0,
        retention_every_s: float = 3600.0,
        connect_timeout_s: float = 3.0,
    ) -> None:
        self.explicit = dsn is not None
        self.dsn = dsn or DEFAULT_DSN
        self.enabled = enabled
        self.schema = schema
        self.retention_days = retention_days
        self.retention_every_s = retention_every_s
        self.connect_timeout_s = connect_timeout_s
        self.store: HistoryStore | None = None
        self.written: dict[str, int] = {"summaries": 0, "suggestions": 0, "alerts": 0}
        self.failures = 0
        self._probed = False
        self._last_retention = 0.0
        self._last_log = 0.0

    async def _connect(self) -> HistoryStore:
        store = HistoryStore(self.dsn, schema=self.schema, retention_days=self.retention_days)
        await asyncio.wait_for(store.start(), self.connect_timeout_s * 3)
        self._last_retention = time.monotonic()
        logger.info(
            "history: writing to PostgreSQL at %s (schema %s)", where(self.dsn), self.schema
        )
        return store

    async def write(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Write one batch (summaries, suggestions, alerts mixed; others ignored).
        Returns rows inserted or revised; waits through outages (see module docstring)."""
        if not self.enabled:
            return 0
        batch = split(records)
        if not any(batch.values()):
            return 0
        if not self._probed and not self.explicit:
            self._probed = True
            try:
                self.store = await self._connect()
            except (*_DB_ERRORS, HistoryError) as exc:
                self.enabled = False
                logger.warning(
                    "history: off (no PostgreSQL answers at the default %s: %s); set "
                    "TIERSTREAM_POSTGRES_DSN to store summaries, suggestions and alerts",
                    where(self.dsn),
                    exc,
                )
                return 0
        delay = RETRY_FIRST_S
        while True:
            try:
                if self.store is None:
                    self.store = await self._connect()
                n = await self._write(batch)
                if self.failures:
                    logger.info("history: PostgreSQL at %s is back", where(self.dsn))
                self.failures = 0
                return n
            except (*_DB_ERRORS, HistoryError) as exc:
                self.failures += 1
                await self._drop_store()
                now = time.monotonic()
                if now - self._last_log >= LOG_EVERY_S or self.failures == 1:
                    self._last_log = now
                    logger.error(
                        "history: cannot write %d records to PostgreSQL at %s (%s: %s); "
                        "retrying (every <= %.0f s); they wait in their topics, the worker "
                        "keeps running",
                        sum(len(v) for v in batch.values()),
                        where(self.dsn),
                        type(exc).__name__,
                        exc,
                        RETRY_MAX_S,
                    )
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)

    async def _write(self, batch: dict[str, list[Mapping[str, Any]]]) -> int:
        store = self.store
        assert store is not None
        n = 0
        if batch["summaries"]:
            n += await store.write_summaries(batch["summaries"])
        if batch["suggestions"]:
            n += await store.write_suggestions(batch["suggestions"])
        if batch["alerts"]:
            n += await store.write_alerts(batch["alerts"])
        for k, v in batch.items():
            self.written[k] += len(v)
        if (
            self.retention_days is not None
            and time.monotonic() - self._last_retention >= self.retention_every_s
        ):
            self._last_retention = time.monotonic()
            deleted = await store.apply_retention()
            if any(deleted.values()):
                logger.info("history: retention deleted %s", deleted)
        return n

    async def _drop_store(self) -> None:
        if self.store is not None:
            store, self.store = self.store, None
            try:
                await asyncio.wait_for(store.close(), 5)
            except (*_DB_ERRORS, HistoryError) as exc:
                logger.debug("history: closing the broken pool: %s", exc)

    async def close(self) -> None:
        await self._drop_store()


def split(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Records by history table, by their ``record_type``."""
    out: dict[str, list[Mapping[str, Any]]] = {"summaries": [], "suggestions": [], "alerts": []}
    kinds = {SUMMARY_TYPE: "summaries", SUGGESTION_TYPE: "suggestions", ALERT_TYPE: "alerts"}
    for r in records:
        kind = kinds.get(str(r.get("record_type")))
        if kind is not None:
            out[kind].append(r)
    return out
