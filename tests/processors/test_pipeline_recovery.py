"""The live pipeline under faults: ``kill -9`` mid-stream and restart, and bad events.

Same seeded events, truth and comparisons as ``test_pipeline_live.py``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faustproc as fp
from test_pipeline_live import (
    StartWorker,
    assert_live_replay_truth,
    expected_windows,
    publish,
    rdb,
    read_summaries,
    seeded_events,
    start_worker,
    wait_summaries,
)
from tierstream.schemas import names

__all__ = ["rdb", "start_worker"]  # fixtures shared with test_pipeline_live

pytestmark = pytest.mark.timeout(240)


def test_kill9_mid_stream_then_restart_equals_truth(
    redis_url: str, rdb: redis.Redis, start_worker: StartWorker
) -> None:
    events, start = seeded_events(30_000, seed=23, partitions=8)
    asyncio.run(publish(redis_url, events, 8))
    entries = sum(fp.highwaters(rdb, names.ACCESS_TOPIC, 8).values())
    # 40 ms per entry: the backlog takes seconds, so the kill lands mid-stream.
    first = start_worker(8, ENTRY_DELAY=0.04, TIERSTREAM_COMMIT_INTERVAL=0.05)
    state: dict[str, Any] = {}

    def some_partials_sent() -> bool:
        nonlocal state
        state = first.state() or {}
        return state.get("stats", {}).get("partials", 0) >= 16

    fp.wait_for(some_partials_sent, 60, "16 partials sent", [first], describe=lambda: str(state))
    first.kill9()
    done = state["stats"]["entries"]
    assert 0 < done < entries, f"kill did not land mid-stream ({done} of {entries} entries)"
    before = len(read_summaries(rdb))

    second = start_worker(8, TIERSTREAM_COMMIT_INTERVAL=0.05)
    live = wait_summaries(rdb, expected_windows(start), second)
    assert_live_replay_truth(rdb, redis_url, live, events, start, 8)
    after = second.state() or {}
    print(
        f"killed after {done}/{entries} entries with {before} summaries out; "
        f"restart re-read {after.get('stats', {}).get('refilled', 0)} entries"
    )


def test_bad_events_are_dead_lettered_and_the_worker_keeps_going(
    redis_url: str, rdb: redis.Redis, start_worker: StartWorker
) -> None:
    events, start = seeded_events(4_000, seed=5, partitions=4)
    half = len(events) // 2
    asyncio.run(publish(redis_url, events[:half], 4))
    good = events[half]
    missing = {k: v for k, v in good.items() if k != "agent_id"}
    absurd = {**good, "total_latency_ms": 1e9}
    stream = names.stream_key(names.ACCESS_TOPIC, 1)
    rdb.xadd(stream, {b"v": b"{not json"}, id="0-*")
    rdb.xadd(stream, {b"v": orjson.dumps([missing, absurd])}, id="0-*")
    rdb.xadd(stream, {b"v": b"42"}, id="0-*")
    # an hour ahead of its entry's producer time: would close every window of partition 1
    now = time.time()
    far = {**good, "event_id": "far-future", "ts": now + 3600}
    rdb.xadd(stream, {b"v": orjson.dumps([far]), b"t": b"%d" % int(now * 1000)}, id="0-*")
    asyncio.run(publish(redis_url, events[half:], 4))

    worker = start_worker(4)
    live = wait_summaries(rdb, expected_windows(start), worker)
    assert_live_replay_truth(rdb, redis_url, live, events, start, 4)

    dead: Any = rdb.xrange(names.dead_letter_key(names.ACCESS_TOPIC))
    reasons = [(f[b"index"], f[b"reason"].decode()) for _id, f in dead]
    assert len(reasons) == 5, reasons
    assert all(f[b"stream"] == stream.encode() for _id, f in dead)
    assert reasons[0][0] == b"" and "JSON" in reasons[0][1]
    assert reasons[1][0] == b"0" and "agent_id" in reasons[1][1]
    assert reasons[2][0] == b"1" and "total_latency_ms" in reasons[2][1]
    assert "object" in reasons[3][1]
    assert reasons[4][0] == b"0" and "ahead of its entry's producer timestamp" in reasons[4][1]
    assert int(rdb.get(names.dead_letter_count_key(names.ACCESS_TOPIC)) or 0) == 5
    stats = (worker.state() or {})["stats"]
    assert stats["dead_letters"] == 5 and stats["events"] == len(events)
