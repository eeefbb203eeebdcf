"""``tierstream demo``: the whole pipeline on embedded defaults, with a story.

What runs: Redis (the one at ``redis_url``, else a private redis-server for the
demo's lifetime); a pipeline worker (a ``tierstream worker`` subprocess with
5-second windows and its own consumer group, see :mod:`.demo_worker`);
simulated agents, each with a :class:`TieredMemory` over Redis (L1),
PostgreSQL (L2; an embedded SQLite file when none is reachable) and an
embedded Chroma (L3) and a Zipf-skewed mix of gets, searches and puts, all
publishing through one :class:`Publisher`. The terminal shows events per
second, then every closed window (hit rates and p95 per tier), suggestions
and alerts as the worker publishes them (read with ``sinks.subscribe``, as any
process would), and a closing summary.

The story (fractions of ``duration_s``):

- 0-35%: normal traffic; the agents' hot keys stay in L1. Beside them a
  report agent asks a few expensive semantic searches over and over without
  write-back, so the slow tiers serve them: pre-cache suggestions follow.
- 35-65% (at least 16 s): an L1 incident: every call to Redis-L1 takes
  120 ms more and 10% of reads fail (a fault injected in front of the tier).
  Latency, error-rate and hit-rate alerts fire.
- 65-100%: L1 recovers; the alerts resolve.

Alert rules: the shipped defaults with ``for`` shortened from 30 s to 10 s
(two windows), written to ``<data dir>/demo_rules.toml``; suggestions need
10 reads of a query in a window (``TIERSTREAM_SUGGEST_MIN_READS``; 20 by
default for 60 s windows).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from tierstream.producers.base import Tier
from tierstream.producers.errors import AllTiersFailedError
from tierstream.producers.memory import TieredMemory
from tierstream.producers.publisher import Publisher
from tierstream.schemas.access import AccessEvent
from tierstream.schemas.names import ACCESS_PARTITIONS
from tierstream.sinks.rules import default_rules_text

from .demo_view import LiveView
from .demo_worker import APP_ID, DemoWorker, redis_for_demo, start_from_now

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
    l1_ttl_s: float = 5.0
    window_s: int = 5
    #: extra latency and failure share of L1 during the incident
    incident_delay_s: float = 0.12
    incident_failures: float = 0.10


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


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
    # the reports the report agents search for exist only in L3, so L3 answers them
    for i, text in enumerate(REPORTS):
        await l3.put(f"report:{i}", text)


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


class L1Incident(ConnectionError):
    """The demo's injected L1 failure."""


class FaultyTier:
    """A tier in front of another that, while ``incident`` is set, adds ``delay_s`` to
    every call and fails a ``failures`` share of them (the demo's injected fault)."""

    def __init__(self, inner: Tier, delay_s: float, failures: float, seed: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.delay_s = delay_s
        self.failures = failures
        self.incident = False
        self.rng = random.Random(seed)

    async def _disturb(self, fail: bool = True) -> None:
        if self.incident:
            await asyncio.sleep(self.delay_s * self.rng.uniform(0.8, 1.2))
            if fail and self.rng.random() < self.failures:
                raise L1Incident(f"{self.name}: timed out (demo incident)")

    async def get(self, key: str) -> Any | None:
        await self._disturb()
        return await self.inner.get(key)

    async def search(self, query: str, limit: int = 10) -> list[Any]:
        await self._disturb()
        return await self.inner.search(query, limit)

    # Writes are slowed but not failed: write-back failures would only add log noise.
    async def put(self, key: str, value: Any, ttl: float | None = None) -> None:
        await self._disturb(fail=False)
        await self.inner.put(key, value, ttl)

    async def put_search(self, query: str, results: list[Any], ttl: float | None = None) -> None:
        await self._disturb(fail=False)
        await self.inner.put_search(query, results, ttl)  # type: ignore[attr-defined]

    async def close(self) -> None:
        await self.inner.close()


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


REPORTS = [f"weekly report: {t} incidents and their root causes" for t in TOPICS[:4]]


async def report_agent(
    idx: int, tiers: list[Tier], tally: Tally, cfg: DemoConfig, stop: float
) -> None:
    """Expensive semantic searches over a few report queries, without write-back (so the
    slow tier answers them every time: what a pre-cache suggestion is for)."""
    rng = random.Random(cfg.seed * 7919 + idx)
    mem = TieredMemory(tiers, sink=tally, agent_id=f"report-bot-{idx}", write_back=False)
    weights = [1.0 / (r + 1) ** 1.5 for r in range(len(REPORTS))]
    while time.monotonic() < stop:
        with contextlib.suppress(AllTiersFailedError):
            await mem.search(rng.choices(REPORTS, weights)[0], limit=5, query_type="report")
        await asyncio.sleep(0.01)
    await mem.drain()


def mix(counts: Counter[str]) -> str:
    total = sum(counts.values()) or 1
    return "  ".join(f"{k} {100 * v / total:4.1f}%" for k, v in counts.most_common())


def demo_rules(path: Path) -> Path:
    """The shipped default rules with ``for`` shortened to 10 s (two 5 s windows)."""
    text = default_rules_text().replace('for = "30s"', 'for = "10s"')
    path.write_text(
        "# tierstream demo: the default rules with `for` shortened to 10s.\n" + text,
        encoding="utf-8",
    )
    return path


async def run_demo(cfg: DemoConfig) -> int:
    from tierstream.producers.tiers import ChromaTier, RedisTier

    data_dir = Path(cfg.chroma_path).parent
    data_dir.mkdir(parents=True, exist_ok=True)
    async with redis_for_demo(cfg.redis_url) as url:
        l1 = FaultyTier(
            RedisTier(url, name="redis", prefix="demo:mem:", default_ttl=cfg.l1_ttl_s),
            cfg.incident_delay_s,
            cfg.incident_failures,
            cfg.seed,
        )
        l2 = await l2_tier(cfg.postgres_dsn, data_dir)
        l3 = ChromaTier(
            str(Path(cfg.chroma_path) / "demo"), name="chroma", collection="tierstream_demo"
        )
        tiers: list[Tier] = [l1, l2, l3]
        _say(f"seeding {DOCS} documents into L3 (Chroma, embedded) and 350 into L2 ...")
        await seed(l2, l3)
        client = aioredis.Redis.from_url(url)
        await start_from_now(client, APP_ID, ACCESS_PARTITIONS)
        await client.aclose()
        worker_env = {
            "TIERSTREAM_ALERT_RULES": str(demo_rules(data_dir / "demo_rules.toml")),
            # 5 s windows: a query read 10 times in one is hot enough to suggest.
            "TIERSTREAM_SUGGEST_MIN_READS": "10",
        }
        if cfg.postgres_dsn:
            worker_env["TIERSTREAM_POSTGRES_DSN"] = cfg.postgres_dsn
        worker = DemoWorker(url, data_dir / "worker", cfg.window_s, worker_env).start()
        try:
            _say(f"starting a pipeline worker ({cfg.window_s}s windows; log {worker.logfile}) ...")
            await worker.wait_ready()
            return await _run(cfg, url, tiers, l1, worker)
        finally:
            worker.stop()
            for tier in tiers:
                await tier.close()


async def _run(
    cfg: DemoConfig, url: str, tiers: list[Tier], l1: FaultyTier, worker: DemoWorker
) -> int:
    publisher = await Publisher(url).start()
    tally = Tally(publisher)
    view = LiveView(url, _say, since=time.time()).start()
    d = cfg.duration_s
    incident_at = 0.35 * d
    recover_at = max(0.65 * d, incident_at + 16.0)
    _say(
        f"{cfg.agents} agents for {d:g}s, events to {url.split('@')[-1]} "
        f"(topic {publisher.topic}); L1 incident from t={incident_at:.0f}s to "
        f"t={recover_at:.0f}s"
    )
    t0 = time.monotonic()
    stop = t0 + d
    tasks = [asyncio.create_task(agent(i, tiers, tally, cfg, stop)) for i in range(cfg.agents)]
    tasks += [asyncio.create_task(report_agent(i, tiers, tally, cfg, stop)) for i in range(2)]
    last_events, last_t, phase = 0, t0, 0
    while not all(t.done() for t in tasks):
        await asyncio.sleep(1.0)
        now = time.monotonic()
        if phase == 0 and now - t0 >= incident_at:
            phase, l1.incident = 1, True
            _say(
                f">>> t={now - t0:.0f}s INCIDENT: L1 (redis) slows by "
                f"{cfg.incident_delay_s * 1000:.0f} ms and fails {cfg.incident_failures:.0%} "
                "of reads"
            )
        elif phase == 1 and now - t0 >= recover_at:
            phase, l1.incident = 2, False
            _say(f">>> t={now - t0:.0f}s L1 recovered")
        rate = (tally.events - last_events) / (now - last_t)
        _say(f"t={now - t0:5.1f}s {rate:7,.0f} events/s  served by: {mix(tally.window)}")
        tally.window.clear()
        last_events, last_t = tally.events, now
    for t in tasks:
        t.result()
    await publisher.close()
    elapsed = time.monotonic() - t0
    _say("waiting for the last windows to close ...")
    await view.wait_summarized(publisher.stats.sent, cfg.window_s + 15)
    await asyncio.sleep(1.0)  # suggestions and alerts of the last window
    await view.stop()
    return closing_summary(tally, publisher, view, worker, elapsed)


def closing_summary(
    tally: Tally, publisher: Publisher, view: LiveView, worker: DemoWorker, elapsed: float
) -> int:
    s = publisher.stats
    summarized = view.summarized_events()
    _say("")
    _say(
        f"summary: {tally.events:,} accesses in {elapsed:.1f}s "
        f"({tally.events / elapsed:,.0f}/s); Redis acknowledged {s.sent:,} events, "
        f"dropped {s.dropped}, write errors {s.write_errors}; the pipeline's windows "
        f"counted {summarized:,} of them"
    )
    _say(f"served by (get/search): {mix(tally.served)}")
    for tier_name, lat in sorted(tally.latency.items()):
        lat.sort()
        _say(
            f"  {tier_name:10} n={len(lat):7,}  p50 {lat[len(lat) // 2]:7.2f} ms  "
            f"p95 {lat[int(len(lat) * 0.95)]:7.2f} ms"
        )
    for line in view.report():
        _say(line)
    state = worker.get("/tierstream/sinks") or {}
    hist = state.get("history") or {}
    if hist.get("enabled"):
        _say(f"history: written to PostgreSQL at {hist.get('database')}: {hist.get('written')}")
    else:
        _say("history: off (TIERSTREAM_HISTORY=0, or no PostgreSQL reachable)")
    _say(f"worker metrics: http://127.0.0.1:{worker.port}/metrics while it runs")
    ok = s.sent == tally.events and not s.dropped and summarized == s.sent
    return 0 if ok else 1
