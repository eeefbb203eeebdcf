"""WindowMerger: per-partition partials in, WindowSummary records out (pure, no I/O).

Fed the messages of ``tierstream.window-partials`` (:meth:`add`, see
:meth:`.partition.Partial.to_message`) and the wall clock (:meth:`tick`).

- Partials are kept per ``(base window, partition)``; a partial sent again
  for the same key **replaces** the earlier one, so a partition that is
  re-read after a restart never counts twice.
- ``closed_through`` per partition only moves forward. A base window is
  merged once every partition has sent its partial for it or reported
  ``closed_through >= end`` (the slowest partition decides; base windows merge
  in time order), or when ``merge_timeout_s`` passed since its first partial
  arrived (a partition whose worker is gone). The summary says
  ``complete: false`` when some partition had not reported.
- When base windows merge, one WindowSummary is emitted per tumbling window
  (``view="tumbling"``, ``window_s``) and per hopping window (``view="hopping"``,
  ``hop_size_s`` every ``hop_step_s``) that ended and holds at least one
  partial: windows with no events at all are not emitted. Each is built by
  merging its base windows' partials in (start, partition) order, so the
  result is deterministic.
- A partial arriving for a base window that was merged already: identical to
  the one merged -> ignored; different (or new) -> stored, and every view
  window holding it is emitted again with ``revision`` one higher. Partials of
  base windows older than ``retention_s`` before the newest merge are
  forgotten; a partial for such a window cannot be merged any more and is
  counted in :attr:`stale` (and logged by the caller).

Cost: a partial is decoded (``WindowAggregate.from_dict``) once per base
window: the partitions' partials of a base window are merged into one
aggregate, cached until a partial of that window changes, and every view
window is built by merging its base windows' cached aggregates into a fresh
one (so a hopping window of five base windows costs five merges, not
forty decodes). Cached aggregates of base windows older than the longest
view before :attr:`merged_through` are dropped (rebuilt on a revision).

Persistence: every state change is recorded in :attr:`dirty` (key -> JSON
value, None = delete); the caller writes them to a table after sending the
summaries, and :meth:`restore` rebuilds the merger from the table's items.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ...schemas.summary import validate_summary
from ..aggregate.window import hopping_windows
from ..aggregate.window_aggregate import WindowAggregate
from .config import PipelineConfig

TUMBLING, HOPPING = "tumbling", "hopping"


def _merge_into(target: WindowAggregate, src: WindowAggregate) -> None:
    """Add ``src`` (a piece of ``target``'s window) into ``target``; ``src`` is not
    changed (merges copy what they take), so cached aggregates stay intact."""
    start, end = src.start, src.end
    src.start, src.end = target.start, target.end
    try:
        target.merge(src)
    finally:
        src.start, src.end = start, end


class WindowMerger:
    """One per app; see the module docstring."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.base_s = cfg.base_s
        #: closed_through reported per partition
        self.ct: dict[int, int] = {}
        #: base window start -> partition -> partial dict
        self.partials: dict[int, dict[int, dict[str, Any]]] = {}
        #: every base window ending at or before this is merged
        self.merged_through = 0
        #: wall time the first partial of a pending base window arrived
        self.first_seen: dict[int, float] = {}
        #: (view, start) -> revision of the last emitted summary
        self.revisions: dict[str, int] = {}
        self.stale = 0
        self.dirty: dict[str, Any] = {}
        #: base window start -> its partials merged (partition order); see module docstring
        self._base: dict[int, WindowAggregate] = {}

    # --- persistence ------------------------------------------------------------

    @classmethod
    def restore(
        cls, cfg: PipelineConfig, items: Iterable[tuple[str, Any]], now: float
    ) -> WindowMerger:
        m = cls(cfg)
        for key, value in items:
            if value is None:
                continue
            kind, _, rest = key.partition(":")
            if kind == "ct":
                m.ct[int(rest)] = int(value)
            elif kind == "w":
                raw_start, _, part = rest.partition(":")
                m.partials.setdefault(int(raw_start), {})[int(part)] = value
            elif kind == "meta":
                m.merged_through = int(value["merged_through"])
                m.revisions = {k: int(v) for k, v in value["revisions"].items()}
                m.stale = int(value.get("stale", 0))
        for start in m.partials:
            if start + m.base_s > m.merged_through:
                m.first_seen[start] = now
        return m

    def _meta(self) -> None:
        self.dirty["meta"] = {
            "merged_through": self.merged_through,
            "revisions": dict(self.revisions),
            "stale": self.stale,
        }

    def take_dirty(self) -> dict[str, Any]:
        out, self.dirty = self.dirty, {}
        return out

    # --- input ------------------------------------------------------------------

    def add(self, msg: Mapping[str, Any], now: float) -> list[dict[str, Any]]:
        """One partials-topic message; returns the summaries it completes or revises."""
        p = int(msg["partition"])
        out: list[dict[str, Any]] = []
        ct = int(msg["closed_through"])
        if ct > self.ct.get(p, 0):
            self.ct[p] = ct
            self.dirty[f"ct:{p}"] = ct
        partial = msg.get("partial")
        if partial is not None:
            out.extend(self._store(p, int(msg["window_start"]), partial, now))
        out.extend(self._advance(self._watermark(), now))
        return out

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Merge base windows whose merge timeout passed."""
        timeout = self.cfg.merge_timeout_s
        due = [s for s, t in self.first_seen.items() if now - t >= timeout]
        if not due:
            return []
        return self._advance(max(due) + self.base_s, now)

    def flush(self, until: int | None = None) -> list[dict[str, Any]]:
        """Merge everything pending up to ``until`` (all when None): end of a replay."""
        if until is None:
            longest = max(self.cfg.window_s, self.cfg.hop_size_s)
            until = max([s + self.base_s + longest for s in self.partials] + [0])
        target = until
        return self._advance(target, 0.0)

    def _store(self, p: int, start: int, partial: dict[str, Any], now: float) -> list[dict]:
        base = self.base_s
        merged = start + base <= self.merged_through
        if merged and start + base <= self.merged_through - self.cfg.retention_s:
            self.stale += 1
            self._meta()
            return []
        slot = self.partials.setdefault(start, {})
        if slot.get(p) == partial:
            return []
        slot[p] = partial
        self._base.pop(start, None)
        self.dirty[f"w:{start}:{p}"] = partial
        if not merged:
            self.first_seen.setdefault(start, now)
            return []
        # A revision: re-emit every view window holding this base window.
        views = sorted(self._views_of(start), key=lambda x: (x[2], x[0]))
        out = [
            self._emit(view, s, e, revise=True) for view, s, e in views if e <= self.merged_through
        ]
        self._meta()
        return [s for s in out if s is not None]

    def _watermark(self) -> int:
        cts = [self.ct.get(p, 0) for p in range(self.cfg.partitions)]
        return min(cts)

    # --- merging ----------------------------------------------------------------

    def _views_of(self, base_start: int) -> list[tuple[str, int, int]]:
        cfg = self.cfg
        t = base_start // cfg.window_s * cfg.window_s
        out = [(TUMBLING, t, t + cfg.window_s)]
        out += [
            (HOPPING, s, s + cfg.hop_size_s)
            for s in hopping_windows(base_start, cfg.hop_size_s, cfg.hop_step_s)
        ]
        return out

    def _advance(self, target: int, now: float) -> list[dict[str, Any]]:
        """Merge every base window ending at or before ``target``; emit the view
        windows that end in ``(merged_through, target]``."""
        base = self.base_s
        target = target // base * base
        old = self.merged_through
        if target <= old:
            return []
        self.merged_through = target
        for start in [s for s in self.first_seen if s + base <= target]:
            del self.first_seen[start]
        # View windows ending in (old, target] that hold some partial.
        todo: set[tuple[str, int, int]] = set()
        horizon = old - max(self.cfg.window_s, self.cfg.hop_size_s)
        for start in self.partials:
            if start >= horizon and start + base <= target:
                for view, s, e in self._views_of(start):
                    if old < e <= target:
                        todo.add((view, s, e))
        out = [self._emit(view, s, e) for view, s, e in sorted(todo, key=lambda x: (x[2], x[0]))]
        # Forget what is too old to be revised.
        cutoff = target - self.cfg.retention_s
        for start in [s for s in self.partials if s + base <= cutoff]:
            for p in self.partials.pop(start):
                self.dirty[f"w:{start}:{p}"] = None
        keep_from = target - max(self.cfg.window_s, self.cfg.hop_size_s)
        for start in [s for s in self._base if s < keep_from]:
            del self._base[start]
        for key in [k for k in self.revisions if int(k.split(":")[1]) + base <= cutoff]:
            del self.revisions[key]
        self._meta()
        return [s for s in out if s is not None]

    def _base_agg(self, start: int) -> WindowAggregate | None:
        """The partials of base window ``start`` merged in partition order (cached)."""
        agg = self._base.get(start)
        if agg is None:
            slot = self.partials.get(start)
            if not slot:
                return None
            for p in sorted(slot):
                a = WindowAggregate.from_dict(slot[p])
                if agg is None:
                    agg = a
                else:
                    agg.merge(a)
            assert agg is not None
            self._base[start] = agg
        return agg

    def _emit(self, view: str, start: int, end: int, revise: bool = False) -> dict | None:
        cfg = self.cfg
        base = self.base_s
        target: WindowAggregate | None = None
        complete = True
        for b in range(start, end, base):
            slot = self.partials.get(b, {})
            for p in range(cfg.partitions):
                if p not in slot and self.ct.get(p, 0) < b + base:
                    complete = False
            agg = self._base_agg(b)
            if agg is None:
                continue
            if target is None:
                target = WindowAggregate(start, end, agg.cost.costs, agg.heavy.capacity)
            _merge_into(target, agg)
        if target is None:
            return None
        key = f"{view}:{start}"
        rev = self.revisions.get(key, -1) + 1 if revise else self.revisions.get(key, 0)
        self.revisions[key] = rev
        summary = target.summary(cfg.top)
        summary.update(
            view=view,
            step_s=cfg.hop_step_s if view == HOPPING else cfg.window_s,
            revision=rev,
            complete=complete,
        )
        return validate_summary(summary)

    # --- views ------------------------------------------------------------------

    def pending(self) -> dict[str, Any]:
        """The base windows not merged yet: which partitions sent a partial, and the
        merged partials so far (for the ``current`` web view)."""
        out: dict[str, Any] = {"merged_through": self.merged_through, "closed_through": {}}
        out["closed_through"] = {str(p): self.ct.get(p, 0) for p in range(self.cfg.partitions)}
        windows = []
        for start in sorted(s for s in self.partials if s + self.base_s > self.merged_through):
            slot = self.partials[start]
            agg = self._base_agg(start)
            windows.append(
                {
                    "window_start": start,
                    "window_end": start + self.base_s,
                    "partitions": sorted(slot),
                    "summary": agg.summary(self.cfg.top) if agg is not None else None,
                }
            )
        out["windows"] = windows
        return out
