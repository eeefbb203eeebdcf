"""HDR latency histograms: per tier and end to end, mergeable and encodable.

Range and precision (the same for every histogram, so any two can be added):

- values are integer microseconds (ms * 1000, rounded half up, see
  :mod:`.batch`), tracked from 1 us to 1 hour (:data:`HIGHEST_US`, the largest
  latency an event may carry); a value of 0 us is kept in its own bucket;
- 3 significant digits: values below 2,048 us are exact to the microsecond,
  and above that every value shares a bucket only with values within 1/1024
  (< 0.1%) of it. A reported percentile ``r`` of a true value ``v`` (both in
  us) satisfies ``v <= r <= v * (1 + 1/1024)``; the ms input is rounded to
  the nearest microsecond first.

Percentile definition: the ``p``-th percentile is the smallest recorded value
``v`` such that at least ``p``% of the values are ``<= v`` (rank
``ceil(p * n / 100)``, numpy's ``method="inverted_cdf"``), reported as the
upper end of ``v``'s bucket. The rank is computed in exact integer arithmetic.

Recording is done per batch (in C when ``tierstream._native`` is built; the
Python loop below is its twin): the bucket index of every value is computed
inline (the same arithmetic as ``HdrHistogram.record_value``, which costs
about 0.8 us per call), counted with ``collections.Counter`` and added to the
histogram's counts array once per distinct bucket. Merging uses
``HdrHistogram.add`` (C); transport uses ``encode()``/``decode()`` (the
standard compressed, base64 HdrHistogram V2 "HISTF" form) plus the exact sum
of values for the mean.
"""

from __future__ import annotations

import weakref
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hdrh.histogram import HdrHistogram

from ...native import ext as _native
from .batch import Batch, group_batch

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
SIGNIFICANT_DIGITS = 3
#: Percentiles reported, as (label, thousandths of a percent).
PERCENTILES: tuple[tuple[str, int], ...] = (
    ("p50_ms", 50_000),
    ("p90_ms", 90_000),
    ("p95_ms", 95_000),
    ("p99_ms", 99_000),
    ("p999_ms", 99_900),
)


def _acyclic(hist: HdrHistogram) -> HdrHistogram:
    """``hist`` without hdrh's reference cycle (its encoder refers back to it),
    so that it is freed by reference counting as soon as it is dropped. With
    the cycle, every histogram (a 184 KB counts array) that lived long enough
    to reach the oldest GC generation stayed until the next full collection
    (pipeline --quick: ~190 of them, ~40 MB, at the end of a backlog)."""
    hist.encoder.histogram = weakref.proxy(hist)
    return hist


def _new() -> HdrHistogram:
    return _acyclic(HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS))


_PROTO = _new()
assert _PROTO.unit_magnitude == 0  # the inline index arithmetic below assumes it
_MASK = _PROTO.sub_bucket_mask
_SHIFT = _PROTO.sub_bucket_half_count_magnitude + 1
_HALF_MAG = _PROTO.sub_bucket_half_count_magnitude
_HALF = _PROTO.sub_bucket_half_count
_EXACT_BELOW = _PROTO.sub_bucket_count  # values below this are their own index


def _add(dst: HdrHistogram, src: HdrHistogram) -> None:
    """``dst.add(src)``, keeping ``min`` right when ``dst`` is empty (hdrh takes 0 then)."""
    if not src.get_total_count():
        return
    was_empty = not dst.get_total_count()
    lo = src.get_min_value()
    dst.add(src)
    if was_empty:
        dst.min_value = lo


def bucket_indices(values: Iterable[int]) -> list[int]:
    """Counts-array index of each value (as ``HdrHistogram._counts_index_for``)."""
    mask, shift, hm, half, exact = _MASK, _SHIFT, _HALF_MAG, _HALF, _EXACT_BELOW
    return [
        v if v < exact else (((b := (v | mask).bit_length() - shift) + 1) << hm) + (v >> b) - half
        for v in values
    ]


