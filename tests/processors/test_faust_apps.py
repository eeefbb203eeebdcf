"""Black-box tests of the redis:// transport: whole Faust apps run as
``faust -A apps.<name> worker`` subprocesses against the real Redis.

Every test has a Redis database of its own (fixture ``redis_url``: DB
``$TIERSTREAM_TEST_REDIS_DB``, default 15, flushed before and after). Results
are read from the app's ``/state/`` page and from Redis itself (committed
offsets, stream contents) and compared with counts computed here. Workers are
always killed at teardown; a failing test shows their log tails.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faust
import orjson
import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faustproc as fp
from tierstream.schemas import names
from tierstream.schemas.partition import partition_for

pytestmark = pytest.mark.timeout(90)

PARTITIONS = 8
WORDS = ("alpha", "beta", "gamma", "delta")
#: Topics the wordcount app consumes (the changelog is read only during recovery).
WORDCOUNT_TOPICS = ["posts", "words"]

StartWorker = Callable[..., fp.FaustWorker]


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[StartWorker]:
    """``start_worker(module, app_id, **knobs)`` starts a worker; all are killed at teardown,
    and their log tails printed (pytest shows them only when the test failed)."""
    started: list[fp.FaustWorker] = []

    def start(module: str, app_id: str, **knobs: str | float | int) -> fp.FaustWorker:
        env = fp.app_env(redis_url, app_id, PARTITIONS=PARTITIONS, **knobs)
        worker = fp.FaustWorker(module, env, tmp_path, f"{app_id}-{len(started)}")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop(timeout=5)
    for worker in started:
        print(worker.describe(80))


# --- helpers ------------------------------------------------------------------


def post_messages(count: int, prefix: str, seed: int) -> list[tuple[bytes | None, bytes, None]]:
    """``count`` posts, each the four WORDS in a random order, as JSON strings (the topic's
    value type is ``str``, Faust's default value serializer is JSON, its default key
    serializer raw). Every third post has no key (spread round-robin)."""
    rng = random.Random(seed)
    out: list[tuple[bytes | None, bytes, None]] = []
    for i in range(count):
        words = list(WORDS)
        rng.shuffle(words)
        key = None if i % 3 == 0 else f"{prefix}-{i}".encode()
        out.append((key, orjson.dumps(" ".join(words)), None))
    return out


def drained(client: redis.Redis, group: str, topics: list[str]) -> bool:
    """Every partition of every topic committed up to its highwater, in order: when
    ``posts`` is fully committed, every word it produced is already in ``words``."""
    for topic in topics:
        hw = fp.highwaters(client, topic, PARTITIONS)
        if sum(hw.values()) == 0 or fp.committed(client, group, topic, PARTITIONS) != hw:
            return False
    return True


def offsets_report(client: redis.Redis, group: str, topics: list[str]) -> str:
    lines = []
    for topic in topics:
        lines.append(f"{topic}: highwater {fp.highwaters(client, topic, PARTITIONS)}")
        lines.append(f"{topic}: committed {fp.committed(client, group, topic, PARTITIONS)}")
    return "\n".join(lines)


def wait_drained(
    client: redis.Redis,
    group: str,
    topics: list[str],
    worker: fp.FaustWorker,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Wait until ``group`` has committed everything on ``topics``; return ``/state/``."""
    fp.wait_for(
        lambda: drained(client, group, topics),
        timeout,
        f"group {group} to commit up to the highwater of {topics}",
        [worker],
        describe=lambda: f"{offsets_report(client, group, topics)}\nstate: {worker.safe_state()}",
    )
    state = worker.state()
    assert state is not None
    return state


def wait_counts(
    worker: fp.FaustWorker, expected: dict[str, int], timeout: float = 30.0
) -> dict[str, int]:
    last: dict[str, Any] = {}

    def match() -> bool:
        nonlocal last
        last = worker.state() or {}
        return last.get("counts") == expected

    fp.wait_for(
        match,
        timeout,
        f"counts == {expected}",
        [worker],
        describe=lambda: f"last counts: {last.get('counts')}",
    )
    return dict(last["counts"])


def stream_entries(client: redis.Redis, topic: str) -> dict[int, list[dict[bytes, bytes]]]:
    """All entries of every partition of ``topic``, in order."""
    out: dict[int, list[dict[bytes, bytes]]] = {}
    for p in range(PARTITIONS):
        entries: Any = client.xrange(names.stream_key(topic, p))
        out[p] = [fields for _id, fields in entries]
    return out


def run_client(
    cmd: list[str], env: dict[str, str], timeout: float = 45.0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, cwd=fp.APPS_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
        f"stderr:\n{proc.stderr[-5000:]}"
    )
    return proc


# --- 1. word count with repartitioning ----------------------------------------------


