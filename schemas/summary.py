"""The WindowSummary record: everything aggregated over one window of access events.

Produced by the aggregation core (``tierstream.processors.aggregate``), one
per closed window after the per-partition partials are merged, and published
on ``tierstream.window-summaries``. Its shape is :data:`SUMMARY_RECORD`, from
which validation and ``schemas/jsonschema/window_summary.v1.json`` derive.

Semantics in brief (the aggregation modules give the details):

- ``get`` and ``search`` are *reads*; only reads enter hit rates, latency
  percentiles and hot queries. ``put`` accesses are counted apart.
- Rates are null when their denominator is zero.
- Latencies come from HDR histograms with 3 significant digits over
  1 us .. 1 hour: a reported percentile is at most 1/1024 above the true
  value. ``pNN_ms`` is the smallest value with at least NN% of reads at or
  below it (upper end of its bucket).
- The pipeline adds ``view``, ``step_s``, ``revision`` and ``complete`` (see
  ``processors/pipeline/merger.py``); a summary straight from the core has none.
- Hot query counts are upper bounds: ``count - error <= true <= count``,
  with ``error <= hot_queries_total / capacity``.
"""

from __future__ import annotations

from typing import Any

from .spec import Field, Record, validate

SUMMARY_VERSION = 1
SUMMARY_TYPE = "window_summary"
#: Views the live pipeline and replay emit (field ``view``).
VIEWS = ("tumbling", "hopping")


def _count(name: str, description: str) -> Field:
    return Field(name, "integer", description, minimum=0)


def _rate(name: str, description: str) -> Field:
    return Field(name, "number", description, nullable=True, minimum=0, maximum=1)


def _ms(name: str, description: str) -> Field:
    return Field(name, "number", description, nullable=True, minimum=0)


def _money(name: str, description: str) -> Field:
    return Field(name, "number", description, minimum=0)


LATENCY_SUMMARY = Record(
    name="latency_summary",
    title="LatencySummary",
    description="Latency of reads, ms (null when count is 0).",
    fields=(
        _count("count", "Values recorded."),
        _ms("mean_ms", "Exact mean of the values (rounded to whole us)."),
        _ms("min_ms", "Smallest value (lower end of its bucket)."),
        _ms("p50_ms", "Median."),
        _ms("p90_ms", "90th percentile."),
        _ms("p95_ms", "95th percentile."),
        _ms("p99_ms", "99th percentile."),
        _ms("p999_ms", "99.9th percentile."),
        _ms("max_ms", "Largest value (upper end of its bucket)."),
    ),
)

TIER_SUMMARY = Record(
    name="tier_summary",
    title="TierSummary",
    description="One tier over the window.",
    fields=(
        _count("attempts", "Reads that tried this tier."),
        _count("hits", "Read attempts where this tier had the value."),
        _count("misses", "Read attempts where it did not (errors included)."),
        _count("errors", "Read attempts that raised."),
        _rate("hit_rate", "hits / attempts."),
        _count("served", "Reads this tier answered."),
        _rate("served_share", "served / all reads of the window."),
        _count("puts", "Put attempts on this tier."),
        _count("put_stored", "Put attempts that stored the value."),
        _count("put_errors", "Put attempts that raised."),
        Field("latency", "record", "Read latency of this tier.", values=LATENCY_SUMMARY),
        _money("cost_per_access", "Configured price of one access."),
        _money("cost", "Accesses (reads and puts) times cost_per_access."),
        _money("daily_cost", "cost * 86400 / window_s."),
    ),
)

AGENT_SUMMARY = Record(
    name="agent_summary",
    title="AgentSummary",
    description="One agent over the window.",
    fields=(
        _count("reads", "get and search accesses."),
        _count("hits", "Reads some tier answered."),
        _count("full_misses", "Reads no tier answered."),
        _count("cache_hits", "Reads the first tier tried answered."),
        _count("errors", "Reads where some tier raised."),
        _rate("hit_rate", "hits / reads."),
        _rate("cache_effectiveness", "cache_hits / reads."),
        _count("puts", "put accesses."),
        _count("put_errors", "Puts where some tier raised."),
    ),
)

