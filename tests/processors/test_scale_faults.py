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
import sys
import time
from collections.abc import Callable, Iterator
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
from tierstream.schemas import names
from tierstream.schemas.partition import partition_for

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


@pytest.fixture
def start_worker(private_redis: Any, tmp_path: Path) -> Iterator[StartWorker]:
    started: list[fp.FaustWorker] = []

    def start(**knobs: Any) -> fp.FaustWorker:
        env = fp.app_env(
            private_redis.url,
            "pipeline",
            TIERSTREAM_REDIS_URL=private_redis.url,
            TIERSTREAM_APP_ID="pipeline",
            TIERSTREAM_ACCESS_PARTITIONS=PARTITIONS,
            **{**SCALE_KNOBS, **knobs},
        )
        worker = fp.FaustWorker("apps.scale_pipeline", env, tmp_path, f"p{len(started)}")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop(timeout=5)
    for worker in started:
        print(worker.describe(60))


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
    victim = next(w for w in workers if merge_tp in (w.state() or {}).get("assigned", ()))
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
