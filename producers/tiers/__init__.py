"""Instrumentable memory tiers: Redis (L1), PostgreSQL (L2), Chroma (L3), your own.

Each class here satisfies :class:`tierstream.producers.base.Tier`; hand a list
of them, fastest first, to :class:`tierstream.producers.memory.TieredMemory`.
Tiers that cache search results also offer ``put_search(query, results,
ttl)`` (see :class:`tierstream.producers.memory.SearchCache`), which
``TieredMemory`` uses to write search results back.

The implementations import their drivers (chromadb takes most of a second)
only when first used, so ``from tierstream.producers.tiers import RedisTier``
does not load chromadb.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from ...schemas.access import normalize_query

#: Key (under a tier's own prefix or table) of cached search results.
SEARCH_KEY_PREFIX = "search:"


def search_cache_key(query: str) -> str:
    """Where a tier caches the results of ``query``.

    Keyed by the normalized query (so ``"Foo  bar"`` and ``"foo bar"`` share
    results), hashed (BLAKE2b-128) so long queries fit a primary-key index and
    query text does not end up in key names.
    """
    digest = hashlib.blake2b(normalize_query(query).encode(), digest_size=16).hexdigest()
    return SEARCH_KEY_PREFIX + digest


if TYPE_CHECKING:
    from .chroma import ChromaTier
    from .embedding import HashingEmbedding
    from .instrument import FunctionTier, TierNotImplementedError, as_tier
    from .postgres import PostgresTier
    from .redis import RedisTier
    from .sqlite import SqliteTier

_LAZY = {
    "ChromaTier": "chroma",
    "HashingEmbedding": "embedding",
    "FunctionTier": "instrument",
    "TierNotImplementedError": "instrument",
    "as_tier": "instrument",
    "PostgresTier": "postgres",
    "RedisTier": "redis",
    "SqliteTier": "sqlite",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "SEARCH_KEY_PREFIX",
    "ChromaTier",
    "FunctionTier",
    "HashingEmbedding",
    "PostgresTier",
    "RedisTier",
    "SqliteTier",
    "TierNotImplementedError",
    "as_tier",
    "search_cache_key",
]
