"""PartitionWindows: the open base windows of one access-topic partition (pure, no I/O).

Fed ``add(offset, events)`` with the validated events of one stream entry, in
offset order. Each event goes to the base window (``PipelineConfig.base_s``,
epoch aligned) holding its ``ts``; one :class:`WindowAggregate` per open
window, and the offset of the first entry that touched it.

Closing (always a prefix in time: ``closed_through`` is the end of the newest
closed base window, every window ending at or before it is closed):

- **event time**: after an entry whose newest event has ``ts``, every window
  with ``end + lateness_s <= ts`` closes (:meth:`add`);
- **wall clock**: :meth:`close_by_clock` with ``now`` closes every window with
  ``end + grace_s <= now``, but only when the caller says the partition is
  caught up (its next offset is the highwater). With a backlog, windows close
  by event time only, so a worker catching up gives the same windows as replay.

Late events: an event whose window already closed on this partition (its
``ts < closed_through`` when its entry is processed) is not aggregated; it is
counted (``late_events``) in the base window starting at ``closed_through``,
the oldest window not yet closed, opened for it if needed. So a late event is
always counted exactly once, in a window that closes later; ``late_events`` of
a summary says "arrived on some partition after its window had closed there".

Recovery (what makes a restart count nothing twice and lose nothing): the
caller persists :meth:`state` whenever :attr:`changed` (windows opened or
closed, so rarely) *after* sending the partials closed so far. The state holds

- ``mark``: the first offset of the oldest open window (the next offset when
  none is open); every entry that touched an open window is at or after it;
- ``closed_through``;
- ``log``: the closes since ``mark`` as ``[close_offset, closed_through]``
  (entries before ``close_offset`` were processed before that close) and
  ``mark_ct``, the ``closed_through`` in effect at ``mark``.

:meth:`restore` rebuilds the machine from the state; the caller then feeds
the entries from ``mark`` again. Each re-read entry is processed with the
``closed_through`` it had the first time (from the log), and whatever it
contributed to windows that have closed since (their partials were sent) is
skipped: re-reading reproduces the open windows exactly. ``add`` ignores any
offset below :attr:`next_offset` (at-least-once redelivery).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..aggregate.batch import Batch
from ..aggregate.window_aggregate import WindowAggregate
from .config import PipelineConfig


@dataclass(frozen=True, slots=True)
class Partial:
    """A closed base window of one partition (``aggregate``), or progress only
    (``aggregate is None``: ``closed_through`` moved with no window to send)."""

    partition: int
    window_start: int | None
    window_end: int | None
    closed_through: int
    aggregate: WindowAggregate | None

    def to_message(self) -> dict[str, Any]:
        """The JSON message on ``tierstream.window-partials``."""
        return {
            "partition": self.partition,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "closed_through": self.closed_through,
            "partial": None if self.aggregate is None else self.aggregate.to_dict(),
        }


class PartitionWindows:
    """Open base windows of one partition; see the module docstring."""

    def __init__(self, partition: int, cfg: PipelineConfig) -> None:
        self.partition = partition
        self.cfg = cfg
        self.base_s = cfg.base_s
        self.closed_through = 0
        #: next offset expected (None: nothing seen and nothing restored)
        self.next_offset: int | None = None
        self.windows: dict[int, WindowAggregate] = {}
        self.first_offset: dict[int, int] = {}
        #: closes not older than the mark: (close_offset, closed_through after it)
        self.log: list[tuple[int, int]] = []
        #: closed_through in effect before the first logged close
        self._log_base = 0
        #: set when state() would differ from what was last persisted
        self.changed = False

    # --- recovery -------------------------------------------------------------

    @classmethod
    def restore(
        cls, partition: int, cfg: PipelineConfig, state: Mapping[str, Any] | None
    ) -> PartitionWindows:
        """The machine as persisted; the caller re-feeds entries from ``next_offset``."""
        pw = cls(partition, cfg)
        if state:
            pw.closed_through = int(state["closed_through"])
            pw.next_offset = int(state["mark"])
            pw._log_base = int(state["mark_ct"])
            pw.log = [(int(o), int(c)) for o, c in state["log"]]
        return pw

    @property
    def mark(self) -> int | None:
        """First offset of the oldest open window, else the next offset."""
        if self.first_offset:
            return min(self.first_offset.values())
        return self.next_offset

    def state(self) -> dict[str, Any]:
        """JSON-safe recovery state (see module docstring); prunes the close log."""
        mark = self.mark
        self.changed = False
        return {
            "mark": mark if mark is not None else 0,
            "closed_through": self.closed_through,
            "mark_ct": self._log_base,
            "log": [list(x) for x in self.log],
        }

    def _ct_at(self, offset: int) -> int:
        """closed_through in effect when ``offset`` was (first) processed."""
        log = self.log
        if not log or offset >= log[-1][0]:
            return self.closed_through
        ct = self._log_base
        for close_offset, after in log:
            if close_offset > offset:
                break
            ct = after
        return ct

    # --- feeding --------------------------------------------------------------

    def _window(self, start: int, offset: int) -> WindowAggregate:
        agg = self.windows.get(start)
        if agg is None:
            cfg = self.cfg
            agg = self.windows[start] = WindowAggregate(
                start, start + self.base_s, cfg.costs, cfg.capacity
            )
            self.first_offset[start] = offset
            self.changed = True
        return agg

    def add(self, offset: int, events: Sequence[Mapping[str, Any]]) -> list[Partial]:
        """Aggregate one entry's validated events; return what closed by event time.

        Offsets below :attr:`next_offset` were processed already: ignored.
        """
        if self.next_offset is not None and offset < self.next_offset:
            return []
        self.next_offset = offset + 1
        if not events:
            return []
        base = self.base_s
        tss = [ev["ts"] for ev in events]
        lo, hi = min(tss), max(tss)
        lo_start = int(lo // base) * base
        if lo_start == int(hi // base) * base:  # the usual case: one window
            return self._add_one_window(offset, len(events), hi, lo_start, events)
        ct = self.closed_through
        first_ct = self._ct_at(offset)
        late = 0
        groups: dict[int, list[Mapping[str, Any]]] = {}
        for ev, ts in zip(events, tss, strict=True):
            start = int(ts // base) * base
            if start < first_ct:
                late += 1
            elif start >= ct:  # else: its window closed since it was first seen
                g = groups.get(start)
                if g is None:
                    groups[start] = [ev]
                else:
                    g.append(ev)
        for start in sorted(groups):
            self._window(start, offset).add_batch(groups[start])
        if late and first_ct == ct:  # else it was counted in a window closed since
            self._window(ct, offset).add_late(late)
        return self._close_until(int((hi - self.cfg.lateness_s) // base) * base, self.next_offset)

    def add_grouped(
        self, offset: int, n: int, lo: float, hi: float, batch: Batch
    ) -> list[Partial] | None:
        """:meth:`add` of an entry already grouped (``n`` events with ``ts`` in
        ``lo .. hi``); None, with nothing changed, when its events fall in more than
        one window (the caller then calls :meth:`add` with the events)."""
        if self.next_offset is not None and offset < self.next_offset:
            return []
        base = self.base_s
        lo_start = int(lo // base) * base
        if n and lo_start != int(hi // base) * base:
            return None
        self.next_offset = offset + 1
        if not n:
            return []
        return self._add_one_window(offset, n, hi, lo_start, batch)

    def _add_one_window(
        self, offset: int, n: int, hi: float, start: int, batch: Batch | Sequence[Mapping[str, Any]]
    ) -> list[Partial]:
        """The events of one entry, all in base window ``start``: aggregate, count
        late or skip them (see the module docstring), then close by event time."""
        ct = self.closed_through
        first_ct = self._ct_at(offset)
        if start < first_ct:
            if first_ct == ct:  # else it was counted in a window closed since
                self._window(ct, offset).add_late(n)
        elif start >= ct:
            agg = self._window(start, offset)
            if isinstance(batch, Batch):
                agg.add_grouped(batch)
            else:
                agg.add_batch(batch)
        return self._close_until(
            int((hi - self.cfg.lateness_s) // self.base_s) * self.base_s, offset + 1
        )

    def close_by_clock(
        self, now: float, caught_up: bool, position: int | None = None
    ) -> list[Partial]:
        """Close by wall clock when ``caught_up`` (``position``: the next offset, for
        a partition not seen yet); never while the partition has a backlog."""
        if not caught_up:
            return []
        if self.next_offset is None:
            self.next_offset = position if position is not None else 0
        base = self.base_s
        return self._close_until(int((now - self.cfg.grace_s) // base) * base, self.next_offset)

    def close_all(self, closed_through: int | None = None) -> list[Partial]:
        """Close every open window (end of a replay), ``closed_through`` at least
        the end of the newest one."""
        ends = [s + self.base_s for s in self.windows]
        target = max([*ends, self.closed_through, closed_through or 0])
        return self._close_until(target, self.next_offset if self.next_offset is not None else 0)

    def _close_until(self, new_ct: int, close_offset: int) -> list[Partial]:
        if new_ct <= self.closed_through:
            return []
        base = self.base_s
        out: list[Partial] = []
        for start in sorted(s for s in self.windows if s + base <= new_ct):
            agg = self.windows.pop(start)
            del self.first_offset[start]
            out.append(Partial(self.partition, start, start + base, start + base, agg))
        self.closed_through = new_ct
        if not out or out[-1].closed_through < new_ct:
            out.append(Partial(self.partition, None, None, new_ct, None))
        self.log.append((close_offset, new_ct))
        mark = self.mark
        if mark is not None:
            while self.log and self.log[0][0] <= mark:
                self._log_base = self.log.pop(0)[1]
        self.changed = True
        return out
