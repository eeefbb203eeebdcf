"""Suggestions from window summaries: pre-cache, TTL too short, unhealthy tier.

Pure: no I/O, no clock. :class:`SuggestionEngine` is fed WindowSummary
records in window order (``observe``) and returns the Suggestion records to
publish (``schemas/suggestion.py``). Its state is JSON-safe
(``to_dict``/``from_dict``), so a worker can keep it in a table.

What is suggested (N = ``SuggestConfig.min_reads``; "first tier" as in
:mod:`.tiers`; query numbers are the summary's hot queries, whose counts are
upper bounds ``count`` with ``count - error`` a lower bound):

- ``pre_cache``: a hot query read at least N times (lower bound) of whose
  answered reads the first tier served less than ``pre_cache_max_first_share``
  (default half): it is mostly fetched from a slower tier.
- ``ttl_too_short``: a hot query read at least N times that the first tier
  served for most reads but slower tiers served for at least
  ``ttl_min_slow_reads`` reads and ``ttl_min_slow_share`` of them: it was in
  the cache and left it between reads in the same window (expiry or eviction).
- ``unhealthy_tier``: a tier with at least ``unhealthy_min_attempts`` read
  attempts whose error rate is at least ``unhealthy_error_rate`` and
  ``unhealthy_error_factor`` times the median of its peers' error rates, or
  whose p95 latency is above its configured target
  (``latency_targets_ms``) or, without a target, above
  ``unhealthy_latency_factor`` times its own baseline (an exponential moving
  average of p95 over earlier windows where it was not flagged; used after
  ``baseline_min_windows`` windows).

Benefit and savings (for the two query kinds), per window and per day
(``x 86400 / window_s``, assuming the window is typical):
``benefit_ms = sum over slower tiers t of reads_t x max(0, latency_t -
first_latency)`` where ``latency_t`` is the mean end-to-end latency of the
query's reads answered by ``t`` and ``first_latency`` the mean read latency
of the first tier; with one serving tier this is frequency x (its tier
latency - first tier latency). Query suggestions with no benefit are not
made. ``cost_change_per_day``: each slow read would no longer pay the tiers
after the first down to its serving tier (``-reads_t x sum(cost_per_access)``),
and a pre-cached query costs one extra first-tier put per window. Ranks are
by benefit within a kind (unhealthy tiers by error rate, then p95).

Republication ("materially changed"): a suggestion id is published when it
is new; when it was absent from the previous observed window and is back;
when its serving tier or reason changed; or when its frequency (slow reads;
for tiers the offending error rate or p95) or its benefit moved by at least
``material_change`` (25%) relative to the last *published* values, so slow
drift is reported once it adds up. Nothing is published otherwise. Ids not
seen for ``forget_after_s`` are forgotten. Summaries of a view other than
``views`` (when the record says ``view``) and summaries not newer than the
last observed window are ignored (a replay of old windows adds nothing).
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..schemas.suggestion import SUGGESTION_TYPE, SUGGESTION_VERSION
from .tiers import tier_order

SECONDS_PER_DAY = 86_400
STATE_VERSION = 1


@dataclass(frozen=True)
class SuggestConfig:
    """Thresholds of :class:`SuggestionEngine` (see the module docstring)."""

    min_reads: int = 20
    tier_order: tuple[str, ...] = ()
    material_change: float = 0.25
    pre_cache_max_first_share: float = 0.5
    ttl_min_slow_reads: int = 2
    ttl_min_slow_share: float = 0.1
    unhealthy_min_attempts: int = 20
    unhealthy_error_rate: float = 0.05
    unhealthy_error_factor: float = 3.0
    unhealthy_latency_factor: float = 3.0
    latency_targets_ms: Mapping[str, float] = field(default_factory=dict)
    baseline_alpha: float = 0.2
    baseline_min_windows: int = 3
    forget_after_s: float = 86_400.0
    views: tuple[str, ...] = ("tumbling",)


def suggestion_id(kind: str, fingerprint: str | None, tier: str | None) -> str:
    """Stable id of a suggestion: derived from its kind and subject only."""
    raw = f"{kind}|{fingerprint or ''}|{tier or ''}".encode()
    return "sg-" + hashlib.blake2b(raw, digest_size=8).hexdigest()


def _rel_change(new: float, old: float) -> float:
    if old == new:
        return 0.0
    return abs(new - old) / max(abs(old), 1e-12)


class SuggestionEngine:
    """Turns WindowSummary records into Suggestion records (see module docstring)."""

    def __init__(self, config: SuggestConfig | None = None) -> None:
        self.config = config or SuggestConfig()
        #: id -> {"freq", "benefit", "serving", "reason", "revision", "seen_end"}
        self.published: dict[str, dict[str, Any]] = {}
        #: tier -> [ewma of p95 ms, windows counted]
        self.baselines: dict[str, list[float]] = {}
        self.last_window_end: float | None = None

    # --- the API ------------------------------------------------------------

    def observe(self, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Suggestions to publish for this window (possibly none), ranked within kind."""
        cfg = self.config
        if summary.get("view", cfg.views[0]) not in cfg.views:
            return []
        end = float(summary["window_end"])
        if self.last_window_end is not None and end <= self.last_window_end:
            return []
        prev_end = self.last_window_end
        candidates = self._candidates(summary)
        self._update_baselines(summary, candidates)
        self.last_window_end = end
        out = []
        for rec in candidates:
            sid = rec["id"]
            freq, benefit, serving, reason = _change_key(rec)
            last = self.published.get(sid)
            changed = (
                last is None
                or prev_end is None
                or last["seen_end"] < prev_end
                or last["serving"] != serving
                or last["reason"] != reason
                or _rel_change(freq, last["freq"]) >= cfg.material_change
                or _rel_change(benefit, last["benefit"]) >= cfg.material_change
            )
            if changed:
                revision = 1 if last is None else int(last["revision"]) + 1
                rec["revision"] = revision
                self.published[sid] = {
                    "freq": freq,
                    "benefit": benefit,
                    "serving": serving,
                    "reason": reason,
                    "revision": revision,
                    "seen_end": end,
                }
                out.append(rec)
            elif last is not None:
                last["seen_end"] = end
        horizon = end - cfg.forget_after_s
        self.published = {k: v for k, v in self.published.items() if v["seen_end"] >= horizon}
        return out

    def candidates(self, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every suggestion this window supports (revision 1), ranked; no state change."""
        out = self._candidates(summary)
        for r in out:
            r.pop("_reason", None)
        return out

    def _candidates(self, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
        order = tier_order(summary, self.config.tier_order)
        if not order:
            return []
        queries = self._query_suggestions(summary, order)
        tiers = self._tier_suggestions(summary)
        out: list[dict[str, Any]] = []
        for kind in ("pre_cache", "ttl_too_short"):
            ranked = sorted(
                (r for r in queries if r["kind"] == kind),
                key=lambda r: (-r["estimated_saving"]["benefit_ms"], r["id"]),
            )
            out += _ranked(ranked)
        ranked = sorted(tiers, key=lambda r: (-r["_score"][0], -r["_score"][1], r["id"]))
        out += _ranked(ranked)
        for r in out:
            r.pop("_score", None)
        return out

    # --- state ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["latency_targets_ms"] = dict(self.config.latency_targets_ms)
        return {
            "version": STATE_VERSION,
            "config": cfg,
            "published": {k: dict(v) for k, v in sorted(self.published.items())},
            "baselines": {k: list(v) for k, v in sorted(self.baselines.items())},
            "last_window_end": self.last_window_end,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SuggestionEngine:
        if d.get("version") != STATE_VERSION:
            raise ValueError(f"unknown suggestion engine state version {d.get('version')!r}")
        cfg = dict(d["config"])
        for k in ("tier_order", "views"):
            cfg[k] = tuple(cfg[k])
        eng = cls(SuggestConfig(**cfg))
        eng.published = {k: dict(v) for k, v in d["published"].items()}
        eng.baselines = {k: [float(v[0]), float(v[1])] for k, v in d["baselines"].items()}
        eng.last_window_end = d["last_window_end"]
        return eng

    # --- the kinds ------------------------------------------------------------

    def _query_suggestions(
        self, summary: Mapping[str, Any], order: Sequence[str]
    ) -> list[dict[str, Any]]:
        cfg = self.config
        first = order[0]
        tiers = summary["tiers"]
        first_lat = tiers[first]["latency"]["mean_ms"]
        if first_lat is None:
            return []
        per_day = SECONDS_PER_DAY / summary["window_s"]
        out = []
        for hq in summary.get("hot_queries") or ():
            lower = hq["count"] - hq["error"]
            if lower < cfg.min_reads:
                continue
            served = {t: v["count"] for t, v in hq["tiers"].items()}
            answered = sum(served.values())
            slow = {t: c for t, c in served.items() if t != first and c > 0}
            slow_reads = sum(slow.values())
            if not slow_reads:
                continue
            first_share = served.get(first, 0) / answered
            if first_share < cfg.pre_cache_max_first_share:
                kind = "pre_cache"
            elif (
                slow_reads >= cfg.ttl_min_slow_reads
                and slow_reads / answered >= cfg.ttl_min_slow_share
            ):
                kind = "ttl_too_short"
            else:
                continue
            rank_of = {t: i for i, t in enumerate(order)}
            serving = min(slow, key=lambda t: (-slow[t], rank_of.get(t, len(order)), t))
            benefit = 0.0
            cost_change = 0.0
            for t, c in slow.items():
                benefit += c * max(0.0, hq["tiers"][t]["mean_latency_ms"] - first_lat)
                chain = order[1 : rank_of[t] + 1] if t in rank_of else [t]
                cost_change -= c * sum(tiers[x]["cost_per_access"] for x in chain if x in tiers)
            if benefit <= 0:
                continue
            if kind == "pre_cache":
                cost_change += tiers[first]["cost_per_access"]
            fp, text = hq["fingerprint"], hq["query"]
            serving_lat = hq["tiers"][serving]["mean_latency_ms"]
            name = repr(text) if text is not None else f"fingerprint {fp}"
            what = "Pre-cache" if kind == "pre_cache" else "Keep longer in the first tier"
            message = (
                f"{what}: query {name} was read {hq['count']} times in "
                f"{summary['window_s']:g} s; {slow_reads} reads were served by {serving} "
                f"({serving_lat:.1f} ms) instead of {first} ({first_lat:.1f} ms)."
            )
            rec = _record(
                kind,
                summary,
                fingerprint=fp,
                query=text,
                tier=None,
                message=message,
                counts={
                    "count": hq["count"],
                    "count_error": hq["error"],
                    "observed": hq["observed"],
                    "first_tier_reads": served.get(first, 0),
                    "slow_reads": slow_reads,
                    "full_misses": hq["full_misses"],
                },
                latencies={"first_tier_mean": first_lat, "serving_tier_mean": serving_lat},
                tiers={t: dict(v) for t, v in hq["tiers"].items()},
                first=first,
                serving=serving,
                saving={
                    "latency_ms_per_day": benefit * per_day,
                    "cost_change_per_day": cost_change * per_day,
                    "benefit_ms": benefit,
                },
                confidence=(lower / hq["count"]) * slow_reads / (slow_reads + cfg.min_reads),
            )
            out.append(rec)
        return out

    def _tier_suggestions(self, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
        cfg = self.config
        tiers = summary["tiers"]
        busy = {t: v for t, v in tiers.items() if v["attempts"] >= cfg.unhealthy_min_attempts}
        rates = {t: v["errors"] / v["attempts"] for t, v in busy.items()}
        out = []
        for name, t in sorted(busy.items()):
            er = rates[name]
            peers = [r for n, r in rates.items() if n != name]
            peer_median = statistics.median(peers) if peers else 0.0
            reasons = []
            if er >= cfg.unhealthy_error_rate and er >= cfg.unhealthy_error_factor * peer_median:
                reasons.append("errors")
            p95 = t["latency"]["p95_ms"]
            ref = self._latency_reference(name)
            if p95 is not None and ref is not None and p95 > ref:
                reasons.append("latency")
            if not reasons:
                continue
            message = (
                f"Tier {name} looks unhealthy: error rate {er:.1%} (peers' median "
                f"{peer_median:.1%}), p95 {p95} ms"
                + (f" (limit {ref:.1f} ms)" if ref is not None else "")
                + f" over {t['attempts']} read attempts."
            )
            rec = _record(
                "unhealthy_tier",
                summary,
                fingerprint=None,
                query=None,
                tier=name,
                message=message,
                counts={"attempts": t["attempts"], "errors": t["errors"]},
                latencies={"p95": p95, "p95_limit": ref, "mean": t["latency"]["mean_ms"]},
                tiers={n: {"error_rate": r} for n, r in sorted(rates.items())},
                first=None,
                serving=None,
                saving={"latency_ms_per_day": None, "cost_change_per_day": None, "benefit_ms": 0.0},
                confidence=t["attempts"] / (t["attempts"] + cfg.unhealthy_min_attempts),
            )
            rec["evidence"]["counts"]["error_rate_ppm"] = round(er * 1e6)
            rec["_reason"] = ",".join(reasons)
            rec["_score"] = (er, p95 or 0.0)
            out.append(rec)
        return out

    def _latency_reference(self, tier: str) -> float | None:
        """p95 above which ``tier`` counts as slow: its target, else factor x baseline."""
        target = self.config.latency_targets_ms.get(tier)
        if target is not None:
            return float(target)
        base = self.baselines.get(tier)
        if base is None or base[1] < self.config.baseline_min_windows:
            return None
        return self.config.unhealthy_latency_factor * base[0]

    def _update_baselines(
        self, summary: Mapping[str, Any], candidates: Sequence[Mapping[str, Any]]
    ) -> None:
        slow = {
            r["subject"]["tier"]
            for r in candidates
            if r["kind"] == "unhealthy_tier" and "latency" in r.get("_reason", "")
        }
        a = self.config.baseline_alpha
        for name, t in summary["tiers"].items():
            p95 = t["latency"]["p95_ms"]
            if p95 is None or name in slow:
                continue
            base = self.baselines.get(name)
            if base is None:
                self.baselines[name] = [float(p95), 1.0]
            else:
                base[0] = (1 - a) * base[0] + a * p95
                base[1] += 1


def _change_key(rec: dict[str, Any]) -> tuple[float, float, str | None, str]:
    """(frequency, benefit, serving tier, reason) compared between publications."""
    ev = rec["evidence"]
    reason = rec.pop("_reason", rec["kind"])
    if rec["kind"] == "unhealthy_tier":
        freq = ev["counts"]["error_rate_ppm"] if "errors" in reason else 0.0
        benefit = (ev["latencies_ms"]["p95"] or 0.0) if "latency" in reason else 0.0
        return float(freq), float(benefit), None, reason
    return (
        float(ev["counts"]["slow_reads"]),
        float(rec["estimated_saving"]["benefit_ms"]),
        ev["serving_tier"],
        reason,
    )


def _ranked(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, r in enumerate(recs, 1):
        r["rank"] = i
    return recs


def _record(
    kind: str,
    summary: Mapping[str, Any],
    *,
    fingerprint: str | None,
    query: str | None,
    tier: str | None,
    message: str,
    counts: dict[str, Any],
    latencies: dict[str, Any],
    tiers: dict[str, Any],
    first: str | None,
    serving: str | None,
    saving: dict[str, Any],
    confidence: float,
) -> dict[str, Any]:
    return {
        "schema_version": SUGGESTION_VERSION,
        "record_type": SUGGESTION_TYPE,
        "id": suggestion_id(kind, fingerprint, tier),
        "kind": kind,
        "revision": 1,
        "message": message,
        "subject": {"fingerprint": fingerprint, "query": query, "tier": tier},
        "evidence": {
            "window_start": summary["window_start"],
            "window_end": summary["window_end"],
            "window_s": summary["window_s"],
            "counts": counts,
            "latencies_ms": latencies,
            "tiers": tiers,
            "first_tier": first,
            "serving_tier": serving,
        },
        "estimated_saving": saving,
        "rank": 1,
        "confidence": min(1.0, max(0.0, confidence)),
        "created_ts": summary["window_end"],
    }
