"""The Chroma tier (typically L3): a vector store searched by similarity.

Runs an embedded ``chromadb.PersistentClient`` at ``path`` unless a server
``url`` (``http://host:8000``) or a ready client is given. Embeddings come
from :class:`HashingEmbedding` unless another function is passed: Chroma's
default downloads a model, which tierstream must not do.

Each ``put(key, value)`` upserts one record: id ``key``, document = the value
if it is a string, else its JSON; metadata ``v`` = the value's JSON (what
``get`` and ``search`` return) and ``exp`` = expiry in epoch seconds
(:data:`NEVER` when the value does not expire). Chroma has no TTLs, so
expired records are filtered out on read (and removed by
:meth:`ChromaTier.purge_expired`). ``search`` returns the values of the
nearest records whose distance is at most ``max_distance`` (cosine distance,
0 = same direction, 1 = unrelated, 2 = opposite).

chromadb's client is synchronous: every call runs in a worker thread
(``asyncio.to_thread``) so the event loop keeps going.

The tier reads only records in its own format (``v`` and ``exp`` metadata):
point it at a collection it writes, not at an existing foreign collection.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, cast
from urllib.parse import urlsplit

import chromadb
import orjson
from chromadb.api import ClientAPI
from chromadb.api.models.Collection import Collection
from chromadb.api.types import Documents, EmbeddingFunction, Where
from chromadb.config import Settings

from .embedding import HashingEmbedding

#: ``exp`` of a record that never expires (Chroma metadata cannot hold null).
NEVER = 1e18
#: Default path of the embedded store (same default as ``Settings.chroma_path``).
DEFAULT_PATH = ".tierstream/chroma"


def _client_for_url(url: str) -> ClientAPI:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Chroma URL must look like http://host:port, got {url!r}")
    ssl = parts.scheme == "https"
    return chromadb.HttpClient(
        host=parts.hostname,
        port=parts.port or (443 if ssl else 8000),
        ssl=ssl,
        settings=Settings(anonymized_telemetry=False),
    )


class ChromaTier:
    """A :class:`~tierstream.producers.base.Tier` on a Chroma collection.

    ``path_or_client``: a directory for an embedded store (default
    :data:`DEFAULT_PATH`) or a chromadb client (the caller keeps owning it).
    ``url``: a Chroma server instead of an embedded store. The client and
    collection are created on first use; :meth:`close` closes a client the
    tier created.
    """

    def __init__(
        self,
        path_or_client: str | os.PathLike[str] | ClientAPI | None = None,
        *,
        url: str | None = None,
        name: str = "chroma",
        collection: str = "tierstream_memory",
        embedding: EmbeddingFunction[Documents] | None = None,
        max_distance: float = 0.75,
    ) -> None:
        if url is not None and path_or_client is not None:
            raise ValueError("give a path or client, or a url, not both")
        if not 0 <= max_distance <= 2:
            raise ValueError(f"max_distance is a cosine distance in [0, 2], got {max_distance}")
        self.name = name
        self.collection_name = collection
        self.max_distance = max_distance
        self._embedding = embedding if embedding is not None else HashingEmbedding()
        self._url = url
        self._path: str | None = None
        self._client: ClientAPI | None = None
        self._owns_client = True
        if path_or_client is None:
            if url is None:
                self._path = DEFAULT_PATH
        elif isinstance(path_or_client, (str, os.PathLike)):
            self._path = os.fspath(path_or_client)
        else:
            self._client = path_or_client
            self._owns_client = False
        self._collection: Collection | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def collection(self) -> Collection:
        """The collection, created (with the client) on first call."""
        if self._collection is not None:
            return self._collection
        async with self._lock:
            if self._closed:
                raise RuntimeError(f"ChromaTier {self.name!r} is closed")
            if self._collection is None:
                self._collection = await asyncio.to_thread(self._open)
            return self._collection

    def _open(self) -> Collection:
        if self._client is None:
            if self._url is not None:
                self._client = _client_for_url(self._url)
            else:
                assert self._path is not None
                self._client = chromadb.PersistentClient(
                    self._path, settings=Settings(anonymized_telemetry=False)
                )
        return self._client.get_or_create_collection(
            self.collection_name,
            embedding_function=self._embedding,  # type: ignore[arg-type]
            configuration={"hnsw": {"space": "cosine"}},
        )

    async def get(self, key: str) -> Any | None:
        col = await self.collection()
        got = await asyncio.to_thread(col.get, ids=[key], include=["metadatas"])
        metas = got["metadatas"] or []
        if not metas or not metas[0] or float(metas[0]["exp"]) <= time.time():  # type: ignore[arg-type]
            return None
        return orjson.loads(str(metas[0]["v"]))

    async def search(self, query: str, limit: int = 10) -> list[Any]:
        if limit <= 0:
            return []
        col = await self.collection()
        return await asyncio.to_thread(self._search, col, query, limit)

    def _search(self, col: Collection, query: str, limit: int) -> list[Any]:
        if col.count() == 0:
            return []
        res = col.query(
            query_texts=[query],
            n_results=limit,
            where=cast(Where, {"exp": {"$gt": time.time()}}),
            include=["metadatas", "distances"],
        )
        metas = (res["metadatas"] or [[]])[0]
        dists = (res["distances"] or [[]])[0]
        return [
            orjson.loads(str(m["v"]))
            for m, d in zip(metas, dists, strict=True)
            if d <= self.max_distance
        ]

    async def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
        encoded = orjson.dumps(value).decode()
        document = value if isinstance(value, str) else encoded
        exp = NEVER if ttl is None else time.time() + ttl
        col = await self.collection()
        await asyncio.to_thread(
            col.upsert, ids=[key], documents=[document], metadatas=[{"v": encoded, "exp": exp}]
        )

    async def delete(self, key: str) -> None:
        """Remove ``key`` (no error when absent)."""
        col = await self.collection()
        await asyncio.to_thread(col.delete, ids=[key])

    async def purge_expired(self) -> None:
        """Delete expired records."""
        col = await self.collection()
        await asyncio.to_thread(col.delete, where=cast(Where, {"exp": {"$lte": time.time()}}))

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            client, self._client, self._collection = self._client, None, None
            if self._owns_client and client is not None:
                close = getattr(client, "close", None)  # HttpClient has none in some versions
                if close is not None:
                    await asyncio.to_thread(close)

    def __repr__(self) -> str:
        where = self._url or self._path or "client"
        return f"ChromaTier(name={self.name!r}, collection={self.collection_name!r}, at={where!r})"