HOT_QUERY_TIER = Record(
    name="hot_query_tier",
    title="HotQueryTier",
    description="Observed reads of one hot query answered by one tier.",
    fields=(
        _count("count", "Observed reads answered by this tier."),
        Field("mean_latency_ms", "number", "Their mean end-to-end latency, ms.", minimum=0),
    ),
)

HOT_QUERY = Record(
    name="hot_query",
    title="HotQuery",
    description="One of the most frequent read queries of the window.",
    fields=(
        Field("fingerprint", "string", "Query fingerprint.", max_length=64),
        Field(
            "query",
            "string",
            "A sample query text; null when redacted.",
            nullable=True,
            max_length=65536,
        ),
        _count("count", "Upper bound on the reads of this query."),
        _count("error", "count - error is a lower bound on the reads."),
        _count("observed", "Reads seen while the query was tracked (<= true count)."),
        _count("full_misses", "Observed reads no tier answered."),
        Field("tiers", "map", "Observed reads per answering tier.", values=HOT_QUERY_TIER),
    ),
)

SUMMARY_RECORD = Record(
    name=SUMMARY_TYPE,
    title="WindowSummary",
    version=SUMMARY_VERSION,
    description="Aggregates of MEMORY_TIER_ACCESS events over one window.",
    fields=(
        Field(
            "schema_version", "integer", "Version of this record's schema.", const=SUMMARY_VERSION
        ),
        Field("record_type", "string", "Always window_summary.", const=SUMMARY_TYPE),
        Field("window_start", "number", "Window start, epoch seconds (inclusive)."),
        Field("window_end", "number", "Window end, epoch seconds (exclusive)."),
        Field("window_s", "number", "Window length, seconds.", minimum=0),
        _count("events", "Events aggregated (reads and puts)."),
        _count("late_events", "Events that arrived after the window closed (not aggregated)."),
        _count("reads", "get and search accesses."),
        _count("puts", "put accesses."),
        _count("hits", "Reads some tier answered."),
        _count("full_misses", "Reads no tier answered."),
        _count("cache_hits", "Reads the first tier tried answered."),
        _count("errors", "Reads where some tier raised."),
        _count("put_errors", "Puts where some tier raised."),
        _rate("hit_rate", "hits / reads."),
        _rate("cache_effectiveness", "cache_hits / reads: share served by the first tier."),
        Field("latency", "record", "End-to-end read latency.", values=LATENCY_SUMMARY),
        Field("tiers", "map", "Per tier.", values=TIER_SUMMARY),
        Field("agents", "map", "Per agent.", values=AGENT_SUMMARY),
        Field("hot_queries", "list", "Hottest read queries, hottest first.", values=HOT_QUERY),
        _count("hot_queries_capacity", "Capacity k of the heavy-hitter summary."),
        _count("hot_queries_total", "Reads N counted by the heavy-hitter summary."),
        _count("hot_queries_error_bound", "Largest overestimate of any count (<= N / k)."),
        _money("cost", "Total cost of the window's accesses."),
        _money("daily_cost", "cost * 86400 / window_s."),
        Field(
            "view",
            "string",
            "Which view of the pipeline: tumbling (window_s) or hopping (window_s every step_s).",
            required=False,
            enum=VIEWS,
        ),
        Field(
            "step_s",
            "number",
            "Seconds between the starts of consecutive windows of this view.",
            required=False,
            minimum=0,
        ),
        Field(
            "revision",
            "integer",
            "0 for the first summary of this view window; n > 0 replaces revision n - 1 "
            "(a partition's partial arrived or changed after the window was merged).",
            required=False,
            minimum=0,
        ),
        Field(
            "complete",
            "boolean",
            "False when the merge timeout closed the window before every partition reported.",
            required=False,
        ),
    ),
)


def validate_summary(obj: Any) -> dict[str, Any]:
    """Check one WindowSummary; return it, or raise ``ValidationError``."""
    validate(SUMMARY_RECORD, obj)
    return dict(obj)
