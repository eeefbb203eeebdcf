"""Benchmark of the redis:// Faust transport against Faust's own ceiling and raw Redis.

    python bench/transport.py            # 200k messages, 3 repeats, medians
    python bench/transport.py --quick    # 50k messages, 1 repeat, < 60 s
    python bench/transport.py --profile  # also cProfile the child runs, print hot spots

All phases use the same messages: ``--messages`` values of about 100 bytes of
JSON, keyed ``k<i % 1000>``, on a topic of ``--partitions`` partitions, in
Redis DB 13 (flushed at start and at the end; no other database is touched).

produce
    In this process: the app's producer (``topic.send()`` N times, then
    ``producer.flush()``); N / elapsed.
consume
    A child process runs ``faust.Worker`` with a trivial agent that counts the
    messages of the topic produced above (fresh consumer group, commits as
    usual). Rate: (N - 1) / (time of message N - time of message 1), taken
    inside the agent, so worker start-up and rebalancing are not counted.
channel
    Same child and agent, but the agent reads an in-memory ``app.channel()``
    that a task in the same worker feeds with the same messages, building a
    ``Message`` for each and doing what the conductor does with a topic message
    (``channel.decode``, then ``channel.put`` to the agent's stream): Faust's
    own ceiling with no transport. Note that a channel's ``decode`` does not
    deserialize and channel messages are not tracked for acks, while a topic's
    messages are (``Topic.decode`` through the schema and codec registry; ack
    bookkeeping and sensors in the stream): Faust work any transport pays.
null
    Same child and agent on an empty topic of its own, fed by a task that hands
    ready-made ``ConsumerMessage`` objects of the assigned partitions to the
    conductor (``app.topics.on_message``), paced as the redis:// delivery loop
    paces itself, as a transport does: a transport that costs nothing.
    consume / null is the share left to the redis:// transport.
raw_xread
    In this process: plain redis-py ``XREAD COUNT 1000`` over all partitions
    until N entries were read; N / elapsed.

Child rates are also given as CPU time of the worker process per message
(``time.process_time`` between the first and last message), which other load on
the machine disturbs less than wall-clock rates, and the part of it spent in
Python's garbage collector (``gc.callbacks``, same window), and of that the
part in full collections: what a phase allocates and keeps alive per message
decides how often the collector runs, and every full collection walks the
whole heap of the worker. With repeats, each phase reports the median. The last line printed is
``transport: consume_msgs_per_s=<x> channel_msgs_per_s=<c> produce_msgs_per_s=<y>
raw_xread_per_s=<z>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import redis

REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
REDIS_DB = 13
BROKER = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
KEYS = 1000


def make_values(n: int) -> list[bytes]:
    """``n`` JSON values of about 100 bytes (the same list in every phase)."""
    tiers = ("redis", "postgresql", "chroma")
    return [
        json.dumps(
            {
                "i": i,
                "tier": tiers[i % 3],
                "latency_ms": round(0.5 + (i % 997) / 7, 3),
                "hit": i % 4 != 0,
                "agent": f"agent-{i % 17}",
                "pad": "x" * 12,
            },
            separators=(",", ":"),
        ).encode()
        for i in range(n)
    ]


def key_of(i: int) -> bytes:
    return b"k%d" % (i % KEYS)


# --- produce (in this process) -------------------------------------------------------


async def produce(topic_name: str, values: list[bytes], partitions: int) -> float:
    """Send every value through the app's producer; return messages per second."""
    import faust

    app = faust.App(
        "bench-producer",
        broker=BROKER,
        web_enabled=False,
        autodiscover=False,
        topic_partitions=partitions,
    )
    topic = app.topic(
        topic_name, partitions=partitions, key_serializer="raw", value_serializer="raw"
    )
    producer = app.producer
    await producer.start()
    try:
        await topic.maybe_declare()
        t0 = time.perf_counter()
        for i, value in enumerate(values):
            await topic.send(key=key_of(i), value=value)
        await producer.flush()
        elapsed = time.perf_counter() - t0
    finally:
        await producer.stop()
    return len(values) / elapsed


# --- raw XREAD (in this process) -----------------------------------------------------


