"""The demo's live view: what the pipeline publishes, read with ``sinks.subscribe``.

:class:`LiveView` follows the summaries, suggestions and alerts topics from
now (as any other process would), prints one line per closed tumbling window
(events, hit rate, p95 per tier), each suggestion and each alert as it
appears, and keeps what the closing summary needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from tierstream.sinks.subscribe import subscribe

Say = Callable[[str], None]


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def pct(v: float | None) -> str:
    return "  - " if v is None else f"{100 * v:3.0f}%"


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


class LiveView:
    """Follows the result topics and prints them (see module docstring)."""

    def __init__(self, redis_url: str, say: Say, since: float) -> None:
        self.redis_url = redis_url
        self.say = say
        self.since = since
        #: latest revision of each tumbling window, by window start
        self.windows: dict[float, dict[str, Any]] = {}
        self.suggestions: list[dict[str, Any]] = []
        self.alerts: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._new_window = asyncio.Event()

    def start(self) -> LiveView:
        for what, handle in (
            ("summaries", self.on_summary),
            ("suggestions", self.on_suggestion),
            ("alerts", self.on_alert),
        ):
            self._tasks.append(asyncio.create_task(self._follow(what, handle)))
        return self

    async def _follow(self, what: str, handle: Callable[[dict[str, Any]], None]) -> None:
        async for rec in subscribe(what, redis_url=self.redis_url, block_ms=300):
            handle(rec)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # --- records -------------------------------------------------------------------

    def on_summary(self, s: dict[str, Any]) -> None:
        if s.get("view") != "tumbling" or s["window_end"] <= self.since:
            return
        old = self.windows.get(s["window_start"])
        if old is not None and old.get("revision", 0) >= s.get("revision", 0):
            return
        self.windows[s["window_start"]] = s
        self._new_window.set()
        tiers = s.get("tiers") or {}
        parts = [
            f"{name} hit {pct(t['hit_rate'])} p95 {ms(t['latency']['p95_ms']):>6} ms"
            for name, t in sorted(tiers.items(), key=lambda kv: -kv[1]["attempts"])
        ]
        revised = f" (revision {s['revision']})" if s.get("revision", 0) > 0 else ""
        self.say(
            f"  window {clock(s['window_start'])}-{clock(s['window_end'])}{revised}: "
            f"{s['events']:>6,} events, served {pct(s['hit_rate'])}, "
            f"p95 {ms(s['latency']['p95_ms'])} ms | " + " | ".join(parts)
        )

    def on_suggestion(self, s: dict[str, Any]) -> None:
        self.suggestions.append(s)
        saving = s.get("estimated_saving") or {}
        per_day = saving.get("latency_ms_per_day")
        extra = f" (saves ~{per_day / 3_600_000:.1f} h of latency per day)" if per_day else ""
        self.say(f"  SUGGESTION {s['kind']} r{s['revision']}: {s['message']}{extra}")

    def on_alert(self, a: dict[str, Any]) -> None:
        self.alerts.append(a)
        self.say(f"  ALERT {a['state'].upper()} [{a['severity']}] {a['message']}")

    async def wait_summarized(self, events: int, timeout: float) -> None:
        """Until the windows seen count ``events`` events, or ``timeout`` s passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.summarized_events() < events:
                    self._new_window.clear()
                    await self._new_window.wait()

    # --- the closing summary -----------------------------------------------------------

    def summarized_events(self) -> int:
        return sum(int(s["events"]) for s in self.windows.values())

    def report(self) -> list[str]:
        lines = [f"windows summarized: {len(self.windows)}"]
        fired = [a for a in self.alerts if a["state"] == "firing"]
        resolved = {a["id"] for a in self.alerts if a["state"] == "resolved"}
        lines.append(f"alerts: {len(fired)} fired, {len(resolved)} resolved")
        for a in fired:
            status = "resolved" if a["id"] in resolved else "STILL FIRING"
            lines.append(
                f"  {a['rule']} [{a['severity']}] fired at {clock(a['ts'])} "
                f"(value {a['value']:.4g} {a['comparison']} {a['threshold']:g}): {status}"
            )
        kinds = Counter(s["kind"] for s in self.suggestions)
        lines.append(
            f"suggestions: {len(self.suggestions)} published"
            + (
                " (" + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")"
                if kinds
                else ""
            )
        )
        latest: dict[str, dict[str, Any]] = {}
        for s in self.suggestions:
            latest[s["id"]] = s
        pre = sorted(
            (s for s in latest.values() if s["kind"] == "pre_cache"),
            key=lambda s: -(s.get("estimated_saving") or {}).get("benefit_ms", 0.0),
        )
        for s in pre[:3]:
            lines.append(f"  top pre-cache: {s['message']}")
        return lines
