"""The live pipeline on three workers under faults, each test on a private
redis-server it starts (issue 6's fault tests).

Events are seeded (``test_pipeline_live.seeded_events``: six 2-second windows
a minute in the past) and published by a real Publisher while the workers
run. Windows close by event time only (``TIERSTREAM_GRACE_S`` is far beyond
the test's length): after the events, one *sentinel* event per partition,
30 s after the last window, moves every partition past every window. So the
outcome does not depend on timing, and the latest revision of every summary
must equal the truth computed independently (plain counting, numpy).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faustproc as fp
from test_pipeline_live import (
    KNOBS,
    N_WINDOWS,
    WINDOW_S,
    check_against_truth,
    expected_windows,
    latest,
    publish,
    read_summaries,
    seeded_events,
)
from tierstream.producers.publisher import Publisher, PublisherStats
from tierstream.schemas import names
from tierstream.schemas.partition import partition_for
from tierstream.schemas.wire import decode_events

pytestmark = pytest.mark.timeout(150)

PARTITIONS = 8
SESSION = 4.0
ACCESS = names.ACCESS_TOPIC
SCALE_KNOBS = {
    **KNOBS,
    "TIERSTREAM_GRACE_S": 3600,  # close by event time only (see the module docstring)
    "TIERSTREAM_COMMIT_INTERVAL": 0.1,
    "BROKER_SESSION_TIMEOUT": SESSION,
}

StartWorker = Callable[..., fp.FaustWorker]


@pytest.fixture
def rdb(private_redis: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_redis.url)
    yield client
    client.close()


def starter(url: str, tmp_path: Path, started: list[fp.FaustWorker]) -> StartWorker:
    def start(**knobs: Any) -> fp.FaustWorker:
        env = fp.app_env(
            url,
            "pipeline",
            TIERSTREAM_REDIS_URL=url,
            TIERSTREAM_APP_ID="pipeline",
            TIERSTREAM_ACCESS_PARTITIONS=PARTITIONS,
            **{**SCALE_KNOBS, **knobs},
        )
        worker = fp.FaustWorker("apps.scale_pipeline", env, tmp_path, f"p{len(started)}")
        started.append(worker)
        return worker.start()

    return start


def stop_all(started: list[fp.FaustWorker]) -> None:
    for worker in started:
        if worker.proc is not None:
            os.killpg(worker.proc.pid, signal.SIGCONT)
        worker.stop(timeout=5)
    for worker in started:
        print(worker.describe(60))


@pytest.fixture
def start_worker(private_redis: Any, tmp_path: Path) -> Iterator[StartWorker]:
    started: list[fp.FaustWorker] = []
    yield starter(private_redis.url, tmp_path, started)
    stop_all(started)


def sentinels(start: int) -> list[dict[str, Any]]:
    """One valid event per access partition, 30 s after the last window."""
    out: dict[int, dict[str, Any]] = {}
    i = 0
    while len(out) < PARTITIONS:
        fingerprint = f"{0x5E471E1000 + i:016x}"
        p = partition_for(fingerprint.encode(), PARTITIONS)
        out.setdefault(
            p,
            {
                "schema_version": 1,
                "event_type": "memory_tier_access",
                "event_id": f"sentinel-{p}",
                "ts": float(start + WINDOW_S * N_WINDOWS + 30),
                "agent_id": "sentinel",
                "operation": "get",
                "query": None,
                "query_fingerprint": fingerprint,
                "tier_accessed": "redis",
                "tier_latencies": {"redis": {"latency_ms": 0.5, "hit": True}},
                "total_latency_ms": 0.5,
                "cache_hit": True,
                "result_count": 1,
            },
        )
        i += 1
    return list(out.values())


def wait_all_owned(workers: list[fp.FaustWorker], timeout: float = 45.0) -> dict[str, set[str]]:
    """Until every worker is ready and together they own every access partition once."""
    wanted = {f"{ACCESS}:{p}" for p in range(PARTITIONS)}
    last: dict[str, set[str]] = {}

    def shared() -> dict[str, set[str]] | None:
        nonlocal last
        last = {}
        for w in workers:
            state = w.state() or {}
            if not state.get("ready"):
                return None
            last[w.name] = {a for a in state["assigned"] if a.startswith(f"{ACCESS}:")}
        sets = list(last.values())
        if any(not s for s in sets) or sum(len(s) for s in sets) != len(wanted):
            return None
        return last if set().union(*sets) == wanted else None

    return fp.wait_for(shared, timeout, "access partitions shared", workers, lambda: str(last))


def wait_windows(
    rdb: redis.Redis, start: int, workers: list[fp.FaustWorker], timeout: float = 90.0
) -> dict[tuple[str, int], dict[str, Any]]:
    want = expected_windows(start)
    got: dict[tuple[str, int], dict[str, Any]] = {}

    def done() -> bool:
        nonlocal got
        got = latest(read_summaries(rdb))
        return want <= set(got)

    fp.wait_for(
        done,
        timeout,
        "a summary for every window",
        workers,
        describe=lambda: (
            f"missing {sorted(want - set(got))}; " + "; ".join(w.safe_state() for w in workers)
        ),
    )
    return got


def assert_truth(
    live: dict[tuple[str, int], dict[str, Any]], events: list[dict], start: int
) -> None:
    """The latest revision of every expected window equals the truth."""
    want = expected_windows(start)
    for key in sorted(want):
        s = live[key]
        assert s["complete"] is True, f"{key} merged without every partition"
        check_against_truth(s, events)
    tumbling = sum(live[k]["events"] for k in want if k[0] == "tumbling")
    assert tumbling == len(events)


def partials_sent(workers: list[fp.FaustWorker]) -> int:
    return sum(int(((w.state() or {}).get("stats") or {}).get("partials", 0)) for w in workers)


def test_kill9_one_of_three_pipeline_workers_mid_stream_equals_truth(
    private_redis: Any, rdb: redis.Redis, start_worker: StartWorker
) -> None:
    events, start = seeded_events(24_000, seed=31, partitions=PARTITIONS)
    # 50 ms per stream entry (~200 events): the workers take seconds over
    # the events, so the kill lands while they are busy.
    workers = [start_worker(ENTRY_DELAY=0.05) for _ in range(3)]
    wait_all_owned(workers)
    # The victim is the merge owner (the hardest case: the merge table
    # moves too, besides access partitions).
    merge_tp = f"{names.WINDOW_PARTIALS_TOPIC}:0"

    def merge_owner() -> fp.FaustWorker | None:
        # the group may still publish generations right after start: poll
        owners = [w for w in workers if merge_tp in (w.state() or {}).get("assigned", ())]
        return owners[0] if len(owners) == 1 else None

    victim = fp.wait_for(merge_owner, 60, "one owner of the merge partition", workers)
    workers.remove(victim)
    half = len(events) // 2
    asyncio.run(publish(private_redis.url, events[:half], PARTITIONS))
    state: dict[str, Any] = {}

    def victim_busy() -> bool:
        nonlocal state
        state = victim.state() or {}
        return int(state.get("stats", {}).get("entries", 0)) >= 10

    fp.wait_for(victim_busy, 60, "the victim busy", [victim], lambda: str(state))
    victim.kill9()
    killed_at = time.monotonic()
    owned = [int(a.rsplit(":", 1)[1]) for a in state["assigned"] if a.startswith(f"{ACCESS}:")]
    hw = fp.highwaters(rdb, ACCESS, PARTITIONS)
    victim_entries = int(state["stats"]["entries"])
    assert victim_entries < sum(hw[p] for p in owned), "the kill did not land mid-stream"
    asyncio.run(publish(private_redis.url, events[half:] + sentinels(start), PARTITIONS))
    wait_all_owned(workers, timeout=SESSION * 5)
    moved_in = time.monotonic() - killed_at
    live = wait_windows(rdb, start, workers)
    assert_truth(live, events, start)
    revisions = sorted({s["revision"] for s in latest(read_summaries(rdb)).values()})
    print(
        f"victim had handled {victim_entries} entries, sent {state['stats'].get('partials')} "
        f"partials; partitions moved "
        f"{moved_in:.1f} s after the kill; summary revisions {revisions}"
    )


# --- Redis restarted, Redis paused --------------------------------------------------------


@pytest.fixture
def aof_redis(private_redis: Any) -> Any:
    """The private redis-server started again with ``appendonly yes`` and
    ``appendfsync always``: whatever it acknowledged is on disk before the reply."""
    private_redis.stop()
    private_redis.appendonly = True
    private_redis.start()
    always(private_redis)
    return private_redis


def always(server: Any) -> None:
    with redis.Redis(port=server.port) as client:
        client.config_set("appendfsync", "always")


async def publish_through(
    url: str, events: list[dict[str, Any]], fault: Callable[[], Awaitable[None]]
) -> PublisherStats:
    """Publish ``events`` in ten chunks 0.3 s apart; ``fault()`` runs after the
    fourth chunk while the Publisher keeps its buffer and reconnects."""
    pub = await Publisher(url, partitions=PARTITIONS, batch_size=200, close_timeout=60).start()
    n = -(-len(events) // 10)
    for i in range(10):
        for e in events[i * n : (i + 1) * n]:
            pub.emit(e)  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        if i == 3:
            await fault()
    await pub.close()
    return pub.stats


def stored_events(client: redis.Redis) -> list[dict[str, Any]]:
    """Every event in the access topic's streams (duplicates included), sentinels excluded."""
    out: list[dict[str, Any]] = []
    for p in range(PARTITIONS):
        entries: Any = client.xrange(names.stream_key(ACCESS, p))
        for _id, fields in entries:
            out.extend(e for e in decode_events(fields[b"v"]) if e["agent_id"] != "sentinel")
    return out


