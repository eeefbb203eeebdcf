"""Benchmark of the whole windowed pipeline against a naive loop over the same events.

    python bench/pipeline.py            # 2,000,000 events, 1,000,000 distinct queries
    python bench/pipeline.py --quick    # 1,200,000 events, 1,000,000 distinct, < 90 s

Everything runs on Redis DB 12 (flushed at start and at the end; nothing else
is touched), in one run, on the same events:

events
    Synthetic MEMORY_TIER_ACCESS events (three tiers, four agents, lognormal
    latencies, 2% tier errors). ``--queries`` events each ask a query of their
    own, so the stream holds that many distinct fingerprints; the others ask a
    Zipf-skewed set of 5,000 hot queries. Timestamps are spread over
    ``--windows`` one-minute windows that ended ten minutes ago, so every
    window can close as soon as the worker has caught up.
pipeline
    The events are first published with ``Publisher`` (batched, up to 1000
    events per entry, 8 partitions; its rate is printed, not part of the figures).
    Then one ``tierstream worker`` subprocess starts on that backlog, as a
    user would run it: default window settings (60 s tumbling, 300 s hopping
    every 60 s), the sink agents on (suggestions, alerts, and history into
    the local PostgreSQL, here under the schema ``tierstream_bench``, dropped
    at the end; off when PostgreSQL does not answer), web views on. The clock
    runs from the worker's "Worker ready" log line until the summaries of
    every window are on ``tierstream.window-summaries`` and their ``events``
    add up to the events published (a correctness check as well as the stop
    condition). ``events_per_s`` = events / that time. ``rss_mb`` = the
    worker's peak resident memory (VmHWM) at the end. The worker's CPU time
    over the same span is printed too (less disturbed by other load).

    Why publish first: a worker that is idle and caught up closes windows by
    wall clock (grace 5 s), so events of windows that ended minutes ago would
    all be *late* (counted, not aggregated; README "Windows, live and
    replay"). With a backlog, windows close by event time, as in a worker
    catching up, which is what a throughput figure is about.
raw
    In this process, after the pipeline: a plain redis-py loop, ``XREAD COUNT
    1000`` over all partitions from the start, ``orjson.loads`` of each entry,
    and for every event one ``record_value`` of its total latency into one HDR
    histogram: the naive consumer, with no validation, windows or tables.
    ``raw_per_s`` = events / its time.

Last line: ``pipeline: events_per_s=<x> raw_per_s=<y> ratio=<x/y> rss_mb=<m>``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis
from hdrh.histogram import HdrHistogram
from tierstream.producers.publisher import Publisher
from tierstream.schemas.names import (
    ACCESS_PARTITIONS,
    ACCESS_TOPIC,
    WINDOW_SUMMARIES_TOPIC,
    stream_key,
    topic_meta_key,
)

REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
REDIS_DB = 12
URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
TIERS = ("redis", "postgresql", "chroma")
AGENTS = ("planner", "coder", "critic", "retriever")
HIT_P = (0.55, 0.6, 0.7)
LAT_MU = (-0.5, 2.5, 3.5)
HOT = 5000


def make_events(n: int, distinct: int, windows: int, seed: int = 1) -> list[dict[str, Any]]:
    """``n`` valid events whose queries cover ``distinct`` fingerprints."""
    rng = random.Random(seed)
    end = (int(time.time()) // 60 - 10) * 60
    start = end - 60 * windows
    span = end - start
    hot_w = [1.0 / (i + 1) ** 1.1 for i in range(HOT)]
    hot = rng.choices(range(HOT), weights=hot_w, k=n)
    lat = [[round(rng.lognormvariate(LAT_MU[t], 0.8), 3) for _ in range(4096)] for t in range(3)]
    out = []
    tail = 0
    for i in range(n):
        if (i * distinct) // n != ((i + 1) * distinct) // n:
            q = HOT + tail  # exactly `distinct` events take a query of their own
            tail += 1
        else:
            q = hot[i]
        r = rng.random()
        op = "put" if r < 0.1 else ("search" if r < 0.4 else "get")
        chain: dict[str, dict[str, Any]] = {}
        served = None
        total = 0.0
        for t in range(3):
            ms = lat[t][(i * 7 + t) & 4095]
            total += ms
            u = rng.random()
            if u < 0.02:
                chain[TIERS[t]] = {"latency_ms": ms, "hit": False, "error": "TimeoutError: slow"}
                continue
            hit = u < (0.9 if op == "put" else HIT_P[t])
            chain[TIERS[t]] = {"latency_ms": ms, "hit": hit}
            if hit:
                served = TIERS[t]
                break
        out.append(
            {
                "schema_version": 1,
                "event_type": "memory_tier_access",
                "event_id": f"b{i}",
                "ts": start + (i * span) / n,
                "agent_id": AGENTS[i & 3],
                "operation": op,
                "query": f"query number {q}",
                "query_fingerprint": f"{q:016x}",
                "tier_accessed": served,
                "tier_latencies": chain,
                "total_latency_ms": round(total, 3),
                "cache_hit": served == "redis" and op != "put",
                "result_count": 1 if served else 0,
            }
        )
    return out


async def publish(events: list[dict[str, Any]]) -> float:
    t0 = time.perf_counter()
    async with Publisher(URL, max_buffer=len(events) + 1, batch_size=1000) as pub:
        for i, ev in enumerate(events):
            pub.emit(ev)
            if i % 20000 == 0:
                await asyncio.sleep(0)
        await pub.flush(timeout=120)
        if pub.stats.dropped:
            raise SystemExit(f"publisher dropped {pub.stats.dropped} events")
    return time.perf_counter() - t0


def summaries(r: redis.Redis) -> list[dict[str, Any]]:
    parts = int(r.hget(topic_meta_key(WINDOW_SUMMARIES_TOPIC), "partitions") or 0)
    out = []
    for p in range(parts):
        for _id, fields in r.xrange(stream_key(WINDOW_SUMMARIES_TOPIC, p)):
            out.append(orjson.loads(fields[b"v"]))
    return out


def tumbling_events(recs: list[dict[str, Any]]) -> int:
    latest: dict[float, dict[str, Any]] = {}
    for s in recs:
        if s.get("view", "tumbling") != "tumbling":
            continue
        cur = latest.get(s["window_start"])
        if cur is None or s.get("revision", 0) >= cur.get("revision", 0):
            latest[s["window_start"]] = s
    return sum(s["events"] for s in latest.values())


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


BENCH_SCHEMA = "tierstream_bench"


def drop_history_schema() -> None:
    """Drop the bench's history schema in the local PostgreSQL (if it answers)."""
    import asyncpg

    async def drop() -> None:
        try:
            conn = await asyncpg.connect("postgresql://127.0.0.1:5432/postgres", timeout=5)
        except (OSError, asyncpg.PostgresError):
            return
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{BENCH_SCHEMA}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def wait_for_log(path: Path, text: bytes, proc: subprocess.Popen[bytes], limit: float) -> None:
    deadline = time.monotonic() + limit
    while text not in path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"worker did not log {text.decode()!r}:\n{tail}")
        time.sleep(0.02)


