"""Settings, typed and frozen, read from the environment once at the edge (the CLI).

Library code takes these values as arguments and never reads ``os.environ``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tierstream.schemas.names import ACCESS_PARTITIONS


def _bool(raw: str) -> bool:
    return raw.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    #: TIERSTREAM_REDIS_URL: the Redis (>= 7.0) that carries every topic.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: TIERSTREAM_POSTGRES_DSN: PostgreSQL for the L2 tier and history; None = try the default.
    postgres_dsn: str | None = None
    #: TIERSTREAM_CHROMA_URL: a Chroma server; None = embedded PersistentClient.
    chroma_url: str | None = None
    #: TIERSTREAM_CHROMA_PATH: directory of the embedded Chroma.
    chroma_path: str = ".tierstream/chroma"
    #: TIERSTREAM_ACCESS_PARTITIONS: partitions of the access topic.
    access_partitions: int = ACCESS_PARTITIONS
    #: TIERSTREAM_REDACT_QUERIES: publish only query fingerprints, never query text.
    redact_queries: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        d = cls()
        return cls(
            redis_url=env.get("TIERSTREAM_REDIS_URL", d.redis_url),
            postgres_dsn=env.get("TIERSTREAM_POSTGRES_DSN") or None,
            chroma_url=env.get("TIERSTREAM_CHROMA_URL") or None,
            chroma_path=env.get("TIERSTREAM_CHROMA_PATH", d.chroma_path),
            access_partitions=int(env.get("TIERSTREAM_ACCESS_PARTITIONS", d.access_partitions)),
            redact_queries=_bool(env.get("TIERSTREAM_REDACT_QUERIES", "0")),
        )