def raw_xread(topic_name: str, n: int, partitions: int) -> float:
    from tierstream.schemas import names

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    streams: dict[Any, Any] = {names.stream_key(topic_name, p): "0-0" for p in range(partitions)}
    seen = 0
    t0 = time.perf_counter()
    while seen < n:
        resp: Any = client.xread(streams, count=1000)
        if not resp:
            raise RuntimeError(f"XREAD found only {seen} of {n} entries")
        for stream, entries in resp:
            seen += len(entries)
            streams[stream.decode()] = entries[-1][0]
    elapsed = time.perf_counter() - t0
    client.close()
    return seen / elapsed


# --- child: a Faust worker with a trivial counting agent ---------------------------


def child_main(args: argparse.Namespace) -> None:
    """Run a worker whose agent counts ``args.messages`` messages, then write the timing
    to ``args.result`` and wait to be terminated by the parent."""
    import faust
    from faust.types import TP, ConsumerMessage, Message

    n = args.messages
    datadir = tempfile.mkdtemp(prefix="bench-transport-")
    app = faust.App(
        args.group,
        broker=BROKER,
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        topic_partitions=args.partitions,
        datadir=datadir,
    )
    schema: Any = faust.Schema(key_serializer="raw", value_serializer="raw")
    if args.child == "consume":
        source: Any = app.topic(args.topic, partitions=args.partitions, schema=schema)
    elif args.child == "null":
        # An empty topic of its own: the worker fetches nothing from Redis for it.
        source = app.topic(args.topic + ".null", partitions=args.partitions, schema=schema)
    else:
        source = app.channel(schema=schema)
    profiler = cProfile.Profile() if args.profile else None
    marks: dict[str, float] = {}
    # Time in the garbage collector between the first and the last message.
    collector = {"s": 0.0, "n": 0, "since": 0.0}
    # the same per generation: [collections, seconds] of generations 0, 1, 2
    per_generation = [[0, 0.0], [0, 0.0], [0, 0.0]]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if "first" not in marks or "last" in marks:
            return
        if phase == "start":
            collector["since"] = time.perf_counter()
        elif collector["since"]:
            spent = time.perf_counter() - collector["since"]
            collector["s"] += spent
            collector["n"] += 1
            per_generation[info["generation"]][0] += 1
            per_generation[info["generation"]][1] += spent

    gc.callbacks.append(on_gc)

    def finish() -> None:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.result + ".prof")
        tmp = args.result + ".tmp"
        marks["gc_s"], marks["gc_n"] = collector["s"], collector["n"]
        marks["gc_generations"] = per_generation  # type: ignore[assignment]
        Path(tmp).write_text(json.dumps({"n": n, **marks}))
        os.replace(tmp, args.result)

    @app.agent(source)
    async def counter(stream: faust.StreamT[bytes]) -> None:
        seen = 0
        async for _value in stream:
            seen += 1
            if seen == 1:
                marks["first"] = time.perf_counter()
                marks["cpu_first"] = time.process_time()
                if profiler is not None:
                    profiler.enable()
            if seen == n:
                marks["last"] = time.perf_counter()
                marks["cpu_last"] = time.process_time()
                finish()

    async def wait_until_flowing() -> int:
        """The consumer generation, once assigned, flowing and stable."""
        # Start once the worker is assigned and flowing: a stream skips messages while
        # flow control is off or that carry another consumer generation.
        while not (  # noqa: ASYNC110 (no event covers all of these)
            app.flow_control.is_active()
            and cast(Any, app.tables).recovery.completed.is_set()
            and not app.rebalancing
            and app.consumer.assignment()
        ):
            await asyncio.sleep(0.05)
        # The group protocol may publish a second generation right after the
        # first: wait until the generation has been stable for a while.
        generation = app.consumer_generation_id
        stable_since = time.monotonic()
        while time.monotonic() - stable_since < 1.5:
            await asyncio.sleep(0.1)
            if app.consumer_generation_id != generation or app.rebalancing:
                generation = app.consumer_generation_id
                stable_since = time.monotonic()
        return generation

    if args.child == "channel":
        values = make_values(n)

        @app.task
        async def feed() -> None:
            generation = await wait_until_flowing()
            decode, put = source.decode, source.put
            for i, value in enumerate(values):
                message = Message(
                    "bench-channel",
                    i % args.partitions,
                    i // args.partitions,
                    time.time(),
                    0,
                    None,
                    key_of(i),
                    value,
                    None,
                    generation_id=generation,
                )
                # What the conductor does with a topic message: decode, then queue it
                # for every stream reading the channel.
                await put(await decode(message))

    if args.child == "null":
        values = make_values(n)

        @app.task
        async def feed_conductor() -> None:
            # A transport that costs nothing: ready-made ConsumerMessages of the
            # assigned topic, handed to Faust's conductor as the redis:// delivery loop
            # does (topic decode, per-partition handler, stream buffer, acks, commits):
            # "fetches" of up to 125 messages per unpaused partition, the delivery
            # loop's paced turn every 100 messages (processors/transport/pacing.py),
            # and a wait for a buffer to drain while every partition is paused
            # because its stream buffer is full.
            from tierstream.processors.transport.pacing import Pacer

            generation = await wait_until_flowing()
            pacer = Pacer(app.topics, 100)
            on_message = app.topics.on_message
            consumer: Any = app.consumer
            paused = consumer._buffered_partitions
            name = source.get_topic_name()
            parts = args.partitions
            tps = [TP(name, p) for p in range(parts)]
            next_i = list(range(parts))  # next message index of each partition
            since_yield = 0
            while any(i < n for i in next_i):
                fed = 0
                for p, tp in enumerate(tps):
                    if tp in paused:
                        continue
                    i, end = next_i[p], min(n, next_i[p] + 125 * parts)
                    while i < end:
                        key, value = key_of(i), values[i]
                        since_yield += 1
                        if since_yield > 100:
                            await pacer.turn(tp, tps)
                            since_yield = 0
                        await on_message(
                            ConsumerMessage(
                                name,
                                p,
                                i // parts,
                                time.time(),
                                0,
                                None,
                                key,
                                value,
                                None,
                                len(key),
                                len(value),
                                tp,
                                generation_id=generation,
                            )
                        )
                        i += parts
                        fed += 1
                    next_i[p] = i
                if not fed:
                    consumer._buffer_dropped.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(consumer._buffer_dropped.wait(), 0.05)

    worker = faust.Worker(app, loglevel=os.environ.get("BENCH_LOGLEVEL", "WARNING"), quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        shutil.rmtree(datadir, ignore_errors=True)


def run_child(
    mode: str,
    topic: str,
    group: str,
    n: int,
    partitions: int,
    workdir: Path,
    profile: bool,
    timeout: float,
) -> tuple[float, float, str | None, float, float]:
    """Start a child worker, wait for its timing, terminate it; return (msgs/s, CPU
    microseconds of the worker process per message, profile, microseconds of garbage
    collection per message, of it in full collections)."""
    result = workdir / f"{group}.json"
    log = workdir / f"{group}.log"
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        mode,
        "--topic",
        topic,
        "--group",
        group,
        "--messages",
        str(n),
        "--partitions",
        str(partitions),
        "--result",
        str(result),
    ] + (["--profile"] if profile else [])
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not result.exists():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{mode} worker exited {proc.returncode}:\n"
                    f"{log.read_text(errors='replace')[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{mode} worker did not count {n} messages in {timeout}s:"
                    f"\n{log.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    marks = json.loads(result.read_text())
    rate = (marks["n"] - 1) / (marks["last"] - marks["first"])
    cpu_us = (marks["cpu_last"] - marks["cpu_first"]) / (marks["n"] - 1) * 1e6
    gc_us = marks.get("gc_s", 0.0) / (marks["n"] - 1) * 1e6
    full = marks.get("gc_generations", [[0, 0.0]] * 3)[2]
    full_us = full[1] / (marks["n"] - 1) * 1e6
    prof = str(result) + ".prof"
    return rate, cpu_us, prof if os.path.exists(prof) else None, gc_us, full_us


