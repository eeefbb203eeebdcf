"""``tierstream demo``: simulated agents doing real tiered accesses, published live.

Each agent has a :class:`TieredMemory` over Redis (L1, short TTL), PostgreSQL
(L2; an embedded SQLite file when no PostgreSQL is reachable) and an embedded
Chroma (L3), and a skewed (Zipf) mix of gets, searches and puts. Every access
emits one MEMORY_TIER_ACCESS event through one shared :class:`Publisher` onto
the access topic. The terminal shows events per second and which tier
answered; the closing summary checks that Redis acknowledged every event.

Redis: ``redis_url``; when nothing answers there and a ``redis-server`` binary
exists, the demo starts a private one for its own lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from tierstream.producers.base import Tier
from tierstream.producers.errors import AllTiersFailedError
from tierstream.producers.memory import TieredMemory
from tierstream.producers.publisher import Publisher
from tierstream.schemas.access import AccessEvent

#: Tried when no PostgreSQL DSN is given (the development machines' server).
DEFAULT_PG_DSN = "postgresql://127.0.0.1:5432/postgres"
DOCS = 500  # documents in L3; the first 350 are also in L2; keys up to 550 exist nowhere
TOPICS = [
    "billing",
    "refunds",
    "shipping",
    "passwords",
    "invoices",
    "api keys",
    "webhooks",
    "rate limits",
    "exports",
    "sso",
    "2fa",
    "quotas",
    "regions",
    "backups",
    "audit logs",
]
VERBS = ["reset", "configure", "rotate", "cancel", "export", "enable"]


@dataclass(frozen=True)
class DemoConfig:
    redis_url: str
    postgres_dsn: str | None
    duration_s: float
    agents: int
    chroma_path: str
    seed: int = 7
    l1_ttl_s: float = 2.0


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@contextlib.asynccontextmanager
async def redis_for_demo(url: str) -> AsyncIterator[str]:
    """``url`` if a Redis answers there, else a private redis-server for the demo's lifetime."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1.0)
    try:
        await client.ping()
        yield url
        return
    except (OSError, aioredis.ConnectionError, aioredis.TimeoutError):
        pass
    finally:
        await client.aclose()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            f"no Redis answers at {url} and no redis-server binary is installed: "
            "start Redis >= 7.0 or set TIERSTREAM_REDIS_URL"
        )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="tierstream-redis-")
    # Popen returns at once; the server runs beside the demo until the finally below.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    private = f"redis://127.0.0.1:{port}/0"
    _say(f"no Redis at {url}: started a private redis-server at {private}")
    try:
        probe = aioredis.Redis.from_url(private)
        for _ in range(100):
            with contextlib.suppress(OSError, aioredis.ConnectionError):
                await probe.ping()
                break
            await asyncio.sleep(0.05)
        await probe.aclose()
        yield private
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


async def l2_tier(dsn: str | None, data_dir: Path) -> Tier:
    """PostgreSQL when reachable, else an embedded SQLite file."""
    from tierstream.producers.tiers import PostgresTier, SqliteTier

    tier = PostgresTier(dsn or DEFAULT_PG_DSN, table="tierstream_demo_memory", connect_timeout=2.0)
    try:
        await tier.get("probe")
        _say("L2: PostgreSQL at " + (dsn or DEFAULT_PG_DSN).split("@")[-1])
        return tier
    except Exception as exc:
        if dsn:
            raise SystemExit(f"PostgreSQL at {dsn.split('@')[-1]} is not usable: {exc}") from exc
        with contextlib.suppress(Exception):
            await tier.close()
    path = data_dir / "l2.sqlite3"
    _say(f"L2: no PostgreSQL reachable; using embedded SQLite at {path}")
    return SqliteTier(path, name="sqlite")


def doc(i: int) -> dict[str, Any]:
    topic = TOPICS[i % len(TOPICS)]
    return {"id": f"doc:{i}", "text": f"How to {VERBS[i % len(VERBS)]} {topic} (note {i})"}


async def seed(l2: Tier, l3: Tier) -> None:
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            if i < 350:
                await l2.put(f"doc:{i}", doc(i))
            await l3.put(f"doc:{i}", doc(i)["text"])

    await asyncio.gather(*(one(i) for i in range(DOCS)))


