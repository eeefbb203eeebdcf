"""The live pipeline end to end: Publisher -> real worker subprocess -> summaries topic,
compared with an independent truth (plain counting, numpy) and with ``tierstream replay``.

Events are published before the worker starts, with timestamps a minute in the
past spread over six 2-second windows: the worker reads them as a backlog, so
windows close by event time (as in replay) and then, once caught up, by wall
clock. Hopping view: 4 s every 2 s. Heavy-hitter capacity 64 (so its bound is
exercised: thousands of distinct queries).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faustproc as fp
from aggregate_truth import T0, make_events, truth
from tierstream.producers.publisher import Publisher
from tierstream.schemas import names
from tierstream.schemas.partition import partition_for

pytestmark = pytest.mark.timeout(180)

WINDOW_S, HOP_SIZE_S, HOP_STEP_S, N_WINDOWS = 2, 4, 2, 6
CAPACITY = 64
KNOBS = {
    "TIERSTREAM_WINDOW_S": WINDOW_S,
    "TIERSTREAM_HOP_SIZE_S": HOP_SIZE_S,
    "TIERSTREAM_HOP_STEP_S": HOP_STEP_S,
    "TIERSTREAM_GRACE_S": 1.0,
    "TIERSTREAM_LATENESS_S": 1.0,
    "TIERSTREAM_MERGE_TIMEOUT_S": 600,  # the idle partition must not need it
    "TIERSTREAM_HOT_QUERIES_CAPACITY": CAPACITY,
    "TIERSTREAM_TIER_COSTS": "redis=0.000001,postgresql=0.00002,chroma=0.0001",
    "TIERSTREAM_COMMIT_INTERVAL": 0.5,
}
StartWorker = Callable[..., fp.FaustWorker]


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    started: list[fp.FaustWorker] = []

    def start(partitions: int, **knobs: Any) -> fp.FaustWorker:
        env = fp.app_env(
            redis_url,
            "pipeline",
            TIERSTREAM_REDIS_URL=redis_url,
            TIERSTREAM_APP_ID="pipeline",
            TIERSTREAM_ACCESS_PARTITIONS=partitions,
            **{**KNOBS, **knobs},
        )
        worker = fp.FaustWorker("apps.pipeline_app", env, tmp_path, f"pipeline-{len(started)}")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop(timeout=5)
    for worker in started:
        print(worker.describe(80))


# --- the event set and its truth -------------------------------------------------------


def seeded_events(n: int, seed: int, partitions: int, idle: int | None = None) -> tuple:
    """``n`` events over six windows starting a minute ago (a multiple of 4 s), in time
    order with < 0.5 s of jitter (never late with lateness 1 s). ``idle``: drop the
    events of that partition. Returns (events, first window start)."""
    start = (int(time.time()) - 60) // 4 * 4
    span = WINDOW_S * N_WINDOWS
    events = make_events(n, seed=seed, n_queries=3000, window_s=span)
    for e in events:
        e["ts"] = start + (e["ts"] - T0)
    if idle is not None:
        events = [
            e for e in events if partition_for(e["query_fingerprint"].encode(), partitions) != idle
        ]
    rng = np.random.default_rng(seed)
    jitter = rng.random(len(events)) * 0.5
    order = np.argsort([e["ts"] + j for e, j in zip(events, jitter, strict=True)], kind="stable")
    return [events[i] for i in order], start


async def publish(redis_url: str, events: list[dict], partitions: int) -> None:
    pub = await Publisher(redis_url, partitions=partitions, batch_size=200).start()
    for i, e in enumerate(events):
        pub.emit(e)  # type: ignore[arg-type]
        if i % 5000 == 0:
            await asyncio.sleep(0)
    await pub.close()
    assert pub.stats.sent == len(events) and pub.stats.dropped == 0


def expected_windows(start: int) -> set[tuple[str, int]]:
    tumbling = {("tumbling", start + i * WINDOW_S) for i in range(N_WINDOWS)}
    end = start + WINDOW_S * N_WINDOWS
    hopping = {("hopping", s) for s in range(start - HOP_SIZE_S + HOP_STEP_S, end, HOP_STEP_S)}
    return tumbling | hopping


def read_summaries(client: redis.Redis) -> list[dict[str, Any]]:
    entries: Any = client.xrange(names.stream_key(names.WINDOW_SUMMARIES_TOPIC, 0))
    return [orjson.loads(fields[b"v"]) for _id, fields in entries]


def latest(summaries: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """The highest revision of each view window (identical duplicates are allowed:
    delivery is at-least-once)."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for s in summaries:
        key = (s["view"], int(s["window_start"]))
        if key not in out or s["revision"] >= out[key]["revision"]:
            out[key] = s
    return out


def wait_summaries(
    client: redis.Redis, want: set[tuple[str, int]], worker: fp.FaustWorker, timeout: float = 90
) -> dict[tuple[str, int], dict[str, Any]]:
    got: dict[tuple[str, int], dict[str, Any]] = {}

    def done() -> bool:
        nonlocal got
        got = latest(read_summaries(client))
        return want <= set(got)

    fp.wait_for(
        done,
        timeout,
        "a summary for every window",
        [worker],
        describe=lambda: f"missing {sorted(want - set(got))}; state {worker.safe_state()}",
    )
    return got


