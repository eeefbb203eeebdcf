"""Turn your own backend into a tier in a few lines.

``TieredMemory`` instruments any object with the :class:`Tier` shape; this
module builds that object from plain functions, sync or async::

    from tierstream.producers.tiers import as_tier

    cache: dict[str, object] = {}

    mycache = as_tier(
        "mycache",
        get=cache.get,                                   # sync is fine
        put=lambda key, value, ttl=None: cache.__setitem__(key, value),
        search=my_async_vector_search,                   # async is fine too
    )
    memory = TieredMemory([mycache, PostgresTier(dsn)], sink=publisher, agent_id="a1")

or from an existing object whose methods are called ``get``/``search``/
``put``/``put_search``/``close`` (explicit functions win)::

    tier = as_tier("legacy", backend=LegacyCacheClient(...), threaded=True)

Functions may return a value or an awaitable. With ``threaded=True`` sync
functions run in a worker thread (``asyncio.to_thread``): use it when they
block on I/O. An operation you did not provide raises
:class:`TierNotImplementedError` when used, which ``TieredMemory`` records
in the event like any other tier error (and ignores for write-backs).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from ..errors import TierError

_OPS = ("get", "search", "put", "put_search", "close")


class TierNotImplementedError(TierError, NotImplementedError):
    """A tier built with :func:`as_tier` was asked for an operation it was not given."""

    def __init__(self, tier: str, operation: str) -> None:
        self.operation = operation
        super().__init__(
            tier, f"does not implement {operation}(); pass {operation}=... to as_tier()"
        )


async def _call(fn: Callable[..., Any], threaded: bool, *args: Any) -> Any:
    if threaded and not inspect.iscoroutinefunction(fn):
        result = await asyncio.to_thread(fn, *args)
    else:
        result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class FunctionTier:
    """A tier whose operations are user functions; build it with :func:`as_tier`."""

    def __init__(
        self,
        name: str,
        *,
        get: Callable[..., Any] | None = None,
        search: Callable[..., Any] | None = None,
        put: Callable[..., Any] | None = None,
        put_search: Callable[..., Any] | None = None,
        close: Callable[..., Any] | None = None,
        threaded: bool = False,
    ) -> None:
        if not name:
            raise ValueError("a tier needs a non-empty name")
        self.name = name
        self._get = get
        self._search = search
        self._put = put
        self._put_search = put_search
        self._close = close
        self.threaded = threaded

    def supports(self, operation: str) -> bool:
        """Whether ``operation`` (get, search, put, put_search, close) was provided."""
        if operation not in _OPS:
            raise ValueError(f"unknown operation {operation!r}; expected one of {_OPS}")
        return getattr(self, "_" + operation) is not None

    def _need(self, fn: Callable[..., Any] | None, operation: str) -> Callable[..., Any]:
        if fn is None:
            raise TierNotImplementedError(self.name, operation)
        return fn

    async def get(self, key: str) -> Any | None:
        return await _call(self._need(self._get, "get"), self.threaded, key)

    async def search(self, query: str, limit: int = 10) -> list[Any]:
        results = await _call(self._need(self._search, "search"), self.threaded, query, limit)
        return [] if results is None else list(results)

    async def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        await _call(self._need(self._put, "put"), self.threaded, key, value, ttl)

    async def put_search(self, query: str, results: list[Any], ttl: float | None = None) -> None:
        fn = self._need(self._put_search, "put_search")
        await _call(fn, self.threaded, query, results, ttl)

    async def close(self) -> None:
        if self._close is not None:
            await _call(self._close, self.threaded)

    def __repr__(self) -> str:
        ops = ",".join(op for op in _OPS if getattr(self, "_" + op) is not None)
        return f"FunctionTier(name={self.name!r}, ops={ops})"


def as_tier(
    name: str,
    backend: object | None = None,
    *,
    get: Callable[..., Any] | None = None,
    search: Callable[..., Any] | None = None,
    put: Callable[..., Any] | None = None,
    put_search: Callable[..., Any] | None = None,
    close: Callable[..., Any] | None = None,
    threaded: bool = False,
) -> FunctionTier:
    """A tier named ``name`` from functions and/or a ``backend`` object's methods.

    Signatures (each may be sync or async): ``get(key) -> value | None``,
    ``search(query, limit) -> list``, ``put(key, value, ttl)``,
    ``put_search(query, results, ttl)``, ``close()``.
    """
    ops: dict[str, Callable[..., Any] | None] = {
        "get": get,
        "search": search,
        "put": put,
        "put_search": put_search,
        "close": close,
    }
    if backend is not None:
        for op, fn in ops.items():
            if fn is None:
                method = getattr(backend, op, None)
                ops[op] = method if callable(method) else None
    if not any(ops[op] for op in ("get", "search", "put")):
        raise ValueError(f"tier {name!r}: give at least one of get, search, put")
    return FunctionTier(name, threaded=threaded, **ops)
