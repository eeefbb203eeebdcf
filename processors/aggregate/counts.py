"""Access counts: hits, misses, errors, hit rates and tier shares, per tier and agent.

State is two exact counters of small tuple keys (see :mod:`.batch`):
one per event ``(agent, is_put, tier_accessed, cache_hit, any_error)`` and one
per tier tried ``(tier, is_put, hit, error)``. Merging adds counters, so
results are exact and independent of batching and merge order; every rate is
derived from the integer totals when the result is taken.

Definitions (``get`` and ``search`` are *reads*; ``put`` semantics differ, see
``schemas/access.py``, so puts are counted apart and never enter a hit rate):

- window and agent level, over reads: ``hits`` (some tier answered),
  ``full_misses`` (no tier answered), ``cache_hits`` (the first tier tried
  answered), ``errors`` (reads where some tier raised), ``hit_rate =
  hits / reads``, ``cache_effectiveness = cache_hits / reads``;
- tier level, over read attempts on that tier: ``attempts``, ``hits``,
  ``misses = attempts - hits`` (errors included), ``errors``, ``hit_rate =
  hits / attempts``, ``served`` (reads this tier answered) and
  ``served_share = served / reads`` (the window's reads); and for puts:
  ``puts``, ``put_stored``, ``put_errors``.

Rates are ``None`` when their denominator is zero.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from .batch import AttemptKey, Batch, EventKey, group_batch


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


class AccessCounts:
    """Exact access counters for one window (or one partition's partial)."""

    __slots__ = ("attempts", "events")

    def __init__(self) -> None:
        self.events: Counter[EventKey] = Counter()
        self.attempts: Counter[AttemptKey] = Counter()

    def add_batch(self, events: Iterable[Mapping[str, Any]]) -> None:
        self.add_grouped(group_batch(events))

    def add_grouped(self, batch: Batch) -> None:
        self.events.update(batch.event_keys)
        self.attempts.update(batch.attempt_keys)

    def merge(self, other: AccessCounts) -> None:
        self.events.update(other.events)
        self.attempts.update(other.attempts)

    def tier_accesses(self) -> dict[str, int]:
        """Attempts per tier, reads and puts together (what a tier bills for)."""
        out: Counter[str] = Counter()
        for (tier, _put, _hit, _err), n in self.attempts.items():
            out[tier] += n
        return dict(out)

    def result(self) -> dict[str, Any]:
        total: Counter[str] = Counter()
        agents: dict[str, Counter[str]] = {}
        served: Counter[str] = Counter()
        for (agent, is_put, tier, cache_hit, err), n in self.events.items():
            a = agents.get(agent)
            if a is None:
                agents[agent] = a = Counter()
            for c in (total, a):
                if is_put:
                    c["puts"] += n
                    c["put_errors"] += n if err else 0
                    continue
                c["reads"] += n
                c["hits" if tier is not None else "full_misses"] += n
                c["cache_hits"] += n if cache_hit else 0
                c["errors"] += n if err else 0
            if tier is not None and not is_put:
                served[tier] += n
        tiers: dict[str, Counter[str]] = {}
        for (tier, is_put, hit, err), n in self.attempts.items():
            t = tiers.get(tier)
            if t is None:
                tiers[tier] = t = Counter()
            if is_put:
                t["puts"] += n
                t["put_stored"] += n if hit else 0
                t["put_errors"] += n if err else 0
            else:
                t["attempts"] += n
                t["hits"] += n if hit else 0
                t["errors"] += n if err else 0
        reads = total["reads"]
        out = _level(total)
        out["agents"] = {name: _level(c) for name, c in sorted(agents.items())}
        out["tiers"] = {
            name: {
                "attempts": c["attempts"],
                "hits": c["hits"],
                "misses": c["attempts"] - c["hits"],
                "errors": c["errors"],
                "hit_rate": _rate(c["hits"], c["attempts"]),
                "served": served[name],
                "served_share": _rate(served[name], reads),
                "puts": c["puts"],
                "put_stored": c["put_stored"],
                "put_errors": c["put_errors"],
            }
            for name, c in sorted(tiers.items())
        }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": sorted(([*k, n] for k, n in self.events.items()), key=_row_key),
            "attempts": sorted(([*k, n] for k, n in self.attempts.items()), key=_row_key),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AccessCounts:
        c = cls()
        for agent, is_put, tier, cache_hit, err, n in d["events"]:
            c.events[(agent, bool(is_put), tier, bool(cache_hit), bool(err))] += int(n)
        for tier, is_put, hit, err, n in d["attempts"]:
            c.attempts[(tier, bool(is_put), bool(hit), bool(err))] += int(n)
        return c


def _row_key(row: list[Any]) -> list[str]:
    """Sort key for a serialized counter row (tier may be None; names are non-empty)."""
    return ["" if x is None else str(x) for x in row]


def _level(c: Counter[str]) -> dict[str, Any]:
    reads = c["reads"]
    return {
        "reads": reads,
        "hits": c["hits"],
        "full_misses": c["full_misses"],
        "cache_hits": c["cache_hits"],
        "errors": c["errors"],
        "hit_rate": _rate(c["hits"], reads),
        "cache_effectiveness": _rate(c["cache_hits"], reads),
        "puts": c["puts"],
        "put_errors": c["put_errors"],
    }
