"""Producer benchmark: instrumentation overhead on the caller's path, publisher throughput.

    python bench/producer.py [--quick] [--redis-url redis://127.0.0.1:6379/14]

Uses (and flushes) one Redis database, 14 by default: never point it at data you keep.

1. Overhead. The same get() calls, hitting the first tier, made three ways in
   interleaved blocks: straight to the tier (baseline), through TieredMemory
   with no sink, and through TieredMemory with a running Publisher writing to
   the real Redis in the background. Overhead = instrumented percentile -
   baseline percentile. Twice: with L1 a RedisTier on the real Redis (the
   figure on the last line), and with L1 an in-process dict that only yields
   to the loop, a worst case where the loop never idles, so every step of the
   publisher's background writes lands inside some measured call.
2. Throughput. Events made by real TieredMemory calls are emitted as fast as
   possible; the clock stops when Redis has acknowledged the last one. Redis is
   then asked (server-side Lua) for the sum of the ``n`` field over every entry
   of every partition, which must equal the number emitted.

Last line: ``producer: overhead_p99_us=<x> events_per_s=<y>``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

import redis.asyncio as aioredis
from tierstream.producers.memory import TieredMemory
from tierstream.producers.publisher import Publisher
from tierstream.producers.tiers import RedisTier, as_tier
from tierstream.schemas.names import ACCESS_TOPIC, stream_key

SUM_N = """
local total = 0
for _, key in ipairs(KEYS) do
  local cursor = '-'
  while true do
    local entries = redis.call('XRANGE', key, cursor, '+', 'COUNT', 1000)
    if #entries == 0 then break end
    for _, e in ipairs(entries) do
      local f = e[2]
      for i = 1, #f, 2 do if f[i] == 'n' then total = total + tonumber(f[i + 1]) end end
    end
    cursor = '(' .. entries[#entries][1]
  end
end
return total
"""


def pct(samples: list[int], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0  # ns -> us


def dict_tier(name: str, store: dict[str, Any]) -> Any:
    async def get(key: str) -> Any:
        await asyncio.sleep(0)  # yield like real I/O would
        return store.get(key)

    async def put(key: str, value: Any, ttl: float | None = None) -> None:
        store[key] = value

    return as_tier(name, get=get, put=put)


async def overhead(url: str, calls: int, blocks: int, real_redis: bool) -> dict[str, float]:
    """Per-call latency of get() three ways, in interleaved blocks (see module docstring)."""
    keys = [f"k{i % 1000}" for i in range(calls)]
    if real_redis:
        l1: Any = RedisTier(url, name="redis", prefix="bench:")
        for i in range(1000):
            await l1.put(f"k{i}", {"v": i})
    else:
        l1 = dict_tier("l1", {f"k{i}": {"v": i} for i in range(1000)})
    l2 = dict_tier("l2", {})
    plain = TieredMemory([l1, l2], sink=None, agent_id="bench")
    pub = Publisher(url, max_buffer=1_000_000)
    await pub.start()
    instrumented = TieredMemory([l1, l2], sink=pub, agent_id="bench")
    base: list[int] = []
    nosink: list[int] = []
    full: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(blocks):
        for target, fn in ((base, l1.get), (nosink, plain.get), (full, instrumented.get)):
            for k in keys:
                t0 = clock()
                await fn(k)
                target.append(clock() - t0)
    await pub.close()
    if real_redis:
        await l1.close()
    assert pub.stats.sent == calls * blocks, pub.stats
    out = {}
    for name, xs in (("base", base), ("nosink", nosink), ("full", full)):
        for q in (0.5, 0.99, 0.999):
            out[f"{name}_p{q * 100:g}"] = pct(xs, q)
    return out


def report_overhead(title: str, oh: dict[str, float], n: int) -> float:
    print(f"{title} ({n} calls each, interleaved blocks)")
    print("  get() latency, us          p50      p99    p99.9")
    for name, label in (
        ("base", "tier called directly"),
        ("nosink", "TieredMemory, no sink"),
        ("full", "TieredMemory+Publisher"),
    ):
        print(
            f"  {label:24}{oh[name + '_p50']:7.2f}  {oh[name + '_p99']:7.2f}  "
            f"{oh[name + '_p99.9']:7.2f}"
        )
    over50 = oh["full_p50"] - oh["base_p50"]
    over99 = oh["full_p99"] - oh["base_p99"]
    print(f"  instrumentation overhead: p50 {over50:.2f} us, p99 {over99:.2f} us")
    return over99


async def real_events(n: int) -> list[Any]:
    """n events made by real TieredMemory calls (hits at each tier, misses, puts)."""
    out: list[Any] = []

    class Collect:
        def emit(self, event: Any) -> None:
            out.append(event)

    l1 = dict_tier("redis", {})
    l2 = dict_tier("postgresql", {f"q{i}": i for i in range(0, 5000, 2)})
    l3 = dict_tier("chroma", {f"q{i}": i for i in range(5000)})
    mem = TieredMemory([l1, l2, l3], sink=Collect(), agent_id="bench", write_back=False)
    i = 0
    while len(out) < n:
        await mem.get(f"q{(i * 7919) % 6000}")
        i += 1
    return out


async def throughput(url: str, events: list[Any], partitions: int = 8) -> float:
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    pub = Publisher(url, max_buffer=len(events) + 1, partitions=partitions)
    await pub.start()
    await pub.flush()  # connected, topic known
    gc.collect()
    t0 = time.perf_counter()
    emit = pub.emit
    for i, ev in enumerate(events):
        emit(ev)
        if i % 20_000 == 0:
            await asyncio.sleep(0)  # the writer shares the loop, as in an agent
    await pub.flush()
    elapsed = time.perf_counter() - t0
    await pub.close()
    keys = [stream_key(ACCESS_TOPIC, p) for p in range(partitions)]
    acked = int(await client.eval(SUM_N, len(keys), *keys))
    await client.flushdb()
    await client.aclose()
    if acked != len(events) or pub.stats.dropped:
        raise SystemExit(f"lost events: emitted {len(events)}, in redis {acked}, {pub.stats}")
    return len(events) / elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="finish within 30 s")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args()
    runs = args.runs or (3 if args.quick else 5)
    calls, blocks = (20_000, 3) if args.quick else (50_000, 6)
    n_events = 200_000 if args.quick else 1_000_000

    n = calls * blocks
    real = await overhead(args.redis_url, calls, blocks, real_redis=True)
    report_overhead("L1 = RedisTier on the real Redis (a few us inside ~100 us of jitter)", real, n)
    sat = await overhead(args.redis_url, calls, blocks, real_redis=False)
    # The figure reported: measurable, and an upper bound for an agent whose loop idles.
    over99 = report_overhead("worst case: in-process tier, the loop never idles", sat, n)

    events = await real_events(n_events)
    rates = []
    for r in range(runs):
        rate = await throughput(args.redis_url, events)
        rates.append(rate)
        print(f"throughput run {r + 1}: {rate:,.0f} events/s ({n_events} events, all acked)")
    med = statistics.median(rates)
    print(f"publisher throughput median of {runs}: {med:,.0f} events/s")
    print(f"producer: overhead_p99_us={over99:.2f} events_per_s={med:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