def test_word_count_with_repartition_is_exact(rdb: redis.Redis, start_worker: StartWorker) -> None:
    worker = start_worker("apps.wordcount", "wc")
    worker.wait_ready(owns=WORDCOUNT_TOPICS)
    fp.xadd_messages(rdb, "posts", PARTITIONS, post_messages(1000, "p", seed=1))

    state = wait_drained(rdb, "wc", ["posts", "words"], worker)
    assert state["counts"] == dict.fromkeys(WORDS, 1000)

    # Each word was re-keyed exactly once, onto the partition of its key (the
    # partitioner of schemas/partition.py, Kafka's rule).
    entries = stream_entries(rdb, "words")
    assert sum(len(e) for e in entries.values()) == 4 * 1000
    for p, fields_list in entries.items():
        for fields in fields_list:
            assert partition_for(fields[b"k"], PARTITIONS) == p, (p, fields)
    per_word = Counter(orjson.loads(f[b"v"]) for e in entries.values() for f in e)
    assert per_word == dict.fromkeys(WORDS, 1000)


def test_word_count_stays_exact_under_continuous_load(
    rdb: redis.Redis, start_worker: StartWorker
) -> None:
    """Posts keep arriving for several seconds while the worker consumes and
    re-partitions them: every background task of the consumer (commits,
    highwater refreshes, ...) runs many times against streams that grow under it."""
    worker = start_worker("apps.wordcount", "wcl")
    worker.wait_ready(owns=WORDCOUNT_TOPICS)
    sent = 0
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline:
        fp.xadd_messages(rdb, "posts", PARTITIONS, post_messages(25, f"l{sent}", seed=sent))
        sent += 25
        time.sleep(0.02)
    state = wait_drained(rdb, "wcl", ["posts", "words"], worker, timeout=45)
    assert state["counts"] == dict.fromkeys(WORDS, sent)
    assert sum(fp.highwaters(rdb, "words", PARTITIONS).values()) == 4 * sent


# --- 2. tumbling windows on the message timestamp -------------------------------------


async def faust_send(broker_url: str, topic_name: str, events: list[tuple[str, int]]) -> None:
    """Send ``(key, timestamp_ms)`` events through a Faust client's producer, each with
    its timestamp (``topic.send(timestamp=seconds)``)."""
    app = faust.App("win-sender", broker=broker_url, web_enabled=False, autodiscover=False)
    topic = app.topic(topic_name, key_type=str, partitions=PARTITIONS)
    await app.producer.start()
    try:
        futures = [
            await topic.send(key=key, value={"i": i}, timestamp=ts / 1000)
            for i, (key, ts) in enumerate(events)
        ]
        await app.producer.flush()
        for fut in futures:
            await fut
    finally:
        await app.producer.stop()


