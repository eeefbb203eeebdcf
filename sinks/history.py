"""History in PostgreSQL (asyncpg): window summaries, suggestions and alerts.

Responsible for: the tables (created or migrated on :meth:`HistoryStore.start`,
under a PostgreSQL schema of their own, default ``tierstream``; the applied
migrations are listed in its ``schema_version`` table; migrating takes an
advisory lock, so concurrent starts are safe and starting twice is a no-op);
batched writes; retention; and query helpers.

Writes are idempotent, so replaying records adds no duplicates. Natural keys:

- summaries: ``(window_start, window_s, view)``; a record with a higher
  ``revision`` (a revised summary) replaces the stored one, anything else
  (the same record again) changes nothing;
- suggestions: ``(id, created window_end)``: one row per publication;
- alerts: ``(id, state, severity)``: one row per state change of an episode
  (an escalation has a new severity).

Each ``write_*`` sends one statement per chunk of up to ``chunk`` records
(the batch travels as one JSON array) and returns the rows inserted or
updated. Retention (``retention_days``) deletes rows whose window end / event
time is older than that, on start and on :meth:`apply_retention`. Times are
stored as ``timestamptz``; the full record as ``jsonb``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import asyncpg
import orjson

from .errors import HistoryError

DEFAULT_SCHEMA = "tierstream"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

#: (version, SQL). Never edit an applied migration: append a new one.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE {s}.window_summaries (
            window_start timestamptz NOT NULL,
            window_end timestamptz NOT NULL,
            window_s double precision NOT NULL,
            view text NOT NULL,
            revision integer NOT NULL,
            reads bigint NOT NULL,
            hit_rate double precision,
            cache_effectiveness double precision,
            p95_ms double precision,
            cost double precision NOT NULL,
            record jsonb NOT NULL,
            written_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (window_start, window_s, view)
        );
        CREATE INDEX ON {s}.window_summaries (window_end);
        CREATE TABLE {s}.suggestions (
            id text NOT NULL,
            window_end timestamptz NOT NULL,
            revision integer NOT NULL,
            kind text NOT NULL,
            fingerprint text,
            tier text,
            benefit_ms double precision,
            latency_ms_per_day double precision,
            cost_change_per_day double precision,
            confidence double precision NOT NULL,
            record jsonb NOT NULL,
            written_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (id, window_end)
        );
        CREATE INDEX ON {s}.suggestions (window_end);
        CREATE TABLE {s}.alerts (
            id text NOT NULL,
            state text NOT NULL,
            severity text NOT NULL,
            rule text NOT NULL,
            metric text NOT NULL,
            labels jsonb NOT NULL,
            value double precision NOT NULL,
            threshold double precision NOT NULL,
            started_at timestamptz NOT NULL,
            resolved_at timestamptz,
            ts timestamptz NOT NULL,
            record jsonb NOT NULL,
            written_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (id, state, severity)
        );
        CREATE INDEX ON {s}.alerts (ts);
        """,
    ),
)
LATEST_VERSION = MIGRATIONS[-1][0]

_ROWS = "SELECT r FROM jsonb_array_elements($1::jsonb) AS r"
_INSERT = {
    "summaries": """
        INSERT INTO {s}.window_summaries AS t (window_start, window_end, window_s, view,
            revision, reads, hit_rate, cache_effectiveness, p95_ms, cost, record)
        SELECT to_timestamp((r->>'window_start')::float8), to_timestamp((r->>'window_end')::float8),
            (r->>'window_s')::float8, coalesce(r->>'view', 'tumbling'),
            coalesce((r->>'revision')::int, 0), (r->>'reads')::bigint, (r->>'hit_rate')::float8,
            (r->>'cache_effectiveness')::float8, (r->'latency'->>'p95_ms')::float8,
            (r->>'cost')::float8, r
        FROM rows
        ON CONFLICT (window_start, window_s, view) DO UPDATE SET
            window_end = EXCLUDED.window_end, revision = EXCLUDED.revision,
            reads = EXCLUDED.reads, hit_rate = EXCLUDED.hit_rate,
            cache_effectiveness = EXCLUDED.cache_effectiveness, p95_ms = EXCLUDED.p95_ms,
            cost = EXCLUDED.cost, record = EXCLUDED.record, written_at = now()
        WHERE t.revision < EXCLUDED.revision
    """,
    "suggestions": """
        INSERT INTO {s}.suggestions (id, window_end, revision, kind, fingerprint, tier,
            benefit_ms, latency_ms_per_day, cost_change_per_day, confidence, record)
        SELECT r->>'id', to_timestamp((r->'evidence'->>'window_end')::float8),
            (r->>'revision')::int, r->>'kind', r->'subject'->>'fingerprint',
            r->'subject'->>'tier', (r->'estimated_saving'->>'benefit_ms')::float8,
            (r->'estimated_saving'->>'latency_ms_per_day')::float8,
            (r->'estimated_saving'->>'cost_change_per_day')::float8,
            (r->>'confidence')::float8, r
        FROM rows
        ON CONFLICT DO NOTHING
    """,
    "alerts": """
        INSERT INTO {s}.alerts (id, state, severity, rule, metric, labels, value, threshold,
            started_at, resolved_at, ts, record)
        SELECT r->>'id', r->>'state', r->>'severity', r->>'rule', r->>'metric', r->'labels',
            (r->>'value')::float8, (r->>'threshold')::float8,
            to_timestamp((r->>'started_at')::float8),
            to_timestamp((r->>'resolved_at')::float8), to_timestamp((r->>'ts')::float8), r
        FROM rows
        ON CONFLICT DO NOTHING
    """,
}
#: table, time column used for --since, retention and ordering
_TABLES = {
    "summaries": ("window_summaries", "window_end"),
    "suggestions": ("suggestions", "window_end"),
    "alerts": ("alerts", "ts"),
}