def test_redis_killed_and_restarted_mid_stream_loses_nothing_acknowledged(
    aof_redis: Any, tmp_path: Path
) -> None:
    """``kill -9`` of Redis (AOF, fsync always) while three workers process and a
    Publisher publishes; restarted 1.5 s later on the same port and files."""
    started: list[fp.FaustWorker] = []
    try:
        start_worker = starter(aof_redis.url, tmp_path, started)
        workers = [start_worker(ENTRY_DELAY=0.01) for _ in range(3)]
        wait_all_owned(workers)
        events, start = seeded_events(24_000, seed=37, partitions=PARTITIONS)

        async def restart() -> None:
            assert aof_redis.proc is not None
            aof_redis.proc.kill()
            aof_redis.proc.wait()
            aof_redis.proc = None
            await asyncio.sleep(1.5)
            await asyncio.to_thread(aof_redis.start)
            always(aof_redis)

        stats = asyncio.run(publish_through(aof_redis.url, events + sentinels(start), restart))
        assert stats.dropped == 0 and stats.sent >= len(events) + PARTITIONS, stats
        with redis.Redis.from_url(aof_redis.url) as rdb:
            stored = stored_events(rdb)
            # Everything acknowledged survived the kill (the Publisher re-sends
            # only batches whose acknowledgement it did not get: at-least-once).
            ids = {e["event_id"] for e in stored}
            assert ids == {e["event_id"] for e in events}
            live = wait_windows(rdb, start, workers)
        # The summaries count what is stored (a re-sent batch is there twice).
        assert_truth(live, stored, start)
        for w in workers:
            # No write failed (a changelog write that met the restarted Redis
            # without its scripts is retried after reloading them), no agent
            # crashed (a topic declared while Redis is away waits for it).
            text = w.logfile.read_text(errors="replace")
            assert "Traceback" not in text and "ProducerSendError" not in text, w.describe()
        restarts = [w.logfile.read_text(errors="replace").count("Worker ready") for w in workers]
        print(f"{len(stored) - len(events)} duplicate events stored; 'Worker ready' {restarts}")
    finally:
        stop_all(started)


