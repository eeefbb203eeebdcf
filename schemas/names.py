"""Every topic and Redis key name tierstream uses, in one place.

A *topic* is a Faust topic carried by the redis:// transport: a topic ``T``
with ``N`` partitions is ``N`` Redis streams named by :func:`stream_key`.
Everything else tierstream keeps in Redis is named by a helper below, so an
operator can find (and delete) all of it by prefix.
"""

from __future__ import annotations

#: Prefix of every Redis key tierstream or its transport writes. An operator
#: can list everything with ``SCAN 0 MATCH ts:*``.
KEY_PREFIX = "ts"

# --- topics ---------------------------------------------------------------

#: MEMORY_TIER_ACCESS events, written by Publisher (one event or a batch of
#: events per stream entry), partitioned by the event key (query fingerprint).
ACCESS_TOPIC = "tierstream.access"

#: Default partition count of the access topic (Publisher and workers must agree;
#: the topic's metadata hash is the source of truth once the topic exists).
ACCESS_PARTITIONS = 8

#: Per-partition partial aggregates of one window, written by the aggregate agents.
WINDOW_PARTIALS_TOPIC = "tierstream.window-partials"

#: One merged WindowSummary per closed window.
WINDOW_SUMMARIES_TOPIC = "tierstream.window-summaries"

#: Optimization suggestions (pre-cache this query, TTL too short, ...).
SUGGESTIONS_TOPIC = "tierstream.suggestions"

#: Alerts: one record when a rule fires, one when it resolves.
ALERTS_TOPIC = "tierstream.alerts"

#: Metric events published by any process (custom metrics for alert rules).
METRICS_TOPIC = "tierstream.metrics"

#: Suffix of the dead-letter stream of a topic: entries that could not be
#: decoded or validated, each with the reason, the source stream and entry id.
DEAD_LETTER_SUFFIX = ".dead-letter"


def dead_letter_topic(topic: str) -> str:
    """Name of the dead-letter stream for ``topic`` (a single stream, not partitioned)."""
    return f"{topic}{DEAD_LETTER_SUFFIX}"


# --- Redis keys -------------------------------------------------------------


def stream_key(topic: str, partition: int) -> str:
    """Redis stream holding partition ``partition`` of ``topic``.

    Entries are written only with ``XADD <key> 0-* ...`` so that entry ids are
    ``0-1, 0-2, ...`` and the Faust offset of an entry is its sequence minus one.
    """
    return f"{KEY_PREFIX}:topic:{{{topic}}}:{partition}"


def topic_meta_key(topic: str) -> str:
    """Hash with a topic's metadata: ``partitions``, ``retention_ms``, ``maxlen``,
    ``compacting``, ``created_ms``. Written once by ``create_topic``."""
    return f"{KEY_PREFIX}:meta:{{{topic}}}"


#: Set of all topic names that have a metadata hash (for listing and cleanup).
TOPICS_INDEX_KEY = f"{KEY_PREFIX}:topics"


def commits_key(group: str) -> str:
    """Hash of committed offsets of a consumer group: field ``<topic>:<partition>``,
    value the next offset to read (Kafka semantics)."""
    return f"{KEY_PREFIX}:commits:{group}"


def dead_letter_key(topic: str) -> str:
    """Stream of dead letters for ``topic`` (entries written with ``XADD key *``:
    a dead-letter stream is not a topic and is never read by the transport)."""
    return f"{KEY_PREFIX}:dlq:{{{topic}}}"


def dead_letter_count_key(topic: str) -> str:
    """Integer counter of dead letters ever written for ``topic`` (survives trimming)."""
    return f"{KEY_PREFIX}:dlq-count:{{{topic}}}"


def publisher_stats_key(publisher_id: str) -> str:
    """Hash a Publisher writes now and then: ``sent``, ``dropped``, ``errors``,
    ``ts`` (for the drop-rate alert and the metrics endpoint)."""
    return f"{KEY_PREFIX}:publisher:{publisher_id}"


def group_key(group: str, part: str) -> str:
    """Key ``part`` of the redis:// consumer group ``group`` (membership,
    generations, partition owners; see ``processors/transport/group.py``):
    ``members`` (zset member -> expiry ms, Redis server time), ``meta`` (hash
    member -> metadata), ``state`` (hash: generation, handed-over generation,
    revisions), ``assign`` (hash member -> assignment of the newest
    generation), ``acks`` (set of members that revoked for it), ``leader``
    (the leader lease), ``owners`` and ``next-owners`` (hash
    ``<topic>:<partition>`` -> owner token ``<generation>:<member>``)."""
    return f"{KEY_PREFIX}:group:{{{group}}}:{part}"