class HistoryStore:
    """Reads and writes the history tables (see module docstring). Use ``async with``."""

    def __init__(
        self,
        dsn: str,
        schema: str = DEFAULT_SCHEMA,
        retention_days: float | None = None,
        chunk: int = 1000,
    ) -> None:
        if not _IDENT.match(schema):
            raise ValueError(f"schema name must match {_IDENT.pattern}, got {schema!r}")
        if retention_days is not None and retention_days <= 0:
            raise ValueError(f"retention_days must be > 0, got {retention_days}")
        self.dsn = dsn
        self.schema = schema
        self.retention_days = retention_days
        self.chunk = chunk
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> HistoryStore:
        """Connect, create or migrate the tables, apply retention."""
        try:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4)
        except (OSError, asyncpg.PostgresError) as exc:
            raise HistoryError(f"cannot connect to PostgreSQL for history: {exc}") from exc
        await self._migrate()
        if self.retention_days is not None:
            await self.apply_retention()
        return self

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> HistoryStore:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise HistoryError("HistoryStore is not started (use `async with` or start())")
        return self._pool

    async def _migrate(self) -> None:
        s = self.schema
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"tierstream:{s}")
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{s}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{s}".schema_version ('
                "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval(f'SELECT max(version) FROM "{s}".schema_version') or 0
            if current > LATEST_VERSION:
                raise HistoryError(
                    f'history schema "{s}" is at version {current}, newer than this tierstream '
                    f"knows ({LATEST_VERSION}): upgrade tierstream"
                )
            for version, sql in MIGRATIONS:
                if version > current:
                    await conn.execute(sql.format(s=f'"{s}"'))
                    await conn.execute(
                        f'INSERT INTO "{s}".schema_version (version) VALUES ($1)', version
                    )

    async def schema_version(self) -> int:
        return int(
            await self.pool.fetchval(f'SELECT max(version) FROM "{self.schema}".schema_version')
        )

    # --- writes -----------------------------------------------------------------

    async def write_summaries(self, batch: Iterable[Mapping[str, Any]]) -> int:
        """Store WindowSummary records; returns rows inserted or revised."""
        latest: dict[tuple[Any, ...], Mapping[str, Any]] = {}
        for r in batch:  # one row per key per statement: keep the highest revision
            key = (r["window_start"], r["window_s"], r.get("view", "tumbling"))
            old = latest.get(key)
            if old is None or r.get("revision", 0) > old.get("revision", 0):
                latest[key] = r
        return await self._write("summaries", list(latest.values()))

    async def write_suggestions(self, batch: Iterable[Mapping[str, Any]]) -> int:
        """Store Suggestion records; returns rows inserted (replays insert none)."""
        return await self._write("suggestions", list(batch))

    async def write_alerts(self, batch: Iterable[Mapping[str, Any]]) -> int:
        """Store Alert records; returns rows inserted (replays insert none)."""
        return await self._write("alerts", list(batch))

    async def _write(self, kind: str, rows: Sequence[Mapping[str, Any]]) -> int:
        sql = (
            f"WITH rows AS ({_ROWS}), ins AS ({_INSERT[kind].format(s=self._s)} RETURNING 1) "
            "SELECT count(*) FROM ins"
        )
        n = 0
        for i in range(0, len(rows), self.chunk):
            payload = orjson.dumps(list(rows[i : i + self.chunk])).decode()
            n += int(await self.pool.fetchval(sql, payload))
        return n

    @property
    def _s(self) -> str:
        return f'"{self.schema}"'

    # --- retention and reads ------------------------------------------------------

    async def apply_retention(self, now: float | None = None) -> dict[str, int]:
        """Delete rows older than ``retention_days`` before ``now`` (default: wall clock)."""
        if self.retention_days is None:
            return {}
        cutoff = (time.time() if now is None else now) - self.retention_days * 86_400
        out = {}
        for kind, (table, col) in _TABLES.items():
            status = await self.pool.execute(
                f"DELETE FROM {self._s}.{table} WHERE {col} < to_timestamp($1)", cutoff
            )
            out[kind] = int(status.split()[-1])
        return out

    async def query(
        self, kind: str, since: float | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Stored records of ``kind`` (summaries, suggestions, alerts), newest first."""
        if kind not in _TABLES:
            raise ValueError(f"kind must be one of {', '.join(_TABLES)}, got {kind!r}")
        table, col = _TABLES[kind]
        rows = await self.pool.fetch(
            f"SELECT record::text FROM {self._s}.{table} "
            f"WHERE $1::float8 IS NULL OR {col} >= to_timestamp($1::float8) "
            f"ORDER BY {col} DESC, written_at DESC LIMIT $2",
            since,
            limit,
        )
        return [orjson.loads(r[0]) for r in rows]

    async def count(self, kind: str) -> int:
        table, _ = _TABLES[kind]
        return int(await self.pool.fetchval(f"SELECT count(*) FROM {self._s}.{table}"))

    async def drop(self) -> None:
        """Drop the whole schema (tests, and operators starting over)."""
        await self.pool.execute(f"DROP SCHEMA IF EXISTS {self._s} CASCADE")