class Tally:
    """An EventSink in front of the publisher that keeps the numbers the terminal shows."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.served: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.window: Counter[str] = Counter()
        self.events = 0

    def emit(self, event: AccessEvent) -> None:
        self.publisher.emit(event)
        self.events += 1
        if event["operation"] == "put":
            return
        served = event["tier_accessed"] or "miss"
        self.served[served] += 1
        self.window[served] += 1
        if served != "miss":
            self.latency[served].append(event["total_latency_ms"])


async def agent(idx: int, tiers: list[Tier], tally: Tally, cfg: DemoConfig, stop: float) -> None:
    rng = random.Random(cfg.seed * 1000 + idx)
    mem = TieredMemory(tiers, sink=tally, agent_id=f"agent-{idx}", session_id=f"s-{idx}")
    keys = [f"doc:{i}" for i in range(DOCS + 50)]
    weights = [1.0 / (r + 1) ** 1.1 for r in range(len(keys))]
    rng.shuffle(weights)
    queries = [f"how do I {v} {t}" for v in VERBS for t in TOPICS]
    qweights = [1.0 / (r + 1) for r in range(len(queries))]
    while time.monotonic() < stop:
        op = rng.random()
        try:
            if op < 0.70:
                await mem.get(rng.choices(keys, weights)[0], query_type="lookup")
            elif op < 0.95:
                await mem.search(rng.choices(queries, qweights)[0], limit=3, query_type="semantic")
            else:
                i = rng.randrange(DOCS)
                await mem.put(f"doc:{i}", doc(i), query_type="update")
        except AllTiersFailedError as exc:
            _say(f"agent-{idx}: {exc}")
    await mem.drain()


def mix(counts: Counter[str]) -> str:
    total = sum(counts.values()) or 1
    return "  ".join(f"{k} {100 * v / total:4.1f}%" for k, v in counts.most_common())


async def run_demo(cfg: DemoConfig) -> int:
    from tierstream.producers.tiers import ChromaTier, RedisTier

    data_dir = Path(cfg.chroma_path).parent
    data_dir.mkdir(parents=True, exist_ok=True)
    async with redis_for_demo(cfg.redis_url) as url:
        l1 = RedisTier(url, name="redis", prefix="demo:mem:", default_ttl=cfg.l1_ttl_s)
        l2 = await l2_tier(cfg.postgres_dsn, data_dir)
        l3 = ChromaTier(
            str(Path(cfg.chroma_path) / "demo"), name="chroma", collection="tierstream_demo"
        )
        tiers: list[Tier] = [l1, l2, l3]
        _say(f"seeding {DOCS} documents into L3 (Chroma, embedded) and 350 into L2 ...")
        await seed(l2, l3)
        publisher = Publisher(url)
        await publisher.start()
        tally = Tally(publisher)
        _say(
            f"{cfg.agents} agents for {cfg.duration_s:g}s; events go to Redis at "
            f"{url.split('@')[-1]} (topic {publisher.topic})"
        )
        t0 = time.monotonic()
        stop = t0 + cfg.duration_s
        tasks = [asyncio.create_task(agent(i, tiers, tally, cfg, stop)) for i in range(cfg.agents)]
        last_events, last_t = 0, t0
        while not all(t.done() for t in tasks):
            await asyncio.sleep(1.0)
            now = time.monotonic()
            rate = (tally.events - last_events) / (now - last_t)
            _say(
                f"t={now - t0:5.1f}s  {rate:8,.0f} events/s  sent {publisher.stats.sent:>8,}  "
                f"served by: {mix(tally.window)}"
            )
            tally.window.clear()
            last_events, last_t = tally.events, now
        for t in tasks:
            t.result()
        await publisher.close()
        for tier in tiers:
            await tier.close()
    elapsed = time.monotonic() - t0
    s = publisher.stats
    _say("")
    _say(
        f"summary: {tally.events:,} accesses in {elapsed:.1f}s "
        f"({tally.events / elapsed:,.0f}/s); Redis acknowledged {s.sent:,} events, "
        f"dropped {s.dropped}, write errors {s.write_errors}"
    )
    _say(f"served by (get/search): {mix(tally.served)}")
    for tier_name, lat in sorted(tally.latency.items()):
        lat.sort()
        _say(
            f"  {tier_name:10} n={len(lat):7,}  p50 {lat[len(lat) // 2]:7.2f} ms  "
            f"p95 {lat[int(len(lat) * 0.95)]:7.2f} ms"
        )
    return 0 if s.sent == tally.events and not s.dropped else 1
