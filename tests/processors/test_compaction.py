"""Changelog compaction (processors/transport/compaction.py) in a real worker
on a private Redis: the changelog stays bounded while events keep coming,
and a restarted worker recovers the exact table from the compacted stream."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faustproc as fp
from tierstream.schemas import names

pytestmark = pytest.mark.timeout(120)

PARTITIONS = 4
KEYS = 40
EVENTS = 12_000
CHANGELOG = "c-item_counts-changelog"


@pytest.fixture
def rdb(private_redis: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_redis.url)
    yield client
    client.close()


def lengths(client: redis.Redis) -> list[int]:
    return [int(client.xlen(names.stream_key(CHANGELOG, p))) for p in range(PARTITIONS)]


def test_changelog_stays_bounded_and_recovery_is_exact(
    rdb: redis.Redis, private_redis: Any, tmp_path: Path
) -> None:
    env = fp.app_env(private_redis.url, "c", PARTITIONS=PARTITIONS, COMPACT_MIN=300)
    worker = fp.FaustWorker("apps.compacting", env, tmp_path, "c-0").start()
    try:
        worker.wait_ready(owns=["items"], partitions=PARTITIONS)
        keys = [f"k{i % KEYS}".encode() for i in range(EVENTS)]
        truth = Counter(k.decode() for k in keys)
        for start in range(0, EVENTS, 1000):
            fp.xadd_messages(
                rdb,
                "items",
                PARTITIONS,
                [(k, orjson.dumps("x"), None) for k in keys[start : start + 1000]],
            )
        fp.wait_for(
            lambda: (worker.state() or {}).get("counts") == truth,
            60,
            "all events counted",
            [worker],
        )
        # Each partition's changelog had ~3000 entries written; compaction
        # keeps it under max(2 x live keys, 300) plus what arrived since.
        fp.wait_for(
            lambda: max(lengths(rdb)) <= 300,
            20,
            "changelog compacted",
            [worker],
            describe=lambda: f"lengths {lengths(rdb)}",
        )
        assert "Compacted changelog" in worker.logfile.read_text()
        assert worker.stop(timeout=10) == 0

        again = fp.FaustWorker("apps.compacting", env, tmp_path, "c-1").start()
        try:
            again.wait_ready(owns=["items"], partitions=PARTITIONS)
            assert (again.state() or {}).get("counts") == truth
        finally:
            again.stop()
    finally:
        worker.stop()
        print(worker.describe(40))
