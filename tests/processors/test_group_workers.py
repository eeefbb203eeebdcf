"""Several ``faust -A apps.<name> worker`` processes sharing partitions over
the redis:// group protocol, each test on a private redis-server it starts.

Workers use a 4 s session timeout and 0.3 s heartbeats (apps/common.py).
Word counts are read from the worker that owns the word's partition of the
``words`` topic and compared with the counts sent.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faustproc as fp
from test_faust_apps import WORDS, post_messages
from tierstream.schemas.partition import partition_for

pytestmark = pytest.mark.timeout(150)

PARTITIONS = 8
TOPICS = ("posts", "words")
SESSION = 4.0

StartWorker = Callable[..., fp.FaustWorker]


@pytest.fixture
def rdb(private_redis: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_redis.url)
    yield client
    client.close()


@pytest.fixture
def start_worker(private_redis: Any, tmp_path: Path) -> Iterator[StartWorker]:
    started: list[fp.FaustWorker] = []

    def start(module: str, app_id: str, **knobs: str | float | int) -> fp.FaustWorker:
        env = fp.app_env(private_redis.url, app_id, PARTITIONS=PARTITIONS, **knobs)
        worker = fp.FaustWorker(module, env, tmp_path, f"{app_id}-{len(started)}")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        if worker.proc is not None:
            os.killpg(worker.proc.pid, signal.SIGCONT)
        worker.stop(timeout=5)
    for worker in started:
        print(worker.describe(60))


def wait_shared(
    workers: list[fp.FaustWorker], topics: tuple[str, ...] = TOPICS, timeout: float = 30.0
) -> dict[str, set[str]]:
    """Wait until every worker is ready and the workers' assignments of
    ``topics`` are disjoint, non-empty, and cover every partition."""
    wanted = {f"{t}:{p}" for t in topics for p in range(PARTITIONS)}
    last: dict[str, set[str]] = {}

    def shared() -> dict[str, set[str]] | None:
        nonlocal last
        last = {}
        for w in workers:
            state = w.state() or {}
            if not state.get("ready"):
                return None
            last[w.name] = {a for a in state["assigned"] if a.rsplit(":", 1)[0] in topics}
        sets = list(last.values())
        if any(not s for s in sets) or sum(len(s) for s in sets) != len(wanted):
            return None
        return last if set().union(*sets) == wanted else None

    return fp.wait_for(
        shared, timeout, "partitions shared by all workers", workers, lambda: f"last: {last}"
    )


def owner_counts(workers: list[fp.FaustWorker], shares: dict[str, set[str]]) -> dict[str, int]:
    """Each word's count as its owner (the worker owning its ``words`` partition) has it."""
    states = {w.name: (w.state() or {}) for w in workers}
    out: dict[str, int] = {}
    for word in WORDS:
        tp = f"words:{partition_for(word.encode(), PARTITIONS)}"
        owner = next(name for name, share in shares.items() if tp in share)
        out[word] = int(states[owner].get("counts", {}).get(word, 0))
    return out


def drained(client: redis.Redis, group: str) -> bool:
    for topic in TOPICS:
        hw = fp.highwaters(client, topic, PARTITIONS)
        if sum(hw.values()) == 0 or fp.committed(client, group, topic, PARTITIONS) != hw:
            return False
    return True


def wait_drained(client: redis.Redis, group: str, workers: list[fp.FaustWorker]) -> None:
    fp.wait_for(lambda: drained(client, group), 60, f"group {group} drained", workers)


