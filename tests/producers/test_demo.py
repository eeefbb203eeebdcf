"""The demo (README's first command) end to end, and the embedded SQLite fallback tier."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis
from tierstream.producers.tiers import SqliteTier
from tierstream.schemas.names import ACCESS_TOPIC, ALERTS_TOPIC, stream_key

from ..conftest import free_port


def count_events(url: str) -> int:
    client = redis.Redis.from_url(url)
    total = 0
    for p in range(8):
        for _id, fields in client.xrange(stream_key(ACCESS_TOPIC, p)):
            total += int(fields[b"n"])
    client.close()
    return total


def run_demo(url: str, tmp_path: Path, duration: float) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        TIERSTREAM_REDIS_URL=url,
        TIERSTREAM_CHROMA_PATH=str(tmp_path / "chroma"),
        TIERSTREAM_HISTORY="0",  # the demo's history is not what this test checks
    )
    return subprocess.run(
        [sys.executable, "-m", "tierstream", "demo", "--duration", str(duration), "--agents", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )


@pytest.mark.timeout(300)
def test_demo_tells_the_story_end_to_end(redis_url: str, tmp_path: Path) -> None:
    """Worker, agents, incident: an alert fires and resolves, suggestions appear, every
    published event is counted by the pipeline's windows, and nothing is left running."""
    proc = run_demo(redis_url, tmp_path, 45)
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:] + proc.stderr[-3000:]
    m = re.search(
        r"summary: ([\d,]+) accesses .* Redis acknowledged ([\d,]+) events, dropped 0, "
        r"write errors 0; the pipeline's windows counted ([\d,]+) of them",
        out,
    )
    assert m, out[-3000:]
    accesses, acked, counted = (int(g.replace(",", "")) for g in m.groups())
    assert accesses == acked == counted > 0
    assert count_events(redis_url) == acked
    fired = re.findall(r"ALERT FIRING \[\w+\] ([\w-]+) ", out)
    resolved = re.findall(r"ALERT RESOLVED \[\w+\] ([\w-]+) ", out)
    assert set(fired) & set(resolved), out[-5000:]
    assert re.search(r"SUGGESTION pre_cache r\d+: Pre-cache: query ", out), out[-5000:]
    assert re.search(r"window \d\d:\d\d:\d\d-\d\d:\d\d:\d\d: +[\d,]+ events", out)
    assert "INCIDENT" in out and "L1 recovered" in out
    # The printed records are the ones on the topics (read as any process would).
    client = redis.Redis.from_url(redis_url)
    alerts = [orjson.loads(f[b"v"]) for _i, f in client.xrange(stream_key(ALERTS_TOPIC, 0))]
    client.close()
    assert sorted(a["rule"] for a in alerts if a["state"] == "firing") == sorted(fired)
    # The worker was stopped: its web port no longer answers.
    port = re.search(r"http://127.0.0.1:(\d+)/metrics", out)
    assert port, out[-2000:]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics", timeout=2)


def test_demo_starts_a_private_redis_when_none_answers(tmp_path: Path) -> None:
    proc = run_demo(f"redis://127.0.0.1:{free_port()}/0", tmp_path, 3)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "started a private redis-server" in proc.stdout
    assert "summary:" in proc.stdout


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
