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
    #: TIERSTREAM_WINDOW_S: tumbling window of the pipeline, whole seconds.
    window_s: int = 60
    #: TIERSTREAM_HOP_SIZE_S / TIERSTREAM_HOP_STEP_S: the hopping view, whole seconds.
    hop_size_s: int = 300
    hop_step_s: int = 60
    #: TIERSTREAM_GRACE_S: wall-clock wait after a window ends before a caught-up
    #: partition closes it.
    grace_s: float = 5.0
    #: TIERSTREAM_LATENESS_S: out-of-orderness in event time allowed per partition.
    lateness_s: float = 5.0
    #: TIERSTREAM_MERGE_TIMEOUT_S: merge a window anyway when some partition never reports.
    merge_timeout_s: float = 60.0
    #: TIERSTREAM_HOT_QUERIES_CAPACITY: heavy-hitter capacity k (error <= N/k).
    hot_queries_capacity: int = 1024
    #: TIERSTREAM_TIER_COSTS: price per access, ``tier=price,tier=price``.
    tier_costs: tuple[tuple[str, float], ...] = ()

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
            window_s=int(env.get("TIERSTREAM_WINDOW_S", d.window_s)),
            hop_size_s=int(env.get("TIERSTREAM_HOP_SIZE_S", d.hop_size_s)),
            hop_step_s=int(env.get("TIERSTREAM_HOP_STEP_S", d.hop_step_s)),
            grace_s=float(env.get("TIERSTREAM_GRACE_S", d.grace_s)),
            lateness_s=float(env.get("TIERSTREAM_LATENESS_S", d.lateness_s)),
            merge_timeout_s=float(env.get("TIERSTREAM_MERGE_TIMEOUT_S", d.merge_timeout_s)),
            hot_queries_capacity=int(
                env.get("TIERSTREAM_HOT_QUERIES_CAPACITY", d.hot_queries_capacity)
            ),
            tier_costs=parse_costs(env.get("TIERSTREAM_TIER_COSTS", "")),
        )


def parse_costs(raw: str) -> tuple[tuple[str, float], ...]:
    """``"redis=0.000001,postgresql=0.00002"`` -> ``(("redis", 1e-06), ...)``."""
    out = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        tier, sep, price = part.partition("=")
        if not sep or not tier.strip():
            raise ValueError(f"TIERSTREAM_TIER_COSTS: expected tier=price, got {part!r}")
        out.append((tier.strip(), float(price)))
    return tuple(out)