def test_join_and_leave_rebalance_and_counts_stay_exact(
    rdb: redis.Redis, start_worker: StartWorker
) -> None:
    first = start_worker("apps.wordcount", "g")
    first.wait_ready(owns=TOPICS)
    fp.xadd_messages(rdb, "posts", PARTITIONS, post_messages(300, "a", seed=1))
    others = [start_worker("apps.wordcount", "g") for _ in range(2)]
    workers = [first, *others]
    started = time.monotonic()
    shares = wait_shared(workers)
    joined_in = time.monotonic() - started
    assert sorted(len(s) for s in shares.values()) == [4, 6, 6]
    fp.xadd_messages(rdb, "posts", PARTITIONS, post_messages(300, "b", seed=2))
    wait_drained(rdb, "g", workers)
    assert owner_counts(workers, shares) == dict.fromkeys(WORDS, 600)

    # A graceful stop leaves the group: the others take over well within the
    # session timeout (nobody waits for the leaver to expire).
    leaver = workers.pop(1)
    started = time.monotonic()
    assert leaver.stop(timeout=10) == 0
    shares = wait_shared(workers, timeout=SESSION * 3)
    left_in = time.monotonic() - started
    fp.xadd_messages(rdb, "posts", PARTITIONS, post_messages(300, "c", seed=3))
    wait_drained(rdb, "g", workers)
    assert owner_counts(workers, shares) == dict.fromkeys(WORDS, 900)
    print(f"join rebalance {joined_in:.1f} s, leave rebalance {left_in:.1f} s")


def test_kill9_of_one_of_three_workers_mid_stream(
    rdb: redis.Redis, start_worker: StartWorker
) -> None:
    workers = [start_worker("apps.wordcount", "k", COUNT_DELAY=0.002) for _ in range(3)]
    wait_shared(workers, timeout=45)
    fp.xadd_messages(rdb, "posts", PARTITIONS, post_messages(600, "k", seed=4))
    time.sleep(1.0)
    victim = workers.pop(0)
    victim.kill9()
    shares = wait_shared(workers, timeout=SESSION * 4)
    wait_drained(rdb, "k", workers)
    counts = owner_counts(workers, shares)
    # At-least-once: what the victim processed after its last commit is
    # processed again by the new owner.
    assert all(counts[w] >= 600 for w in WORDS), counts
    print(f"counts after kill -9: {counts} (truth 600 each)")


def test_stopped_worker_is_fenced_and_rejoins(rdb: redis.Redis, start_worker: StartWorker) -> None:
    """SIGSTOP past the session timeout: the other worker takes every
    partition; on SIGCONT the stopped one finds it expired, drops its
    partitions without committing for them, and rejoins."""
    a = start_worker("apps.wordcount", "f")
    b = start_worker("apps.wordcount", "f")
    wait_shared([a, b])
    assert a.proc is not None
    os.killpg(a.proc.pid, signal.SIGSTOP)
    try:
        wait_shared([b], timeout=SESSION * 4)
        fp.xadd_messages(rdb, "posts", PARTITIONS, post_messages(300, "f", seed=5))
        wait_drained(rdb, "f", [b])
        token_owners = {v.split(b":", 1)[1] for v in rdb.hvals("ts:group:{f}:owners")}
        assert len(token_owners) == 1, token_owners
    finally:
        os.killpg(a.proc.pid, signal.SIGCONT)
    shares = wait_shared([a, b], timeout=SESSION * 4)
    log = a.logfile.read_text(errors="replace")
    assert "had expired" in log or "refused" in log, a.log_tail()
    fp.xadd_messages(rdb, "posts", PARTITIONS, post_messages(300, "g", seed=6))
    wait_drained(rdb, "f", [a, b])
    counts = owner_counts([a, b], shares)
    assert all(counts[w] >= 600 for w in WORDS), counts


def test_on_leader_timer_runs_on_exactly_one_worker(start_worker: StartWorker) -> None:
    workers = [start_worker("apps.features", "l") for _ in range(3)]
    wait_shared(workers, topics=("numbers", "doubled"), timeout=45)
    time.sleep(1.0)

    def ticks() -> list[int]:
        return [int((w.state() or {}).get("leader_ticks", 0)) for w in workers]

    before = ticks()
    time.sleep(2.0)
    after = ticks()
    grew = [i for i, (x, y) in enumerate(zip(before, after, strict=True)) if y > x]
    assert len(grew) == 1, (before, after)