def test_tumbling_window_counts_match_event_timestamps(
    redis_url: str, rdb: redis.Redis, start_worker: StartWorker
) -> None:
    size_ms = 10_000
    worker = start_worker("apps.windowed", "win", WINDOW_SIZE=size_ms / 1000, WINDOW_EXPIRES=3600)
    worker.wait_ready(owns=["events"])

    rng = random.Random(2)
    keys = ["sensor-a", "sensor-b", "sensor-c"]
    # Six windows ending a minute ago; window edges themselves included.
    base = int(time.time() * 1000) // size_ms * size_ms - 120_000
    stamps = [base + rng.randrange(6 * size_ms) for _ in range(1200)]
    stamps += [base + w * size_ms + d for w in range(6) for d in (0, 1, size_ms - 1)]
    rng.shuffle(stamps)
    events = [(rng.choice(keys), ts) for ts in stamps]
    truth = Counter((key, ts // size_ms * size_ms) for key, ts in events)

    # Half written as any producer may (XADD with field t), half through a Faust
    # producer with explicit timestamps (the transport writes t for them).
    half = len(events) // 2
    fp.xadd_messages(
        rdb,
        "events",
        PARTITIONS,
        [(key.encode(), orjson.dumps({"i": i}), ts) for i, (key, ts) in enumerate(events[:half])],
    )
    asyncio.run(faust_send(redis_url, "events", events[half:]))
    state = wait_drained(rdb, "win", ["events"], worker)

    got: dict[tuple[str, int], int] = {}
    for key, start, end, count in state["windows"]:
        start_ms = round(start * 1000)
        assert start < end <= start + size_ms / 1000, (key, start, end)
        assert (key, start_ms) not in got, f"window {key} {start} appears twice"
        got[(key, start_ms)] = count
    assert got == dict(truth)
    assert len({start for _key, start in truth}) == 6


# --- 3. kill -9 and restart: the table comes back from its changelog --------------------


def test_kill9_between_commits_then_restart_is_exact(
    rdb: redis.Redis, start_worker: StartWorker
) -> None:
    first = start_worker("apps.wordcount", "wck")
    first.wait_ready(owns=WORDCOUNT_TOPICS)
    fp.xadd_messages(rdb, "posts", PARTITIONS, post_messages(500, "a", seed=3))
    wait_drained(rdb, "wck", ["posts", "words"], first)
    wait_counts(first, dict.fromkeys(WORDS, 500))

    first.kill9()  # everything consumed is committed: the kill lands between commits

    second = start_worker("apps.wordcount", "wck")
    second.wait_ready(timeout=45, owns=WORDCOUNT_TOPICS)
    # Recovered from the changelog, nothing to reprocess: exactly the first batch.
    state = second.state()
    assert state is not None
    assert state["counts"] == dict.fromkeys(WORDS, 500), "table not recovered from changelog"

    fp.xadd_messages(rdb, "posts", PARTITIONS, post_messages(500, "b", seed=4))
    state = wait_drained(rdb, "wck", ["posts", "words"], second)
    assert state["counts"] == dict.fromkeys(WORDS, 1000)


def test_kill9_during_processing_never_undercounts(
    rdb: redis.Redis, start_worker: StartWorker
) -> None:
    posts = 1000
    # 2 ms per counted word: 4000 words take >= 8 s, so the kill lands mid-stream.
    first = start_worker("apps.wordcount", "wcm", COUNT_DELAY=0.002)
    first.wait_ready(owns=WORDCOUNT_TOPICS)
    fp.xadd_messages(rdb, "posts", PARTITIONS, post_messages(posts, "m", seed=5))

    def some_committed() -> bool:
        return sum(fp.committed(rdb, "wcm", "words", PARTITIONS).values()) >= 600

    fp.wait_for(
        some_committed,
        30,
        "600 words committed",
        [first],
        describe=lambda: offsets_report(rdb, "wcm", ["posts", "words"]),
    )
    before = first.state()
    first.kill9()
    assert before is not None
    assert sum(before["counts"].values()) < 4 * posts, "kill did not land mid-stream"

    second = start_worker("apps.wordcount", "wcm")
    second.wait_ready(timeout=45, owns=WORDCOUNT_TOPICS)
    state = wait_drained(rdb, "wcm", ["posts", "words"], second)
    counts = state["counts"]
    assert set(counts) == set(WORDS), counts
    below = {w: counts[w] for w in WORDS if counts[w] < posts}
    assert not below, f"counts below the truth ({posts}) after kill -9: {counts}"
    print(f"counts after kill -9 mid-stream and restart: {counts} (truth {posts} each)")


# --- 4. events from outside the worker process ----------------------------------------


def test_events_sent_by_another_process_and_by_faust_send(
    redis_url: str, rdb: redis.Redis, start_worker: StartWorker
) -> None:
    worker = start_worker("apps.wordcount", "wcx")
    worker.wait_ready(owns=WORDCOUNT_TOPICS)
    env = fp.app_env(redis_url, "wcx", PARTITIONS=PARTITIONS, SENDER_ID="wcx-sender")

    # (a) a plain script with a faust.App of its own: app.topic("posts").send()
    out = run_client([sys.executable, "-m", "apps.sender", "300"], env)
    assert "sent 300" in out.stdout

    # (b) the faust CLI, with and without a key. `faust send` puts the command-line
    # bytes on the wire as they are: the value must be JSON (the app's value
    # serializer), the key is raw (Faust's default key serializer).
    post = orjson.dumps(" ".join(WORDS)).decode()
    send = [fp.FAUST, "-A", "apps.wordcount", "send", "posts", post]
    run_client([*send, "--key", "cli-1"], env)
    run_client([*send, "--repeat", "2"], env)

    hw = fp.highwaters(rdb, "posts", PARTITIONS)
    assert sum(hw.values()) == 303, hw
    state = wait_drained(rdb, "wcx", ["posts", "words"], worker)
    assert state["counts"] == dict.fromkeys(WORDS, 303)


# --- timers, tasks, sinks, web --------------------------------------------------------


def test_timers_tasks_sink_and_web(rdb: redis.Redis, start_worker: StartWorker) -> None:
    worker = start_worker("apps.features", "feat", TIMER_INTERVAL=0.2)
    worker.wait_ready(owns=["numbers", "doubled"])
    fp.xadd_messages(
        rdb, "numbers", PARTITIONS, [(None, orjson.dumps(n), None) for n in range(100)]
    )
    expected = [2 * n for n in range(100)]
    last: dict[str, Any] = {}

    def done() -> bool:
        nonlocal last
        last = worker.state() or {}
        return bool(
            last.get("collected") == expected
            and last.get("sunk") == expected
            and last.get("timer_ticks", 0) >= 3
            and last.get("leader_ticks", 0) >= 3
        )

    fp.wait_for(
        done, 30, "sink results and timer ticks", [worker], describe=lambda: f"last state: {last}"
    )
    assert last["task_runs"] == 1
    assert last["is_leader"] is True

    # The sink topic holds exactly the agent's output, readable by anyone.
    doubled = stream_entries(rdb, "doubled")
    assert sorted(orjson.loads(f[b"v"]) for e in doubled.values() for f in e) == expected

    # Faust's own web views answer too.
    for path in ("/", "/router/"):
        status, body = worker.get(path)
        assert status == 200, (path, status, body[:500])
