"""The Suggestion record: one optimization suggestion derived from window summaries.

Produced by ``tierstream.sinks.suggest.SuggestionEngine`` and published on
``tierstream.suggestions``. A suggestion is published again only when its
evidence changes materially (the engine's docstring defines "materially"), so
consumers see one record per change, not one per window.

- ``id`` is stable: derived from ``kind`` and the subject (query fingerprint
  or tier), so every publication of the same suggestion carries the same id;
  ``revision`` counts its publications (1 = first).
- ``kind``: ``pre_cache`` (a hot query mostly served by a slower tier),
  ``ttl_too_short`` (a hot query served by the first tier for some reads and
  by slower tiers for others in the same window: it left the cache between
  reads), ``unhealthy_tier`` (a tier's error rate or p95 latency far above its
  peers, its target or its own baseline).
- ``estimated_saving`` assumes the window is typical of the day
  (``x 86400 / window_s``); null when not estimable (``unhealthy_tier``).
  ``cost_change_per_day`` is negative when applying the suggestion saves money.
"""

from __future__ import annotations

from typing import Any

from .spec import Field, Record, validate

SUGGESTION_VERSION = 1
SUGGESTION_TYPE = "suggestion"
SUGGESTION_KINDS = ("pre_cache", "ttl_too_short", "unhealthy_tier")

SUBJECT = Record(
    name="suggestion_subject",
    title="SuggestionSubject",
    description="What the suggestion is about: a query, or a tier.",
    fields=(
        Field("fingerprint", "string", "Query fingerprint, or null.", nullable=True, max_length=64),
        Field(
            "query",
            "string",
            "A sample of the query text; null when redacted or not a query.",
            nullable=True,
            max_length=65536,
        ),
        Field("tier", "string", "The tier concerned, or null.", nullable=True, max_length=256),
    ),
)

EVIDENCE = Record(
    name="suggestion_evidence",
    title="SuggestionEvidence",
    description="The numbers the suggestion rests on, from one window.",
    fields=(
        Field("window_start", "number", "Window start, epoch seconds."),
        Field("window_end", "number", "Window end, epoch seconds."),
        Field("window_s", "number", "Window length, seconds.", minimum=0),
        Field("counts", "object", "Named counts (reads, slow_reads, per tier ...), integers."),
        Field("latencies_ms", "object", "Named latencies in ms (per tier, first tier ...)."),
        Field("tiers", "object", "Per tier: what the window says about it for this subject."),
        Field("first_tier", "string", "The tier tried first.", nullable=True, max_length=256),
        Field(
            "serving_tier",
            "string",
            "The slower tier that served most of the subject's reads, or null.",
            nullable=True,
            max_length=256,
        ),
    ),
)

SAVING = Record(
    name="suggestion_saving",
    title="SuggestionSaving",
    description="Estimated effect per day of applying the suggestion.",
    fields=(
        Field(
            "latency_ms_per_day",
            "number",
            "Read latency saved per day, ms (summed over reads).",
            nullable=True,
            minimum=0,
        ),
        Field(
            "cost_change_per_day",
            "number",
            "Change of tier cost per day (negative: cheaper).",
            nullable=True,
        ),
        Field("benefit_ms", "number", "frequency x latency gap, ms per window.", minimum=0),
    ),
)

SUGGESTION_RECORD = Record(
    name=SUGGESTION_TYPE,
    title="Suggestion",
    version=SUGGESTION_VERSION,
    description="One optimization suggestion for a tiered memory.",
    fields=(
        Field(
            "schema_version",
            "integer",
            "Version of this record's schema.",
            const=SUGGESTION_VERSION,
        ),
        Field("record_type", "string", "Always suggestion.", const=SUGGESTION_TYPE),
        Field("id", "string", "Stable id: derived from kind and subject.", max_length=128),
        Field("kind", "string", "What to do.", enum=SUGGESTION_KINDS),
        Field("revision", "integer", "Publications of this id so far (1 = first).", minimum=1),
        Field("message", "string", "One sentence for an operator.", max_length=2000),
        Field("subject", "record", "What it is about.", values=SUBJECT),
        Field("evidence", "record", "What it rests on.", values=EVIDENCE),
        Field("estimated_saving", "record", "Estimated effect per day.", values=SAVING),
        Field(
            "rank",
            "integer",
            "Rank by benefit among this window's suggestions of its kind.",
            minimum=1,
        ),
        Field("confidence", "number", "Heuristic confidence in [0, 1].", minimum=0, maximum=1),
        Field("created_ts", "number", "When published: the window end, epoch seconds."),
    ),
)


def validate_suggestion(obj: Any) -> dict[str, Any]:
    """Check one Suggestion; return it, or raise ``ValidationError``."""
    validate(SUGGESTION_RECORD, obj)
    return dict(obj)
