"""Scaling benchmark of the redis:// transport's worker group (issue 6).

    python bench/scale.py            # 1,000,000 events per run
    python bench/scale.py --quick    # 200,000 events per run, well under 120 s

Everything runs against a private ``redis-server`` this script starts on a
free loopback port (no persistence) and stops at the end; the shared Redis
is not touched. Workers are ``faust -A scale_app worker`` processes
(``bench/scale_app.py``: a table-updating app; each stream entry carries
``--batch`` events, keys partition-local, one table update per key per entry).

throughput (w1, w2, w3)
    For n = 1, 2, 3: n workers of a fresh group on a fresh topic; once the
    group has handed its partitions to all n members, the events are written
    (raw ``XADD 0-*`` pipelines) and the clock runs until the group's
    committed offsets reach the highwaters. Events per second.
rebalance after a join / after kill -9
    With the 3 workers of the last run: a 4th joins (time from its first
    heartbeat, i.e. its membership in Redis, to the hand-over that includes
    it), then one is killed with SIGKILL (time from the kill to the hand-over
    without it: the session timeout, ``--session`` s, plus a heartbeat).
recovery
    The 1-worker run's table (all the events went through it) is recovered
    by a new worker after the old one stopped: the time between Faust's
    "Restoring state from changelog topics" and "Recovery complete" log
    lines, and the changelog's length (entries over all partitions) before
    the restart, which compaction keeps bounded.

The last line is
``scale: w1=<x> w2=<y> w3=<z> rebalance_s=<r> recovery_s=<t>``
(events/s; r is the kill -9 rebalance, the join figure is printed above it).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import redis
from tierstream.processors.transport import compaction

from tierstream.demo_worker import spawn_redis_server

HERE = Path(__file__).resolve().parent
FAUST = str(Path(sys.executable).with_name("faust"))
PARTITIONS = 8


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    proc, port = spawn_redis_server(binary, workdir)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_timeout=0.2).ping():
                return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("private redis-server did not start")


class Worker:
    def __init__(
        self, url: str, app_id: str, topic: str, workdir: Path, name: str, session: float
    ) -> None:
        self.log = workdir / f"{name}.log"
        data = workdir / f"{name}-data"
        data.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "BROKER_URL": url,
            "APP_ID": app_id,
            "TOPIC": topic,
            "PARTITIONS": str(PARTITIONS),
            "BROKER_SESSION_TIMEOUT": str(session),
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    FAUST,
                    "-A",
                    "scale_app",
                    "--datadir",
                    str(data),
                    "-l",
                    "info",
                    "worker",
                    "--without-web",
                ],
                cwd=HERE,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def wait(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(poll)
    sys.exit(f"timed out after {timeout:.0f} s waiting for {what}")


def group_state(client: redis.Redis, group: str) -> tuple[int, int, int]:
    """(generation, handed-over generation, live members) of ``group``."""
    st: Any = client.hmget(f"ts:group:{{{group}}}:state", "gen", "done")
    members = int(client.zcard(f"ts:group:{{{group}}}:members"))
    return int(st[0] or 0), int(st[1] or 0), members


def handed_over(client: redis.Redis, group: str, members: int) -> bool:
    gen, done, live = group_state(client, group)
    return gen > 0 and gen == done and live == members


def stable_group(client: redis.Redis, group: str, members: int, hold: float = 1.5) -> None:
    """Until the group has handed over to ``members`` and stayed so ``hold`` s."""
    since: float | None = None
    last = (-1, -1, -1)

    def stable() -> bool:
        nonlocal since, last
        state = group_state(client, group)
        if not handed_over(client, group, members) or state != last:
            since, last = None, state
            return False
        since = since or time.monotonic()
        return time.monotonic() - since >= hold

    wait(stable, 90, f"group {group} stable with {members} members", poll=0.1)


def write_events(client: redis.Redis, topic: str, events: int, batch: int, keys: int) -> None:
    """``events`` events in entries of ``batch``, round-robin over the partitions;
    partition p's events have keys ``p<p>-k<j>``, j < keys / PARTITIONS."""
    per_part = max(1, keys // PARTITIONS)
    pipe = client.pipeline(transaction=False)
    entries = events // batch
    for i in range(entries):
        p = i % PARTITIONS
        value = orjson.dumps([{"k": f"p{p}-k{(i * batch + j) % per_part}"} for j in range(batch)])
        pipe.execute_command("XADD", f"ts:topic:{{{topic}}}:{p}", "0-*", "v", value)
        if len(pipe) >= 200:
            pipe.execute()
    pipe.execute()


def drained(client: redis.Redis, group: str, topic: str) -> bool:
    commits: Any = client.hgetall(f"ts:commits:{group}")
    for p in range(PARTITIONS):
        info: Any = client.xinfo_stream(f"ts:topic:{{{topic}}}:{p}")
        if int(commits.get(f"{topic}:{p}".encode(), 0)) < int(info["entries-added"]):
            return False
    return True


def throughput(
    client: redis.Redis, url: str, n: int, args: argparse.Namespace, workdir: Path
) -> tuple[float, list[Worker], str]:
    group, topic = f"scale-w{n}", f"scale-events-w{n}"
    workers = [Worker(url, group, topic, workdir, f"w{n}-{i}", args.session) for i in range(n)]
    stable_group(client, group, n)
    started = time.monotonic()
    write_events(client, topic, args.events, args.batch, args.keys)
    wait(lambda: drained(client, group, topic), 600, f"{group} drained", poll=0.05)
    rate = args.events / (time.monotonic() - started)
    print(f"w{n}: {rate:,.0f} events/s ({args.events:,} events, {n} worker(s))", flush=True)
    return rate, workers, group


def log_time(line: str) -> float:
    stamp = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", line)
    assert stamp is not None, line
    return datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def recovery_seconds(log: Path) -> float:
    """From "Restoring state from changelog topics" to "Recovery complete"."""

    def find() -> tuple[float, float] | None:
        begin = end = None
        for line in log.read_text(errors="replace").splitlines():
            if "Restoring state from changelog topics" in line and begin is None:
                begin = log_time(line)
            elif "Recovery complete" in line and begin is not None:
                end = log_time(line)
                break
        return (begin, end) if begin is not None and end is not None else None

    begin, end = wait(find, 120, f"recovery in {log}", poll=0.2)
    return end - begin


def changelog_length(client: redis.Redis, group: str) -> int:
    return sum(
        int(client.xlen(f"ts:topic:{{{group}-counts-changelog}}:{p}")) for p in range(PARTITIONS)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200,000 events per run")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--batch", type=int, default=200, help="events per stream entry")
    parser.add_argument("--keys", type=int, default=400, help="distinct keys")
    parser.add_argument("--session", type=float, default=4.0, help="group session timeout, s")
    args = parser.parse_args()
    args.events = args.events or (200_000 if args.quick else 1_000_000)
    workdir = Path(tempfile.mkdtemp(prefix="tierstream-scale-"))
    server, port = start_redis(workdir)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis(port=port)
    running: list[Worker] = []
    print(
        f"private Redis on port {port}; {args.events:,} events in entries of {args.batch}, "
        f"{args.keys} keys, {PARTITIONS} partitions, session {args.session} s",
        flush=True,
    )
    try:
        rates = {}
        for n in (1, 2, 3):
            rates[n], workers, group = throughput(client, url, n, args, workdir)
            running += workers
            if n == 1:
                # Recovery: the table all events went through, restarted.
                time.sleep(compaction.INTERVAL + 1)  # let compaction run at least once
                length = changelog_length(client, group)
                for w in workers:
                    w.stop()
                again = Worker(url, group, "scale-events-w1", workdir, "w1-restart", args.session)
                running.append(again)
                recovery = recovery_seconds(again.log)
                print(
                    f"recovery: {recovery:.2f} s for a table fed {args.events:,} events "
                    f"(changelog {length:,} entries over {PARTITIONS} partitions)",
                    flush=True,
                )
                again.stop()
            elif n == 2:
                for w in workers:
                    w.stop()
        # Rebalances, on the 3-worker group.
        joined_at: list[float] = []
        before = group_state(client, group)[0]
        newcomer = Worker(url, group, "scale-events-w3", workdir, "w3-join", args.session)
        running.append(newcomer)
        wait(
            lambda: (
                group_state(client, group)[2] == 4 and joined_at.append(time.monotonic()) is None
            ),
            60,
            "the 4th member's first heartbeat",
            poll=0.01,
        )
        wait(
            lambda: handed_over(client, group, 4) and group_state(client, group)[0] > before,
            60,
            "hand-over to 4 members",
            poll=0.01,
        )
        join_s = time.monotonic() - joined_at[0]
        stable_group(client, group, 4, hold=1.0)
        victim = workers[0]
        before = group_state(client, group)[0]
        killed = time.monotonic()
        victim.kill9()
        wait(
            lambda: handed_over(client, group, 3) and group_state(client, group)[0] > before,
            60,
            "hand-over after kill -9",
            poll=0.01,
        )
        kill_s = time.monotonic() - killed
        print(
            f"rebalance: join {join_s:.2f} s (first heartbeat -> hand-over), kill -9 "
            f"{kill_s:.2f} s (kill -> hand-over; session timeout {args.session} s)",
            flush=True,
        )
    finally:
        for w in running:
            w.stop()
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"scale: w1={rates[1]:.0f} w2={rates[2]:.0f} w3={rates[3]:.0f} "
        f"rebalance_s={kill_s:.2f} recovery_s={recovery:.2f}"
    )


if __name__ == "__main__":
    main()