def print_changelogs(r: redis.Redis) -> None:
    """Entries and bytes of the merge table's changelog and the partials topic."""
    for topic in (
        "tierstream-pipeline-tierstream-window-merge-changelog",
        "tierstream.window-partials",
    ):
        key = stream_key(topic, 0)
        n = r.xlen(key)
        size = r.memory_usage(key, samples=0) or 0
        print(f"{topic}: {n} entries, {size / 1e6:.1f} MB in Redis", flush=True)


def run_pipeline(n: int, timeout: float) -> tuple[float, float]:
    """Start a worker on the published backlog; (seconds to the last summary, peak RSS MB)."""
    r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    env = dict(
        os.environ,
        TIERSTREAM_REDIS_URL=URL,
        TIERSTREAM_HISTORY_SCHEMA=BENCH_SCHEMA,
        PYTHONUNBUFFERED="1",
    )
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        log_path = Path(tmp) / "worker.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        cmd = [sys.executable, "-m", "tierstream", "worker", "--redis-url", URL]
        cmd += ["--web-port", str(6100 + os.getpid() % 1000), "--datadir", tmp]
        t_start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            # Faust logs "Worker ready" once table recovery is done and the fetcher runs.
            wait_for_log(log_path, b"Worker ready", proc, 90)
            t0 = time.perf_counter()
            cpu0 = cpu_s(proc.pid)
            print(f"worker ready after {t0 - t_start:.1f} s", flush=True)
            deadline = time.monotonic() + timeout
            got = 0
            while True:
                got = tumbling_events(summaries(r))
                if got >= n:
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"pipeline incomplete: {got} of {n} events summarized\n{tail}")
                time.sleep(0.05)
            elapsed = time.perf_counter() - t0
            cpu = cpu_s(proc.pid) - cpu0
            # CPU time is disturbed less than wall time by other load on the machine
            print(f"worker CPU {cpu:.2f} s in {elapsed:.2f} s: {n / cpu:,.0f} events per CPU s")
            if got != n:
                raise SystemExit(f"summaries count {got} events, {n} were published")
            rss = peak_rss_mb(proc.pid)
            print_changelogs(r)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return elapsed, rss