def check_against_truth(s: dict[str, Any], events: list[dict]) -> None:
    """Counts and rates exact; percentiles within HDR precision; hot queries within bound."""
    inside = [e for e in events if s["window_start"] <= e["ts"] < s["window_end"]]
    t = truth(inside)
    where = f"{s['view']} window {s['window_start']}"
    for k in ("events", "reads", "puts", "hits", "full_misses", "cache_hits", "errors"):
        assert s[k] == t[k], f"{where}: {k} {s[k]} != {t[k]}"
    assert s["late_events"] == 0, where
    assert s["hit_rate"] == pytest.approx(t["hits"] / t["reads"], abs=1e-12)
    for name, c in t["tiers"].items():
        tier = s["tiers"][name]
        for k in ("attempts", "hits", "errors", "served", "puts", "put_stored"):
            assert tier[k] == c[k], f"{where}: tier {name} {k}"
        vals = t["tier_us"].get(name)
        if vals is not None and len(vals):
            exact = np.percentile(vals, 99, method="inverted_cdf")
            got = tier["latency"]["p99_ms"] * 1000
            assert exact - 1e-6 * exact <= got <= exact * (1 + 1 / 1024) * (1 + 1e-9), where
    for name, c in t["agents"].items():
        assert (s["agents"][name]["reads"], s["agents"][name]["hits"]) == (c["reads"], c["hits"])
    for label, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99), ("p999_ms", 99.9)):
        exact = float(np.percentile(t["total_us"], q, method="inverted_cdf"))
        got = s["latency"][label] * 1000
        assert exact * (1 - 1e-9) <= got <= exact * (1 + 1 / 1024) * (1 + 1e-9), (where, label)
    assert s["latency"]["count"] == len(t["total_us"])
    # Hot queries: counts within [count - error, count]; everything above the
    # smallest reported count (an upper bound) is reported.
    counts: Counter[str] = t["query_counts"]
    reported = {q["fingerprint"]: q for q in s["hot_queries"]}
    bound = s["hot_queries_error_bound"]
    assert bound <= s["hot_queries_total"] / CAPACITY
    for fp_, q in reported.items():
        assert q["count"] - q["error"] <= counts[fp_] <= q["count"], f"{where}: {fp_}"
    floor = min(q["count"] for q in reported.values())
    missing = [f for f, c in counts.items() if c > floor and f not in reported]
    assert not missing, f"{where}: hot queries not reported: {missing}"


def run_replay(redis_url: str, start: int, partitions: int) -> dict[tuple[str, int], dict]:
    cmd = [
        str(Path(sys.executable).with_name("tierstream")),
        "replay",
        "--redis-url",
        redis_url,
        "--since",
        str(start - 10),
        "--until",
        str(start + WINDOW_S * N_WINDOWS + 10),
        "--json",
        "--window-s",
        str(WINDOW_S),
        "--hop-size-s",
        str(HOP_SIZE_S),
        "--hop-step-s",
        str(HOP_STEP_S),
        "--lateness-s",
        "1",
        "--capacity",
        str(CAPACITY),
        "--costs",
        str(KNOBS["TIERSTREAM_TIER_COSTS"]),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return latest([orjson.loads(line) for line in proc.stdout.splitlines() if line.strip()])


def comparable(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if k not in ("revision",)}


def assert_live_replay_truth(
    rdb: redis.Redis, redis_url: str, live: dict, events: list[dict], start: int, partitions: int
) -> None:
    want = expected_windows(start)
    assert set(live) == want
    for key, s in live.items():
        assert s["complete"] is True, f"{key} merged without every partition"
        check_against_truth(s, events)
    assert sum(live[("tumbling", s)]["events"] for _v, s in want if _v == "tumbling") == len(events)
    replayed = run_replay(redis_url, start, partitions)
    assert set(replayed) == want
    for key in sorted(want):
        assert comparable(replayed[key]) == comparable(live[key]), f"live != replay for {key}"


# --- the tests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("partitions", "idle"), [(8, None), (4, 3)], ids=["8-partitions", "4-partitions-one-idle"]
)
def test_live_equals_replay_equals_truth(
    redis_url: str,
    rdb: redis.Redis,
    start_worker: StartWorker,
    partitions: int,
    idle: int | None,
) -> None:
    events, start = seeded_events(30_000, seed=11, partitions=partitions, idle=idle)
    asyncio.run(publish(redis_url, events, partitions))
    if idle is not None:
        hw = fp.highwaters(rdb, names.ACCESS_TOPIC, partitions)
        assert hw[idle] == 0 and all(hw[p] > 0 for p in range(partitions) if p != idle), hw
    worker = start_worker(partitions)
    live = wait_summaries(rdb, expected_windows(start), worker)
    assert_live_replay_truth(rdb, redis_url, live, events, start, partitions)
    status, body = worker.get("/tierstream/windows/last")
    assert status == 200
    last = orjson.loads(body)["summaries"]
    assert set(last) == {"tumbling", "hopping"}
    status, body = worker.get("/tierstream/windows/top")
    top = orjson.loads(body)
    assert status == 200 and top["hot_queries"], top
    status, body = worker.get("/tierstream/windows/current")
    assert status == 200 and orjson.loads(body)["owner"] is True
