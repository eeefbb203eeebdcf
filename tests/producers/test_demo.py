"""The demo (README's first command) and the embedded SQLite fallback tier."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import redis
from tierstream.producers.tiers import SqliteTier
from tierstream.schemas.names import ACCESS_TOPIC, stream_key

from ..conftest import free_port


def count_events(url: str) -> int:
    client = redis.Redis.from_url(url)
    total = 0
    for p in range(8):
        for _id, fields in client.xrange(stream_key(ACCESS_TOPIC, p)):
            total += int(fields[b"n"])
    client.close()
    return total


def run_demo(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, TIERSTREAM_REDIS_URL=url, TIERSTREAM_CHROMA_PATH=str(tmp_path / "chroma")
    )
    return subprocess.run(
        [sys.executable, "-m", "tierstream", "demo", "--duration", "2", "--agents", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_publishes_every_access(redis_url: str, tmp_path: Path) -> None:
    proc = run_demo(redis_url, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(
        r"summary: ([\d,]+) accesses .* Redis acknowledged ([\d,]+) events, dropped 0", proc.stdout
    )
    assert m, proc.stdout
    accesses, acked = (int(g.replace(",", "")) for g in m.groups())
    assert accesses == acked > 0
    assert count_events(redis_url) == acked
    assert "served by" in proc.stdout


def test_demo_starts_a_private_redis_when_none_answers(tmp_path: Path) -> None:
    proc = run_demo(f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "started a private redis-server" in proc.stdout


async def test_sqlite_tier(tmp_path: Path) -> None:
    tier = SqliteTier(tmp_path / "l2.sqlite3")
    assert await tier.get("k") is None
    await tier.put("k", {"a": 1})
    assert await tier.get("k") == {"a": 1}
    await tier.put("short", 1, ttl=0.01)
    await tier.put_search("Q", [1, 2, 3])
    assert await tier.search("q", limit=2) == [1, 2]
    import asyncio

    await asyncio.sleep(0.05)
    assert await tier.get("short") is None
    await tier.close()