class LatencyHistogram:
    """One HDR histogram of latencies in integer microseconds, plus their exact sum."""

    __slots__ = ("hist", "sum_us")

    def __init__(self, hist: HdrHistogram | None = None, sum_us: int = 0) -> None:
        self.hist = hist if hist is not None else _new()
        self.sum_us = sum_us

    @property
    def count(self) -> int:
        return int(self.hist.get_total_count())

    def record_us(self, values: Sequence[int]) -> None:
        """Record a batch of latencies (integer us; clamped to ``0 .. HIGHEST_US``)."""
        if not values:
            return
        h = self.hist
        if _native is not None and (type(values) is list or type(values) is array):
            n, lo, hi, total = _native.hist_record(
                h.counts, values, _MASK, _SHIFT, _HALF_MAG, _HALF, _EXACT_BELOW, HIGHEST_US
            )
            h.total_count += n
            h.min_value = min(h.min_value, lo)
            h.max_value = max(h.max_value, hi)
            self.sum_us += total
            return
        self.record_us_py(values)

    def record_us_py(self, values: Sequence[int]) -> None:
        """:meth:`record_us` in pure Python (the C twin's reference)."""
        if not values:
            return
        lo, hi = min(values), max(values)
        if lo < 0 or hi > HIGHEST_US:
            values = [0 if v < 0 else HIGHEST_US if v > HIGHEST_US else v for v in values]
            lo, hi = max(lo, 0), min(hi, HIGHEST_US)
        h = self.hist
        counts = h.counts
        for idx, c in Counter(bucket_indices(values)).items():
            counts[idx] += c
        h.total_count += len(values)
        h.min_value = min(h.min_value, lo)
        h.max_value = max(h.max_value, hi)
        self.sum_us += sum(values)

    def record_ms(self, values: Iterable[float]) -> None:
        """Record latencies in ms (rounded half up to whole microseconds)."""
        self.record_us([int(v * 1000.0 + 0.5) for v in values])

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s counts to this histogram (exact; order does not matter)."""
        _add(self.hist, other.hist)
        self.sum_us += other.sum_us

    def bucket_counts(self) -> list[int]:
        """The raw counts array up to the largest non-empty bucket (for equality checks)."""
        if not self.count:
            return []
        top = self.hist.get_counts_array_index(self.hist.max_value)
        return list(self.hist.counts[: top + 1])

    def result(self) -> dict[str, Any]:
        """count, mean, min, p50, p90, p95, p99, p99.9, max; ms (None when empty)."""
        n = self.count
        out: dict[str, Any] = {"count": n}
        if not n:
            out.update({"mean_ms": None, "min_ms": None, "max_ms": None})
            out.update({label: None for label, _ in PERCENTILES})
            return out
        h = self.hist
        ranks = [(label, max(1, -(-n * k // 100_000))) for label, k in PERCENTILES]
        cum = 0
        i = 0
        for idx, c in enumerate(self.bucket_counts()):
            if not c:
                continue
            cum += c
            while i < len(ranks) and cum >= ranks[i][1]:
                top = h.get_highest_equivalent_value(h.get_value_from_index(idx))
                out[ranks[i][0]] = top / 1000.0
                i += 1
            if i == len(ranks):
                break
        out["mean_ms"] = self.sum_us / n / 1000.0
        out["min_ms"] = h.get_min_value() / 1000.0
        out["max_ms"] = h.get_max_value() / 1000.0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"hdr": self.hist.encode().decode("ascii"), "sum_us": self.sum_us}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyHistogram:
        decoded = _acyclic(HdrHistogram.decode(d["hdr"].encode("ascii")))
        hist = _new()
        _add(hist, decoded)  # into a fresh, full-size array: merges stay exact
        return cls(hist, int(d["sum_us"]))


class LatencyAggregator:
    """Read latency per tier tried and end to end, for one window (or partial)."""

    __slots__ = ("tiers", "total")

    def __init__(self) -> None:
        self.tiers: dict[str, LatencyHistogram] = {}
        self.total = LatencyHistogram()

    def add_batch(self, events: Iterable[Mapping[str, Any]]) -> None:
        self.add_grouped(group_batch(events))

    def add_grouped(self, batch: Batch) -> None:
        for tier, values in batch.tier_us.items():
            hist = self.tiers.get(tier)
            if hist is None:
                self.tiers[tier] = hist = LatencyHistogram()
            hist.record_us(values)
        self.total.record_us(batch.total_us)

    def merge(self, other: LatencyAggregator) -> None:
        for tier, hist in other.tiers.items():
            mine = self.tiers.get(tier)
            if mine is None:
                self.tiers[tier] = mine = LatencyHistogram()
            mine.merge(hist)
        self.total.merge(other.total)

    def result(self) -> dict[str, Any]:
        return {
            "end_to_end": self.total.result(),
            "tiers": {t: h.result() for t, h in sorted(self.tiers.items())},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "tiers": {t: h.to_dict() for t, h in sorted(self.tiers.items())},
            "total": self.total.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyAggregator:
        agg = cls()
        agg.tiers = {t: LatencyHistogram.from_dict(h) for t, h in d["tiers"].items()}
        agg.total = LatencyHistogram.from_dict(d["total"])
        return agg
