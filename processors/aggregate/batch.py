"""One pass over a batch of MEMORY_TIER_ACCESS events, grouped for the aggregators.

Per-event Python work decides throughput, so every aggregator consumes the
same :class:`Batch`, built by a single loop (:func:`group_batch`): events are
reduced to small tuple keys counted in C (``collections.Counter``), latencies
to integer microseconds collected in per-tier lists, and query accesses to
per ``(fingerprint, serving tier)`` totals. The aggregators then work per
distinct key, not per event.

The loop runs in C when ``tierstream._native`` is built (:mod:`tierstream.native`);
:func:`group_batch_py` is its pure-Python twin, with the same result.

Latencies are converted once, here, from milliseconds to integer
microseconds, rounding half up (``int(ms * 1000 + 0.5)``); every later sum
is an integer sum, so results do not depend on batch boundaries or merge
order. Only ``get``/``search`` latencies and queries are collected; ``put``
events are counted (per agent, per tier attempt) but their latency is not
part of the read-latency histograms.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...native import ext as _native

#: ``(agent_id, is_put, tier_accessed, cache_hit, any_error)``: one per event.
EventKey = tuple[str, bool, str | None, bool, bool]
#: ``(tier, is_put, hit, error)``: one per tier tried.
AttemptKey = tuple[str, bool, bool, bool]
#: ``(query_fingerprint, tier_accessed)``: one per get/search.
QueryKey = tuple[str, str | None]


@dataclass(slots=True)
class Batch:
    """A batch of events reduced to what the aggregators need."""

    events: int = 0
    event_keys: Counter[EventKey] = field(default_factory=Counter)
    attempt_keys: Counter[AttemptKey] = field(default_factory=Counter)
    #: read latency of each tier tried, integer microseconds
    tier_us: dict[str, list[int]] = field(default_factory=dict)
    #: end-to-end read latency, integer microseconds
    total_us: list[int] = field(default_factory=list)
    #: per (fingerprint, serving tier): [accesses, sum of end-to-end latency in us]
    queries: dict[QueryKey, list[int]] = field(default_factory=dict)
    #: per fingerprint: the smallest non-null query text seen (deterministic sample)
    texts: dict[str, str] = field(default_factory=dict)


def native_batch(
    n: int,
    ev_keys: dict[EventKey, int],
    att_keys: dict[AttemptKey, int],
    tier_us: dict[str, Any],
    total_us: Any,
    queries: dict[QueryKey, list[int]],
    texts: dict[str, str],
) -> Batch:
    """The :class:`Batch` of the parts ``_native.group`` and ``_native.scan`` return
    (their key counts are plain dicts; latencies may be ``array('q')``)."""
    return Batch(n, Counter(ev_keys), Counter(att_keys), tier_us, total_us, queries, texts)


def group_batch(events: Iterable[Mapping[str, Any]]) -> Batch:
    """Reduce validated events (see ``schemas/access.py``) to a :class:`Batch`."""
    if _native is not None and type(events) is list:
        return native_batch(*_native.group(events))
    return group_batch_py(events)


def group_batch_py(events: Iterable[Mapping[str, Any]]) -> Batch:
    """:func:`group_batch` in pure Python (the C twin's reference)."""
    ev_keys: list[EventKey] = []
    att_keys: list[AttemptKey] = []
    tier_us: dict[str, list[int]] = {}
    total_us: list[int] = []
    queries: dict[QueryKey, list[int]] = {}
    texts: dict[str, str] = {}
    ev_append = ev_keys.append
    att_append = att_keys.append
    tot_append = total_us.append
    tier_get = tier_us.get
    q_get = queries.get
    for ev in events:
        chain = ev["tier_latencies"]
        served = ev["tier_accessed"]
        err = False
        if ev["operation"] == "put":
            for t, a in chain.items():
                e = a.get("error") is not None
                err |= e
                att_append((t, True, a["hit"], e))
            ev_append((ev["agent_id"], True, served, False, err))
            continue
        for t, a in chain.items():
            e = a.get("error") is not None
            err |= e
            att_append((t, False, a["hit"], e))
            lst = tier_get(t)
            if lst is None:
                tier_us[t] = lst = []
            lst.append(int(a["latency_ms"] * 1000.0 + 0.5))
        ev_append((ev["agent_id"], False, served, ev["cache_hit"], err))
        us = int(ev["total_latency_ms"] * 1000.0 + 0.5)
        tot_append(us)
        fp = ev["query_fingerprint"]
        key = (fp, served)
        acc = q_get(key)
        if acc is None:
            queries[key] = [1, us]
        else:
            acc[0] += 1
            acc[1] += us
        text = ev.get("query")
        if text is not None:
            cur = texts.get(fp)
            if cur is None or text < cur:
                texts[fp] = text
    return Batch(
        events=len(ev_keys),
        event_keys=Counter(ev_keys),
        attempt_keys=Counter(att_keys),
        tier_us=tier_us,
        total_us=total_us,
        queries=queries,
        texts=texts,
    )
