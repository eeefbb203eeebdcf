"""Hot queries: a bounded, mergeable heavy-hitter summary keyed by query fingerprint.

The summary is the Misra-Gries counter set in the mergeable form of Agarwal
et al., "Mergeable Summaries" (PODS 2012), reported the Space-Saving way (as
upper bounds). With capacity ``k``:

- Each tracked fingerprint has a counter ``g``. A batch (or another summary)
  is added by summing counters per key. When more than ``2k`` keys are
  tracked, the ``(k+1)``-th largest counter ``C`` is subtracted from every
  counter and keys left at ``<= 0`` are dropped (at most ``k`` remain); ``C``
  is added to the running total decrement ``D`` (summed too on merge).
- For every fingerprint with true count ``f`` (``get``/``search`` accesses):
  ``g <= f <= g + D`` (``g = 0`` if not tracked), and
  ``D <= (N - sum(g)) / (k + 1) <= N / (k + 1) < N / k`` where ``N`` is the
  total number of accesses added (each subtraction of ``C`` removes at least
  ``(k + 1) * C`` from the counters).
- Reported ``count = g + D`` is therefore never below the truth and at most
  ``N / k`` above it (``error = D``), and every query with ``f > N / k`` (in
  fact ``f > D``) is tracked.

While no more than ``2k`` distinct fingerprints are seen, nothing is ever
subtracted, ``D = 0`` and all counts are exact and independent of batching
and merge order. Beyond that, which keys survive can depend on batch
boundaries and merge order, always within the bound above.

Per tracked key the summary also keeps, for the accesses seen while the key
was tracked (``observed``, with ``g <= observed <= f``): accesses and the
exact sum of end-to-end latency (integer us) per serving tier (``None`` for
a full miss), and a sample query text: the smallest non-null text seen, so
the sample does not depend on arrival order (null when every access was
redacted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ...native import ext as _native
from .batch import Batch, group_batch

DEFAULT_CAPACITY = 1024
DEFAULT_TOP = 20

#: per serving tier (None: full miss): [accesses, sum of end-to-end latency in us]
TierTotals = dict[str | None, list[int]]


class HeavyHitters:
    """Mergeable top-``k`` summary of query fingerprints (see module docstring)."""

    __slots__ = ("capacity", "decrement", "entries", "n", "texts")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        #: fingerprint -> [counter g, per-tier totals]
        self.entries: dict[str, list[Any]] = {}
        self.texts: dict[str, str] = {}
        self.n = 0
        self.decrement = 0

    def add_batch(self, events: Iterable[Mapping[str, Any]]) -> None:
        self.add_grouped(group_batch(events))

    def add_grouped(self, batch: Batch) -> None:
        if _native is not None:
            self.n += _native.heavy_add(self.entries, batch.queries)
        else:
            self.n += self._add_queries_py(batch.queries)
        self._merge_texts(batch.texts)
        self._maybe_compact()

    def _add_queries_py(self, queries: Mapping[tuple[str, str | None], list[int]]) -> int:
        """Add a batch's per-(fingerprint, serving tier) totals; the accesses added
        (the pure-Python twin of ``_native.heavy_add``)."""
        entries = self.entries
        added = 0
        for (fp, served), (c, us) in queries.items():
            added += c
            e = entries.get(fp)
            if e is None:
                entries[fp] = [c, {served: [c, us]}]
                continue
            e[0] += c
            t = e[1].get(served)
            if t is None:
                e[1][served] = [c, us]
            else:
                t[0] += c
                t[1] += us
        return added

    def merge(self, other: HeavyHitters) -> None:
        """Add ``other`` (same capacity) into this summary."""
        if other.capacity != self.capacity:
            raise ValueError(f"capacities differ: {self.capacity} != {other.capacity}")
        entries = self.entries
        for fp, (g, tiers) in other.entries.items():
            e = entries.get(fp)
            if e is None:
                entries[fp] = [g, {t: list(v) for t, v in tiers.items()}]
                continue
            e[0] += g
            mine = e[1]
            for t, (c, us) in tiers.items():
                v = mine.get(t)
                if v is None:
                    mine[t] = [c, us]
                else:
                    v[0] += c
                    v[1] += us
        self.n += other.n
        self.decrement += other.decrement
        self._merge_texts(other.texts)
        self._maybe_compact()

    def _merge_texts(self, texts: Mapping[str, str]) -> None:
        if _native is not None and type(texts) is dict:
            _native.heavy_texts(self.entries, self.texts, texts)
            return
        self._merge_texts_py(texts)

    def _merge_texts_py(self, texts: Mapping[str, str]) -> None:
        """The smaller sample text per tracked fingerprint (twin of ``heavy_texts``)."""
        mine, entries = self.texts, self.entries
        for fp, text in texts.items():
            if fp in entries:
                cur = mine.get(fp)
                if cur is None or text < cur:
                    mine[fp] = text

    def _maybe_compact(self) -> None:
        if len(self.entries) <= 2 * self.capacity:
            return
        if _native is not None:
            self.entries, self.texts, cut = _native.heavy_compact(
                self.entries, self.texts, self.capacity
            )
            self.decrement += cut
            return
        self._compact_py()

    def _compact_py(self) -> None:
        """The Misra-Gries step (see the module docstring; twin of ``heavy_compact``)."""
        counters = sorted((e[0] for e in self.entries.values()), reverse=True)
        cut = counters[self.capacity]
        self.decrement += cut
        kept: dict[str, list[Any]] = {}
        for fp, e in self.entries.items():
            if e[0] > cut:
                e[0] -= cut
                kept[fp] = e
        self.entries = kept
        self.texts = {fp: t for fp, t in self.texts.items() if fp in kept}

    @property
    def error_bound(self) -> int:
        """``D``: every reported count is at most this much above the true count."""
        return self.decrement

    def estimate(self, fingerprint: str) -> int:
        """Upper bound ``g + D`` on the true count of ``fingerprint``."""
        e = self.entries.get(fingerprint)
        return (e[0] if e is not None else 0) + self.decrement

    def result(self, top: int = DEFAULT_TOP) -> list[dict[str, Any]]:
        """The ``top`` hottest queries, hottest first (ties by fingerprint)."""
        ranked = sorted(self.entries.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
        d = self.decrement
        out = []
        for fp, (g, totals) in ranked:
            tiers = {
                t: {"count": c, "mean_latency_ms": us / c / 1000.0}
                for t, (c, us) in sorted(totals.items(), key=lambda kv: kv[0] or "")
                if t is not None
            }
            miss = totals.get(None)
            out.append(
                {
                    "fingerprint": fp,
                    "query": self.texts.get(fp),
                    "count": g + d,
                    "error": d,
                    "observed": sum(v[0] for v in totals.values()),
                    "full_misses": miss[0] if miss else 0,
                    "tiers": tiers,
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "n": self.n,
            "decrement": self.decrement,
            "entries": [
                [fp, g, [[t, c, us] for t, (c, us) in tiers.items()]]
                for fp, (g, tiers) in sorted(self.entries.items())
            ],
            "texts": dict(sorted(self.texts.items())),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HeavyHitters:
        hh = cls(int(d["capacity"]))
        hh.n = int(d["n"])
        hh.decrement = int(d["decrement"])
        hh.entries = {
            fp: [int(g), {t: [int(c), int(us)] for t, c, us in tiers}]
            for fp, g, tiers in d["entries"]
        }
        hh.texts = dict(d["texts"])
        return hh
