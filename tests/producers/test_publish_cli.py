"""`tierstream publish`: JSON lines on standard input from any process."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import redis
from tierstream.schemas.names import ACCESS_TOPIC, stream_key
from tierstream.schemas.wire import decode_events

from ..conftest import free_port


def minimal(i: int) -> dict[str, object]:
    """What a producer in another language might send: optional fields left out."""
    return {
        "agent_id": "rust-agent",
        "operation": "get",
        "query": f"key {i}",
        "tier_accessed": None,
        "tier_latencies": {"l1": {"latency_ms": 0.2, "hit": False}},
        "total_latency_ms": 0.3,
        "cache_hit": False,
        "result_count": 0,
    }


def run_publish(stdin: bytes, url: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, TIERSTREAM_REDIS_URL=url)
    return subprocess.run(
        [sys.executable, "-m", "tierstream", "publish", "--timeout", "2"],
        input=stdin,
        env=env,
        capture_output=True,
        timeout=60,
    )


def all_events(url: str) -> list[dict[str, object]]:
    client = redis.Redis.from_url(url)
    out = []
    for p in range(8):
        for _id, fields in client.xrange(stream_key(ACCESS_TOPIC, p)):
            out.extend(decode_events(fields[b"v"]))
    client.close()
    return out


def test_good_lines_are_published_and_bad_lines_named(redis_url: str) -> None:
    lines = [orjson.dumps(minimal(i)) for i in range(5)]
    lines.insert(2, b"{not json")
    bad_field = minimal(99)
    bad_field["operation"] = "delete"
    lines.append(orjson.dumps(bad_field))
    lines.append(b"")
    proc = run_publish(b"\n".join(lines) + b"\n", redis_url)
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "line 3: (line): not valid JSON" in err
    assert "line 7: operation: must be one of get, search, put" in err
    events = all_events(redis_url)
    assert sorted(str(e["query"]) for e in events) == [f"key {i}" for i in range(5)]
    assert all(len(str(e["event_id"])) == 32 and e["schema_version"] == 1 for e in events)


def test_all_good_exits_zero(redis_url: str) -> None:
    proc = run_publish(b"\n".join(orjson.dumps(minimal(i)) for i in range(100)), redis_url)
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(all_events(redis_url)) == 100


def test_unreachable_redis_exits_two_without_hanging() -> None:
    proc = run_publish(orjson.dumps(minimal(1)), f"redis://127.0.0.1:{free_port()}/0")
    assert proc.returncode == 2
    assert b"1 undelivered" in proc.stderr
