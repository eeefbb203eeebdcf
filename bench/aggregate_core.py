"""Micro-benchmark: WindowAggregate.add_batch throughput on 200k synthetic events.

Run: /work/venv/bin/python bench/aggregate_core.py [--events N] [--batch B]
Last line: ``aggregate_core: events_per_s=<x>`` (median of the runs; best also shown).
Batches of 1,000 events, as one stream entry might carry; the summary and the
JSON-safe partial (per window, not per event) are timed apart.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "processors"))

from aggregate_truth import T0, make_events
from tierstream.processors.aggregate import WindowAggregate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000, help="events per add_batch call")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    events = make_events(args.events)
    batches = [events[i : i + args.batch] for i in range(0, len(events), args.batch)]
    times = []
    for run in range(args.runs):
        agg = WindowAggregate(T0, T0 + 60, {"redis": 1e-7, "postgresql": 1e-6})
        t0 = time.perf_counter()
        for b in batches:
            agg.add_batch(b)
        dt = time.perf_counter() - t0
        t1 = time.perf_counter()
        agg.summary()
        enc = agg.to_dict()
        dt_close = time.perf_counter() - t1
        times.append(dt)
        print(
            f"run {run}: {len(events) / dt:,.0f} events/s ({dt / len(events) * 1e6:.2f} us/event);"
            f" summary+to_dict {dt_close * 1e3:.1f} ms, {len(str(enc))} chars"
        )
    times.sort()
    median = times[len(times) // 2]
    print(f"best {len(events) / times[0]:,.0f} events/s")
    print(f"aggregate_core: events_per_s={len(events) / median:.0f}")


if __name__ == "__main__":
    main()
