"""Run Faust apps from tests/processors/apps as ``faust -A apps.<name> worker`` subprocesses.

A :class:`FaustWorker` owns one worker process: its own free web port, its own
data directory and log file under the test's tmp dir, and its own process
group (so ``kill -9`` reaches everything it started). :func:`wait_for` polls a
condition with a deadline and fails with the workers' log tails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import redis
from tierstream.schemas import names
from tierstream.schemas.partition import partition_for

#: Folder holding the ``apps`` package; put on PYTHONPATH of every worker.
APPS_ROOT = Path(__file__).resolve().parent
FAUST = str(Path(sys.executable).with_name("faust"))

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app_env(broker_url: str, app_id: str, **knobs: str | float | int) -> dict[str, str]:
    """Environment of an app process: ours plus ``BROKER_URL``, ``APP_ID`` and knobs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(APPS_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["BROKER_URL"] = broker_url
    env["APP_ID"] = app_id
    env["EXIT_WITH_PARENT"] = str(os.getpid())
    # tests that want history (tests/sinks) pass TIERSTREAM_HISTORY and a DSN as knobs;
    # the others must not write into whatever PostgreSQL answers by default
    env.setdefault("TIERSTREAM_HISTORY", "0")
    env.update({k: str(v) for k, v in knobs.items()})
    return env


class WorkerDied(AssertionError):
    pass


class FaustWorker:
    """One ``faust -A <module> worker`` subprocess."""

    def __init__(self, module: str, env: Mapping[str, str], workdir: Path, name: str) -> None:
        self.module = module
        self.env = dict(env)
        self.name = name
        self.workdir = workdir
        self.datadir = workdir / f"{name}-data"
        self.logfile = workdir / f"{name}.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> FaustWorker:
        assert self.proc is None, "already started"
        self.datadir.mkdir(parents=True, exist_ok=True)
        cmd = [
            FAUST,
            "-A",
            self.module,
            "--datadir",
            str(self.datadir),
            "-l",
            "info",
            "worker",
            "--web-port",
            str(self.port),
            "--web-host",
            "127.0.0.1",
            "--web-bind",
            "127.0.0.1",
        ]
        with self.logfile.open("ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                cwd=APPS_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the worker's whole process group and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; returns the exit code (None if killed)."""
        if self.proc is None:
            return None
        proc = self.proc
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                self.kill9()
                return None
        self.proc = None
        return proc.returncode

    # --- observation -----------------------------------------------------------

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log file {self.logfile})"
        return "\n".join(text.splitlines()[-lines:])

    def error_lines(self, limit: int = 20) -> list[str]:
        """The first ``limit`` ERROR/CRITICAL lines of the whole log (they may be long
        before its tail)."""
        try:
            text = self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return []
        found = [ln for ln in text.splitlines() if "] [ERROR] " in ln or "] [CRITICAL] " in ln]
        return found[:limit]

    def describe(self, lines: int = 60) -> str:
        status = (
            "running"
            if self.alive
            else (f"exited rc={self.proc.returncode}" if self.proc is not None else "not running")
        )
        errors = "\n".join(self.error_lines()) or "(none)"
        return (
            f"----- worker {self.name} ({self.module}, port {self.port}, {status})\n"
            f"ERROR/CRITICAL lines anywhere in {self.logfile}:\n{errors}\n"
            f"last {lines} log lines:\n{self.log_tail(lines)}\n-----"
        )

    def get(self, path: str, timeout: float = 3.0) -> tuple[int, bytes]:
        """``GET http://127.0.0.1:<port><path>``: ``(status, body)``."""
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def state(self) -> dict[str, Any] | None:
        """The app's ``/state/`` JSON, or None while the web server does not answer."""
        if not self.alive:
            raise WorkerDied(f"worker {self.name} is not running\n{self.describe()}")
        try:
            status, body = self.get("/state/")
        except (OSError, urllib.error.URLError):
            return None
        if status != 200:
            return None
        return dict(json.loads(body))

    def safe_state(self) -> str:
        """``/state/`` for failure messages: never raises."""
        try:
            return repr(self.state())
        except Exception as exc:
            return f"(no state: {exc.__class__.__name__})"

    def wait_ready(
        self, timeout: float = 30.0, owns: Iterable[str] = (), partitions: int = 8
    ) -> dict[str, Any]:
        """Wait until ``/state/`` says the worker is assigned, recovered and not rebalancing,
        and (a lone worker must end up with everything) owns all ``partitions`` partitions
        of every topic in ``owns``."""
        wanted = {f"{topic}:{p}" for topic in owns for p in range(partitions)}
        last: dict[str, Any] = {}

        def ready() -> dict[str, Any] | None:
            nonlocal last
            last = self.state() or {}
            ok = last.get("ready") and wanted <= set(last.get("assigned", ()))
            return last if ok else None

        return wait_for(
            ready,
            timeout,
            f"worker {self.name} ready and owning all of {sorted(owns)}",
            [self],
            describe=lambda: f"last state: {last}",
        )


def wait_for(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    workers: Iterable[FaustWorker] = (),
    describe: Callable[[], str] | None = None,
    interval: float = 0.1,
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s.

    The failure message has ``describe()`` (the last observed state) and the
    log tails of ``workers``. A worker that died while waiting fails at once.
    """
    workers = list(workers)
    deadline = time.monotonic() + timeout
    while True:
        for w in workers:
            if w.proc is not None and not w.alive:
                raise WorkerDied(f"while waiting for {what}: worker {w.name} died\n{w.describe()}")
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = describe() if describe is not None else ""
            tails = "\n".join(w.describe() for w in workers)
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}\n{detail}\n{tails}"
            )
        time.sleep(interval)


# --- talking to the topics directly (the documented wire format) ------------------


def xadd_messages(
    client: redis.Redis,
    topic: str,
    partitions: int,
    messages: Iterable[tuple[bytes | None, bytes, int | None]],
    keyless_partition: Callable[[int], int] | None = None,
) -> dict[int, int]:
    """Append ``(key, value, timestamp_ms)`` messages to ``topic`` as any producer may:
    ``XADD <stream_key(topic, p)> 0-* v <value> [k <key>] [t <ms>]``, where ``p`` is
    :func:`partition_for` of the key (keyless: ``keyless_partition(i)``, default
    round-robin). Returns the number of entries written per partition."""
    pick = keyless_partition or (lambda i: i % partitions)
    per_partition: dict[int, int] = {}
    pipe = client.pipeline(transaction=False)
    for i, (key, value, ts) in enumerate(messages):
        p = partition_for(key, partitions) if key is not None else pick(i)
        fields: dict[bytes, bytes] = {b"v": value}
        if key is not None:
            fields[b"k"] = key
        if ts is not None:
            fields[b"t"] = b"%d" % ts
        pipe.xadd(names.stream_key(topic, p), fields, id="0-*")  # type: ignore[arg-type]
        per_partition[p] = per_partition.get(p, 0) + 1
        if len(pipe) >= 500:
            pipe.execute()
    pipe.execute()
    return per_partition


def highwaters(client: redis.Redis, topic: str, partitions: int) -> dict[int, int]:
    """Next offset to be written per partition (XINFO STREAM entries-added; 0 if absent)."""
    out: dict[int, int] = {}
    for p in range(partitions):
        try:
            info: dict[Any, Any] = client.xinfo_stream(names.stream_key(topic, p))
        except redis.ResponseError:  # no such key
            out[p] = 0
            continue
        out[p] = int(info.get("entries-added") or info.get(b"entries-added") or 0)
    return out


def committed(client: redis.Redis, group: str, topic: str, partitions: int) -> dict[int, int]:
    """Committed offsets (next offset to read) of ``group`` on ``topic``; 0 if none."""
    raw = client.hgetall(names.commits_key(group))
    decoded = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
    return {p: decoded.get(f"{topic}:{p}", 0) for p in range(partitions)}