def run_raw(n: int) -> float:
    r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    parts = int(r.hget(topic_meta_key(ACCESS_TOPIC), "partitions") or ACCESS_PARTITIONS)
    ids = {stream_key(ACCESS_TOPIC, p): "0-0" for p in range(parts)}
    hist = HdrHistogram(1, 3_600_000_000, 3)
    seen = 0
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    while seen < n:
        resp = r.xread(ids, count=1000)
        if not resp:
            break
        for key, entries in resp:
            for entry_id, fields in entries:
                ids[key.decode()] = entry_id
                value = orjson.loads(fields[b"v"])
                for ev in value if isinstance(value, list) else [value]:
                    hist.record_value(int(ev["total_latency_ms"] * 1000 + 0.5))
                    seen += 1
    dt = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    print(f"raw loop CPU {cpu:.2f} s in {dt:.2f} s: {n / cpu:,.0f} events per CPU s")
    if seen != n:
        raise SystemExit(f"raw loop read {seen} events, expected {n}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,200,000 events (< 90 s)")
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--queries", type=int, default=1_000_000, help="distinct queries")
    ap.add_argument("--windows", type=int, default=5, help="one-minute windows spanned")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    n = args.events or (1_200_000 if args.quick else 2_000_000)
    distinct = min(args.queries, n)
    r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    r.flushdb()
    try:
        t = time.perf_counter()
        events = make_events(n, distinct, args.windows)
        n_fp = len({e["query_fingerprint"] for e in events})
        gen_s = time.perf_counter() - t
        print(f"generated {n:,} events, {n_fp:,} distinct queries in {gen_s:.1f} s")
        pub_s = asyncio.run(publish(events))
        print(f"published {n:,} events in {pub_s:.2f} s ({n / pub_s:,.0f}/s)", flush=True)
        del events
        pipe_s, rss = run_pipeline(n, args.timeout)
        raw_s = run_raw(n)
    finally:
        r.flushdb()
        drop_history_schema()
    x, y = n / pipe_s, n / raw_s
    print(f"pipeline {pipe_s:.2f} s, raw loop {raw_s:.2f} s")
    print(f"pipeline: events_per_s={x:.0f} raw_per_s={y:.0f} ratio={x / y:.2f} rss_mb={rss:.0f}")


if __name__ == "__main__":
    main()
