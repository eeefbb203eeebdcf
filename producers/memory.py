"""TieredMemory: an agent's memory across tiers, one MEMORY_TIER_ACCESS event per access.

``get`` and ``search`` fall through the tiers, fastest first; the first hit
answers. ``put`` writes to every configured tier. Each access emits exactly
one event (the shape of ``schemas.access.ACCESS_RECORD``) to the sink, which
must not block (a ``Publisher`` batches events off the caller's path).

Write-back. When a slower tier answers, the value is written back to the
faster tiers that missed cleanly (tiers that raised are skipped: they are
likely down). It runs as a background task, so the caller gets its result
without waiting; :meth:`TieredMemory.close` (and :meth:`drain`) await the
pending ones. Failures are logged, never raised. Two rules keep a background
write-back from putting a stale value over a newer one in this process: a
``put`` of a key first awaits that key's pending write-back, and no
write-back is scheduled when a ``put`` of the key started after the ``get``
did. Search results are written back through ``put_search`` to tiers that
offer it (:class:`SearchCache`); search caches are not invalidated by
``put`` and should carry a TTL (e.g. ``RedisTier(default_ttl=...)``).

Cost on the caller's path is kept to building one dict: event ids are a
per-instance random prefix plus a counter, query fingerprints come from a
bounded LRU cache.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from ..schemas.access import (
    EVENT_TYPE,
    SCHEMA_VERSION,
    AccessEvent,
    Operation,
    TierAttempt,
    fingerprint,
)
from .base import EventSink, Tier
from .errors import AllTiersFailedError, TierError

log = logging.getLogger(__name__)

#: Longest error text recorded in an event (the schema's limit).
MAX_ERROR_CHARS = 2000
#: Distinct queries whose fingerprints are cached.
FINGERPRINT_CACHE_SIZE = 8192
#: Keys whose latest put sequence is remembered (see module docstring).
_PUT_MEMORY = 4096

_fingerprint = functools.lru_cache(maxsize=FINGERPRINT_CACHE_SIZE)(fingerprint)


@runtime_checkable
class SearchCache(Protocol):
    """A tier that can cache search results (Redis and PostgreSQL tiers do)."""

    async def put_search(
        self, query: str, results: list[Any], ttl: float | None = None
    ) -> None: ...


def _error_text(exc: BaseException) -> str:
    message = str(exc)
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:MAX_ERROR_CHARS]


class TieredMemory:
    """Memory over ``tiers`` (fastest first) that reports every access to ``sink``.

    ``put_tiers`` names the tiers ``put`` writes to (default: all, in tier
    order). ``redact_queries`` leaves ``query`` out of events (the
    fingerprint still travels). ``clock`` is the monotonic clock (seconds)
    used for latencies. The sink is not closed by :meth:`close`: its owner
    closes it.
    """

    def __init__(
        self,
        tiers: Sequence[Tier],
        sink: EventSink | None,
        agent_id: str,
        user_id: str | None = None,
        session_id: str | None = None,
        write_back: bool = True,
        put_tiers: Sequence[str] | None = None,
        redact_queries: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not tiers:
            raise ValueError("TieredMemory needs at least one tier")
        names = [t.name for t in tiers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tier names must be unique; repeated: {dupes}")
        if not agent_id:
            raise ValueError("agent_id must be a non-empty string")
        self.tiers: tuple[Tier, ...] = tuple(tiers)
        self._by_name = {t.name: t for t in self.tiers}
        if put_tiers is None:
            self._put_tiers = self.tiers
        else:
            unknown = [n for n in put_tiers if n not in self._by_name]
            if unknown or not put_tiers:
                raise ValueError(f"put_tiers must name some of {names}; unknown: {unknown}")
            self._put_tiers = tuple(self._by_name[n] for n in put_tiers)
        self.sink = sink
        self.agent_id = agent_id
        self.user_id = user_id
        self.session_id = session_id
        self.write_back = write_back
        self.redact_queries = redact_queries
        self._clock = clock
        self._id_prefix = secrets.token_hex(6) + "-"
        self._ids = itertools.count(1)
        self._emit_failed = False
        self._closed = False
        # Write-back bookkeeping: pending tasks by key, and put sequence numbers.
        self._pending: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._put_seq = 0
        self._key_put_seq: dict[str, int] = {}
        self._forgotten_put_seq = 0

    # --- accesses -----------------------------------------------------------

    # get and search repeat one loop on purpose: a shared coroutine would add
    # a frame and a getattr per access on the caller's path.

    async def get(self, key: str, *, query_type: str | None = None) -> Any | None:
        """The value of ``key`` from the first tier that has it, or ``None``."""
        clock = self._clock
        ts = time.time()
        seq = self._put_seq
        start = clock()
        chain: dict[str, TierAttempt] = {}
        served: Tier | None = None
        value: Any = None
        for tier in self.tiers:
            t0 = clock()
            try:
                value = await tier.get(key)
            except Exception as exc:
                self._record_error(chain, tier, t0, exc)
                continue
            if value is not None:
                chain[tier.name] = {"latency_ms": (clock() - t0) * 1e3, "hit": True, "error": None}
                served = tier
                break
            chain[tier.name] = {"latency_ms": (clock() - t0) * 1e3, "hit": False, "error": None}
        total = (clock() - start) * 1e3
        event = self._event(
            ts, "get", key, query_type, served, chain, total, int(value is not None)
        )
        if served is None:
            self._raise_if_all_failed(event)
            return None
        if self.write_back and served is not self.tiers[0]:
            self._schedule_write_back(("k", key), served, chain, seq, value)
        return value

    async def search(
        self, query: str, limit: int = 10, *, query_type: str | None = None
    ) -> list[Any]:
        """Results for ``query`` from the first tier that has any, or ``[]``."""
        clock = self._clock
        ts = time.time()
        start = clock()
        chain: dict[str, TierAttempt] = {}
        served: Tier | None = None
        results: list[Any] = []
        for tier in self.tiers:
            t0 = clock()
            try:
                results = await tier.search(query, limit)
            except Exception as exc:
                self._record_error(chain, tier, t0, exc)
                continue
            if results:
                chain[tier.name] = {"latency_ms": (clock() - t0) * 1e3, "hit": True, "error": None}
                served = tier
                break
            chain[tier.name] = {"latency_ms": (clock() - t0) * 1e3, "hit": False, "error": None}
        total = (clock() - start) * 1e3
        if served is None:
            results = []
        event = self._event(ts, "search", query, query_type, served, chain, total, len(results))
        if served is None:
            self._raise_if_all_failed(event)
        elif self.write_back and served is not self.tiers[0]:
            self._schedule_write_back(("q", query), served, chain, None, results)
        return results

    def _record_error(
        self, chain: dict[str, TierAttempt], tier: Tier, t0: float, exc: BaseException
    ) -> None:
        latency = (self._clock() - t0) * 1e3
        chain[tier.name] = {"latency_ms": latency, "hit": False, "error": _error_text(exc)}

    async def put(
        self, key: str, value: Any, ttl: float | None = None, *, query_type: str | None = None
    ) -> None:
        """Store ``value`` under ``key`` in every put tier (in order); ``ttl`` in seconds."""
        if value is None:
            raise ValueError("cannot put None: None means a miss")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        self._remember_put(key)
        pending = self._pending.get(("k", key))
        if pending is not None:
            await asyncio.wait([pending])
        clock = self._clock
        ts = time.time()
        start = clock()
        chain: dict[str, TierAttempt] = {}
        first: Tier | None = None
        stored = 0
        for tier in self._put_tiers:
            t0 = clock()
            try:
                await tier.put(key, value, ttl)
            except Exception as exc:
                self._record_error(chain, tier, t0, exc)
                continue
            chain[tier.name] = {"latency_ms": (clock() - t0) * 1e3, "hit": True, "error": None}
            stored += 1
            if first is None:
                first = tier
        total = (clock() - start) * 1e3
        event = self._event(ts, "put", key, query_type, first, chain, total, stored)
        if first is None:
            self._raise_if_all_failed(event)

    # --- events -------------------------------------------------------------

    def _event(
        self,
        ts: float,
        operation: Operation,
        query: str,
        query_type: str | None,
        served: Tier | None,
        chain: dict[str, TierAttempt],
        total_ms: float,
        result_count: int,
    ) -> AccessEvent:
        served_name = None if served is None else served.name
        event: AccessEvent = {
            "schema_version": SCHEMA_VERSION,
            "event_type": EVENT_TYPE,
            "event_id": self._id_prefix + str(next(self._ids)),
            "ts": ts,
            "agent_id": self.agent_id,
            "user_id": self.user_id,
            "session_id": self.session_id,
            "operation": operation,
            "query": None if self.redact_queries else query,
            "query_fingerprint": _fingerprint(query),
            "query_type": query_type,
            "tier_accessed": served_name,
            "tier_latencies": chain,
            "total_latency_ms": total_ms,
            "cache_hit": operation != "put" and served is self.tiers[0],
            "result_count": result_count,
        }
        sink = self.sink
        if sink is not None:
            try:
                sink.emit(event)
            except Exception:
                if not self._emit_failed:
                    self._emit_failed = True
                    log.exception("event sink %r failed; events are being lost", sink)
        return event

    @staticmethod
    def _raise_if_all_failed(event: AccessEvent) -> None:
        chain = event["tier_latencies"]
        if all(a["error"] is not None for a in chain.values()):
            errors = {name: str(a["error"]) for name, a in chain.items()}
            raise AllTiersFailedError(event["operation"], errors, event["event_id"])

    # --- write-back ---------------------------------------------------------

    def _remember_put(self, key: str) -> None:
        self._put_seq += 1
        seqs = self._key_put_seq
        seqs.pop(key, None)
        seqs[key] = self._put_seq
        if len(seqs) > _PUT_MEMORY:
            oldest = next(iter(seqs))
            self._forgotten_put_seq = seqs.pop(oldest)

    def _put_since(self, key: str, seq: int) -> bool:
        last = self._key_put_seq.get(key)
        return (last if last is not None else self._forgotten_put_seq) > seq

    def _schedule_write_back(
        self,
        slot: tuple[str, str],
        served: Tier,
        chain: dict[str, TierAttempt],
        seq: int | None,
        value: Any,
    ) -> None:
        if self._closed or slot in self._pending:
            return  # a pending write-back already carries this key's value
        if seq is not None and self._put_since(slot[1], seq):
            return  # a put raced with this get: its value is newer than ours
        targets = []
        for tier in self.tiers:
            if tier is served:
                break
            attempt = chain[tier.name]
            if attempt["error"] is None and (slot[0] == "k" or isinstance(tier, SearchCache)):
                targets.append(tier)
        if not targets:
            return
        task = asyncio.get_running_loop().create_task(
            self._write_back(slot, targets, value), name=f"tierstream-write-back:{slot[1][:64]}"
        )
        self._pending[slot] = task
        task.add_done_callback(lambda t: self._pending.pop(slot, None))

    async def _write_back(self, slot: tuple[str, str], targets: list[Tier], value: Any) -> None:
        kind, key = slot
        for tier in targets:
            try:
                if kind == "k":
                    await tier.put(key, value, None)
                else:
                    await tier.put_search(key, value, None)  # type: ignore[attr-defined]
            except NotImplementedError:
                continue  # e.g. an as_tier() tier without put
            except Exception:
                log.warning(
                    "write-back of %s %r to tier %r failed",
                    "key" if kind == "k" else "search",
                    key,
                    tier.name,
                    exc_info=True,
                )

    async def drain(self) -> None:
        """Wait for every pending write-back."""
        while self._pending:
            await asyncio.wait(list(self._pending.values()))

    # --- lifecycle ----------------------------------------------------------

    async def close(self) -> None:
        """Await pending write-backs, then close every tier (all, even if some fail).

        Raises :class:`TierError` for the first tier whose ``close`` failed.
        """
        if self._closed:
            return
        self._closed = True
        await self.drain()
        failed: list[tuple[str, BaseException]] = []
        for tier in self.tiers:
            try:
                await tier.close()
            except Exception as exc:
                log.warning("closing tier %r failed", tier.name, exc_info=True)
                failed.append((tier.name, exc))
        if failed:
            name, first = failed[0]
            raise TierError(name, f"close failed: {_error_text(first)}") from first

    async def __aenter__(self) -> TieredMemory:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"TieredMemory(agent_id={self.agent_id!r}, tiers={list(self._by_name)})"