def test_redis_paused_past_the_session_timeout_processing_resumes(
    private_redis: Any, rdb: redis.Redis, start_worker: StartWorker
) -> None:
    """Redis SIGSTOPped for 1.5 x the session timeout while two workers run and
    a Publisher publishes: on SIGCONT every member finds it expired, is fenced,
    rejoins; no worker exits or crash-loops, and the summaries equal the truth."""
    workers = [start_worker(ENTRY_DELAY=0.01) for _ in range(2)]
    wait_all_owned(workers)
    pids = [w.proc.pid for w in workers if w.proc is not None]
    events, start = seeded_events(24_000, seed=41, partitions=PARTITIONS)

    async def pause() -> None:
        os.kill(private_redis.proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(SESSION * 1.5)
        finally:
            os.kill(private_redis.proc.pid, signal.SIGCONT)

    stats = asyncio.run(publish_through(private_redis.url, events + sentinels(start), pause))
    assert stats.dropped == 0, stats
    stored = stored_events(rdb)
    assert {e["event_id"] for e in stored} == {e["event_id"] for e in events}
    live = wait_windows(rdb, start, workers)
    assert_truth(live, stored, start)
    wait_all_owned(workers)
    assert [w.proc.pid for w in workers if w.proc is not None] == pids
    for w in workers:
        assert unexpected_errors(w.logfile.read_text(errors="replace")) == [], w.describe()


def unexpected_errors(log: str) -> list[str]:
    """ERROR/CRITICAL lines of a worker log, except asyncio's report of a
    refused (fenced) changelog write: Faust never awaits a table write's
    future, so each refused one is logged as "exception was never retrieved"
    (after Faust's own WARNING ``_on_published error``); the worker goes on."""
    lines = log.splitlines()
    out = []
    for i, line in enumerate(lines):
        if "] [ERROR] " not in line and "] [CRITICAL] " not in line:
            continue
        after = "\n".join(lines[i + 1 : i + 10])
        if "exception was never retrieved" in line and "changelog write refused: FENCED" in after:
            continue
        out.append(line)
    return out