def print_profile(path: str, label: str) -> None:
    stats = pstats.Stats(path)
    stats.sort_stats("tottime")
    print(f"\n=== cProfile of the {label} steady state (by own time) ===")
    stats.print_stats(25)
    print(
        f"=== {label}: transport functions (processors/transport, faust/transport), cumulative ==="
    )
    stats.sort_stats("cumulative")
    stats.print_stats("transport", 25)


# --- main ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50k messages, 1 repeat")
    parser.add_argument("--messages", type=int, help="messages per phase (default 200k)")
    parser.add_argument("--repeat", type=int, help="repeats per phase; medians (default 3)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after measuring, cProfile one consume, channel and null run",
    )
    parser.add_argument("--child", choices=["consume", "channel", "null"], help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return

    n = args.messages or (50_000 if args.quick else 200_000)
    repeat = args.repeat or (1 if args.quick else 3)
    parts = args.partitions
    child_timeout = 50.0 if args.quick else 300.0
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    client.flushdb()
    values = make_values(n)
    rates: dict[str, list[float]] = {
        "produce": [],
        "consume": [],
        "channel": [],
        "raw": [],
        "null": [],
    }
    cpu: dict[str, list[float]] = {"consume": [], "channel": [], "null": []}
    gc_cost: dict[str, list[float]] = {"consume": [], "channel": [], "null": []}
    gc_full: dict[str, list[float]] = {"consume": [], "channel": [], "null": []}
    workdir = Path(tempfile.mkdtemp(prefix="bench-transport-"))
    print(
        f"redis {BROKER}: {n} messages of ~{sum(map(len, values)) // n} bytes, "
        f"{parts} partitions, {repeat} repeat(s)",
        flush=True,
    )
    try:
        for r in range(repeat):
            topic = f"bench-{r}"
            rates["produce"].append(asyncio.run(produce(topic, values, parts)))
            rates["raw"].append(raw_xread(topic, n, parts))
            for mode in ("consume", "channel", "null"):
                rate, cpu_us, _prof, gc_us, full_us = run_child(
                    mode, topic, f"bench-{mode}-{r}", n, parts, workdir, False, child_timeout
                )
                rates[mode].append(rate)
                cpu[mode].append(cpu_us)
                gc_cost[mode].append(gc_us)
                gc_full[mode].append(full_us)
            print(
                f"run {r + 1}: "
                + " ".join(f"{k}={v[-1]:,.0f}/s" for k, v in rates.items())
                + " | CPU us/msg "
                + " ".join(f"{k}={v[-1]:.1f}" for k, v in cpu.items())
                + " (of it GC "
                + " ".join(f"{k}={v[-1]:.1f}" for k, v in gc_cost.items())
                + ")",
                flush=True,
            )
        if args.profile:
            for mode in ("consume", "channel", "null"):
                _rate, _cpu, prof, _gc, _full = run_child(
                    mode,
                    "bench-0",
                    f"bench-profile-{mode}",
                    n,
                    parts,
                    workdir,
                    True,
                    child_timeout * 3,
                )
                if prof:
                    print_profile(prof, mode)
    finally:
        client.flushdb()
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)

    med = {k: int(statistics.median(v)) for k, v in rates.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    cpu_min = {k: min(v) for k, v in cpu.items()}
    print(
        "worker CPU us per message, median (best): "
        + ", ".join(
            f"{k} {cpu_med[k]:.1f} ({cpu_min[k]:.1f})" for k in ("consume", "channel", "null")
        )
        + "; of it GC, median: "
        + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in gc_cost.items())
        + " (full collections: "
        + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in gc_full.items())
        + ")"
        + f"; null_transport_msgs_per_s={med['null']} "
        f"(consume/null = {med['consume'] / med['null']:.2f})"
    )
    # Each run's consume and channel phases follow each other within seconds; the
    # medians of the phases may come from different runs, and the machine's speed
    # drifts between runs.
    per_run = [c / h for c, h in zip(rates["consume"], rates["channel"], strict=True)]
    print(
        f"consume/channel = {med['consume'] / med['channel']:.2f} (target >= 0.80); "
        f"per run: {', '.join(f'{r:.2f}' for r in per_run)} "
        f"(median {statistics.median(per_run):.2f})"
    )
    print(
        f"transport: consume_msgs_per_s={med['consume']} channel_msgs_per_s={med['channel']} "
        f"produce_msgs_per_s={med['produce']} raw_xread_per_s={med['raw']}",
        flush=True,
    )


if __name__ == "__main__":
    main()
