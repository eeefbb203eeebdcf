"""redis:// transport: ``consumer.seek`` on a running worker (a Faust app run as a
``faust -A apps.seek worker`` subprocess against the real Redis).

What the windowed pipeline relies on: after ``seek(tp, o)`` every message the
agent receives for ``tp`` is ``o, o+1, ...`` in order with no gap, also while
fetches are in flight and buffers are full; and Faust's ack/commit bookkeeping
survives going backwards (and forwards): commits still reach the highwater and
no message stays unacknowledged. Also the delivery loop's fast path: with a
small stream buffer (deliveries wait), holes in the streams and a commit every
50 acks, every entry arrives once, in order, and commits reach the highwater.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from tierstream.schemas import names

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faustproc as fp

pytestmark = pytest.mark.timeout(90)

TOPIC = "nums"
PARTITIONS = 2


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., fp.FaustWorker]]:
    started: list[fp.FaustWorker] = []

    def start(app_id: str, **knobs: str | float | int) -> fp.FaustWorker:
        env = fp.app_env(redis_url, app_id, PARTITIONS=PARTITIONS, **knobs)
        worker = fp.FaustWorker("apps.seek", env, tmp_path, f"{app_id}-{len(started)}")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop(timeout=5)
    for worker in started:
        print(worker.describe(80))


def fill(client: redis.Redis, partition: int, count: int) -> None:
    fp.xadd_messages(
        client,
        TOPIC,
        PARTITIONS,
        ((None, b"%d" % i, None) for i in range(count)),
        keyless_partition=lambda i: partition,
    )


def wait_seen(
    worker: fp.FaustWorker, expected: dict[int, list[int]], timeout: float = 40.0
) -> None:
    """Wait until ``seen`` has at least as many offsets as expected, then compare exactly."""
    last: dict[str, Any] = {}

    def enough() -> bool:
        nonlocal last
        last = worker.state() or {}
        seen = last.get("seen", {})
        return all(len(seen.get(str(p), ())) >= len(offs) for p, offs in expected.items())

    fp.wait_for(
        enough, timeout, "all expected offsets seen", [worker], describe=lambda: _brief(last)
    )
    seen = last["seen"]
    for p, offsets in expected.items():
        got = seen.get(str(p), [])
        assert got == offsets, f"partition {p}: {_diff(got, offsets)}; seeks {last.get('seeks')}"


def wait_settled(client: redis.Redis, worker: fp.FaustWorker, group: str) -> dict[str, Any]:
    """Commits reach the highwater of every partition and nothing stays unacked."""
    last: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal last
        last = worker.state() or {}
        hw = fp.highwaters(client, TOPIC, PARTITIONS)
        return fp.committed(client, group, TOPIC, PARTITIONS) == hw and last.get("unacked") == 0

    fp.wait_for(
        settled,
        20,
        "commits at the highwater and no unacked message",
        [worker],
        describe=lambda: (
            f"highwaters {fp.highwaters(client, TOPIC, PARTITIONS)} committed "
            f"{fp.committed(client, group, TOPIC, PARTITIONS)} unacked {last.get('unacked')}"
        ),
    )
    return last


def _brief(state: dict[str, Any]) -> str:
    seen = state.get("seen", {})
    counts = {p: len(v) for p, v in seen.items()}
    return f"offsets seen per partition {counts}, seeks {state.get('seeks')}"


def _diff(got: list[int], want: list[int]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"first difference at index {i}: got {got[i : i + 5]}, want {want[i : i + 5]}"
    return f"got {len(got)} offsets, want {len(want)}"


@pytest.mark.parametrize("buffer", [64, 4096])
def test_seek_back_and_forward_from_inside_the_agent_under_backlog(
    rdb: redis.Redis, start_worker: Callable[..., fp.FaustWorker], buffer: int
) -> None:
    # A backlog and a slowish agent. With a small stream buffer (64) buffers
    # are full and a fetch is in flight when the agent seeks; with Faust's
    # default (4096) the delivery loop paces itself (processors/transport/pacing.py)
    # and the seek may come while it waits for the agent.
    fill(rdb, 0, 6000)
    fill(rdb, 1, 3000)
    worker = start_worker(
        "seekin",
        SEEKS="0:3000:1000,0:4000:5200,1:1500:1500",
        BUFFER=buffer,
        SLOW_EVERY=20,
    )
    expected = {
        # back from 3000 to 1000 (below the committed offset by then), then
        # forward from 4000 to 5200 during the re-read
        0: list(range(0, 3001)) + list(range(1000, 4001)) + list(range(5200, 6000)),
        # a seek to the very offset being processed re-delivers it
        1: list(range(0, 1501)) + list(range(1500, 3000)),
    }
    wait_seen(worker, expected)
    state = wait_settled(rdb, worker, "seekin")
    # (partition, offsets seen before the seek, target)
    assert sorted(tuple(s) for s in state["seeks"]) == [
        (0, 3001, 1000),
        (0, 6002, 5200),
        (1, 1501, 1500),
    ]
    # And the worker goes on normally afterwards.
    fill(rdb, 0, 100)
    expected[0] += list(range(6000, 6100))
    wait_seen(worker, expected)
    wait_settled(rdb, worker, "seekin")


def test_seek_back_from_outside_while_the_fetch_blocks(
    rdb: redis.Redis, start_worker: Callable[..., fp.FaustWorker]
) -> None:
    fill(rdb, 0, 1000)
    fill(rdb, 1, 500)
    worker = start_worker("seekout")
    expected = {0: list(range(1000)), 1: list(range(500))}
    wait_seen(worker, expected)
    wait_settled(rdb, worker, "seekout")
    # Caught up: the fetcher sits in a blocking XREAD when the seek comes.
    status, body = worker.get("/seek/?partition=0&offset=300")
    assert status == 200, body
    expected[0] += list(range(300, 1000))
    wait_seen(worker, expected)
    fill(rdb, 0, 100)
    fill(rdb, 1, 100)
    expected[0] += list(range(1000, 1100))
    expected[1] += list(range(500, 600))
    wait_seen(worker, expected)
    wait_settled(rdb, worker, "seekout")
    # Restarted, it resumes from the commits: nothing is delivered again.
    worker.stop()
    again = start_worker("seekout")
    again.wait_ready(owns=[TOPIC], partitions=PARTITIONS)
    fill(rdb, 1, 1)
    wait_seen(again, {1: [600]})
    state = again.state() or {}
    assert "0" not in state["seen"], state["seen"].get("0", [])[:10]


@pytest.mark.parametrize("buffer", [64, 4096])
def test_every_entry_once_in_order_with_holes_waiting_deliveries_and_frequent_commits(
    rdb: redis.Redis, start_worker: Callable[..., fp.FaustWorker], buffer: int
) -> None:
    # 64: deliveries wait for room; 4096: the delivery loop paces itself.
    counts = {0: 3000, 1: 1200}
    for p, count in counts.items():
        fp.xadd_messages(
            rdb,
            TOPIC,
            PARTITIONS,
            ((None, b"%d" % i, None) for i in range(count)),
            keyless_partition=lambda i, p=p: p,
        )
    # Holes at the start, across the 100-message delivery runs, in runs.
    holes = {0: [0, 1, 99, 100, 101, 500, 1234, 1235, 2998], 1: [250, 251, 252, 253, 999]}
    for p, offsets in holes.items():
        rdb.xdel(names.stream_key(TOPIC, p), *[f"0-{o + 1}" for o in offsets])
    worker = start_worker("fast", BUFFER=buffer, SLOW_EVERY=20, BROKER_COMMIT_EVERY=50)
    expected = {p: [o for o in range(n) if o not in holes[p]] for p, n in counts.items()}

    def enough() -> bool:
        seen = (worker.state() or {}).get("seen", {})
        return all(len(seen.get(str(p), ())) >= len(offs) for p, offs in expected.items())

    fp.wait_for(enough, 40, "all entries seen", [worker])

    def settled() -> bool:
        state = worker.state() or {}
        hw = fp.highwaters(rdb, TOPIC, PARTITIONS)
        return fp.committed(rdb, "fast", TOPIC, PARTITIONS) == hw and state.get("unacked") == 0

    fp.wait_for(settled, 20, "commits at the highwater, nothing unacked", [worker])
    seen = (worker.state() or {})["seen"]
    for p, offsets in expected.items():
        assert seen[str(p)] == offsets, p
