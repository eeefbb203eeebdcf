"""The demo's servers: Redis (:func:`redis_for_demo`) and the pipeline worker.

The worker is a ``tierstream worker`` subprocess with short windows.

:class:`DemoWorker` starts it with its own consumer group (``tierstream-demo``)
that begins at the current end of every topic it reads, so a Redis that
already holds tierstream data (an earlier demo, a real deployment) is left
alone and the demo sees only its own events: :func:`start_from_now` deletes
what an earlier demo left under that group (its table changelogs, commits,
membership) and commits the current end offsets of the topics. The worker's
log goes to a file; :meth:`DemoWorker.stop` sends SIGTERM (then SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from tierstream.schemas import names

APP_ID = "tierstream-demo"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


#: Topics the pipeline's agents read: the demo's group starts at their current end.
READ_TOPICS = (
    names.ACCESS_TOPIC,
    names.WINDOW_PARTIALS_TOPIC,
    names.WINDOW_SUMMARIES_TOPIC,
    names.METRICS_TOPIC,
    names.SUGGESTIONS_TOPIC,
    names.ALERTS_TOPIC,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_from_now(client: aioredis.Redis, app_id: str, partitions: int) -> None:
    """Forget an earlier run of consumer group ``app_id`` and commit the topics' ends."""
    doomed: list[Any] = [names.commits_key(app_id)]
    for pattern in (f"*{{{app_id}-*", names.group_key(app_id, "*")):
        doomed += [k async for k in client.scan_iter(match=pattern, count=1000)]
    for key in doomed:
        await client.delete(key)
    async for raw in client.sscan_iter(names.TOPICS_INDEX_KEY):
        topic = raw.decode() if isinstance(raw, bytes) else raw
        if topic.startswith(f"{app_id}-"):
            await client.srem(names.TOPICS_INDEX_KEY, raw)
    commits: dict[str, int] = {}
    for topic in READ_TOPICS:
        n = partitions if topic == names.ACCESS_TOPIC else 1
        for p in range(n):
            try:
                info: Any = await client.xinfo_stream(names.stream_key(topic, p))
            except ResponseError:  # no stream yet: start at 0
                continue
            commits[f"{topic}:{p}"] = int(info.get("entries-added") or 0)
    if commits:
        await client.hset(names.commits_key(app_id), mapping=commits)  # type: ignore[arg-type]


def spawn_redis_server(binary: str, workdir: str | Path) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server on a free local port that keeps nothing on disk, and its
    port; it is started, not waited for (the caller pings it)."""
    port = free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [binary, *args, "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


@contextlib.asynccontextmanager
async def redis_for_demo(url: str) -> AsyncIterator[str]:
    """``url`` if a Redis answers there, else a private redis-server for the demo's lifetime."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1.0)
    try:
        await client.ping()
        yield url
        return
    except (OSError, aioredis.ConnectionError, aioredis.TimeoutError):
        pass
    finally:
        await client.aclose()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            f"no Redis answers at {url} and no redis-server binary is installed: "
            "start Redis >= 7.0 or set TIERSTREAM_REDIS_URL"
        )
    workdir = tempfile.mkdtemp(prefix="tierstream-redis-")
    # Popen returns at once; the server runs beside the demo until the finally below.
    proc, port = spawn_redis_server(binary, workdir)
    private = f"redis://127.0.0.1:{port}/0"
    say(f"no Redis at {url}: started a private redis-server at {private}")
    try:
        probe = aioredis.Redis.from_url(private)
        for _ in range(100):
            with contextlib.suppress(OSError, aioredis.ConnectionError):
                await probe.ping()
                break
            await asyncio.sleep(0.05)
        await probe.aclose()
        yield private
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


def _die_with_parent() -> None:
    """In the child (Linux): SIGTERM it when the demo dies, even by SIGKILL, so a
    worker never outlives its demo and joins the next demo's group."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class DemoWorker:
    """One ``tierstream worker`` subprocess for the demo."""

    def __init__(self, redis_url: str, workdir: Path, window_s: int, env: Mapping[str, str]):
        self.redis_url = redis_url
        self.workdir = workdir
        self.window_s = window_s
        self.env = dict(env)
        self.port = free_port()
        self.logfile = workdir / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DemoWorker:
        w = self.window_s
        cmd = [sys.executable, "-m", "tierstream", "worker", "--redis-url", self.redis_url]
        cmd += ["--web-port", str(self.port), "--datadir", str(self.workdir / "data")]
        cmd += ["--window-s", str(w), "--hop-size-s", str(2 * w), "--hop-step-s", str(w)]
        cmd += ["--grace-s", "1", "--lateness-s", "1", "--merge-timeout-s", str(2 * w)]
        cmd += ["-l", "warn"]
        env = {**os.environ, **self.env, "TIERSTREAM_APP_ID": APP_ID}
        env.setdefault("TIERSTREAM_COMMIT_INTERVAL", "0.5")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.logfile.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self

    def get(self, path: str) -> dict[str, Any] | None:
        """JSON of ``GET path`` on the worker's web port, or None while it does not answer."""
        try:
            url = f"http://127.0.0.1:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return dict(json.loads(resp.read()))
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def wait_ready(self, timeout: float = 90.0) -> None:
        """Until the worker owns the summaries partition (its sink agents run)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise SystemExit(f"the pipeline worker exited:\n{self.log_tail()}")
            state = await asyncio.to_thread(self.get, "/tierstream/sinks")
            if state and state.get("owner"):
                return
            await asyncio.sleep(0.5)
        raise SystemExit(
            f"the pipeline worker was not ready after {timeout:.0f}s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the worker's process group; SIGKILL after ``timeout`` s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode
