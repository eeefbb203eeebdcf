"""The MEMORY_TIER_ACCESS record: one per access through an instrumented memory.

An event is a plain ``dict`` (cheap to build, encoded by orjson as is); its
shape is :data:`ACCESS_RECORD`, from which validation and the checked-in JSON
Schema (``schemas/jsonschema/memory_tier_access.v1.json``) both derive.

Semantics worth knowing:

- ``tier_latencies`` lists the tiers *tried*, in the order tried (JSON object
  order is preserved by every encoder we use; a consumer in another language
  that needs the order should use an order-preserving parser).
- For ``get`` and ``search``: ``hit`` is "this tier had the value",
  ``tier_accessed`` is the tier that answered (null on a full miss) and
  ``cache_hit`` is true when that tier is the first tier tried.
- For ``put``: ``hit`` is "this tier stored the value", ``tier_accessed`` is
  the first tier that stored it and ``cache_hit`` is always false; hit-rate
  aggregates count only ``get`` and ``search``.
- ``query_fingerprint`` is :func:`fingerprint` of the query: the first 16 hex
  digits of BLAKE2b-64 over the normalized query (Unicode NFKC, lower case,
  runs of white space collapsed to one space, stripped). With redaction on,
  ``query`` is null and only the fingerprint travels.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any, Literal, TypedDict

from ..native import ext as _native
from .errors import ValidationError
from .fastcheck import compile_check, native_plan
from .spec import Field, Record, validate

SCHEMA_VERSION = 1
EVENT_TYPE = "memory_tier_access"
OPERATIONS = ("get", "search", "put")
Operation = Literal["get", "search", "put"]

#: Latencies above an hour are not measurements but bugs (absurd values).
MAX_LATENCY_MS = 3_600_000.0
#: 2001-09-09 .. 2286-11-20: epoch seconds, not milliseconds.
MIN_TS, MAX_TS = 1e9, 1e10

TIER_ATTEMPT = Record(
    name="tier_attempt",
    title="TierAttempt",
    description="One tier tried during an access.",
    fields=(
        Field(
            "latency_ms",
            "number",
            "Time spent in this tier (monotonic clock), ms.",
            minimum=0,
            maximum=MAX_LATENCY_MS,
        ),
        Field("hit", "boolean", "get/search: the tier had the value; put: the tier stored it."),
        Field(
            "error",
            "string",
            "Error raised by the tier (type: message), or null.",
            required=False,
            nullable=True,
            max_length=2000,
        ),
    ),
)

ACCESS_RECORD = Record(
    name="memory_tier_access",
    title="MemoryTierAccess",
    version=SCHEMA_VERSION,
    description="One access (get, search or put) through a tiered agent memory.",
    fields=(
        Field(
            "schema_version", "integer", "Version of this record's schema.", const=SCHEMA_VERSION
        ),
        Field("event_type", "string", "Always memory_tier_access.", const=EVENT_TYPE),
        Field("event_id", "string", "Unique id of this event.", max_length=128),
        Field(
            "ts",
            "number",
            "When the access started, epoch seconds.",
            minimum=MIN_TS,
            maximum=MAX_TS,
        ),
        Field("agent_id", "string", "The agent that made the access.", max_length=256),
        Field(
            "user_id",
            "string",
            "The end user on whose behalf, if known.",
            nullable=True,
            required=False,
            max_length=256,
        ),
        Field(
            "session_id",
            "string",
            "The agent session, if known.",
            nullable=True,
            required=False,
            max_length=256,
        ),
        Field("operation", "string", "Kind of access.", enum=OPERATIONS),
        Field(
            "query",
            "string",
            "The query or key; null when redacted.",
            nullable=True,
            required=False,
            max_length=65536,
        ),
        Field(
            "query_fingerprint",
            "string",
            "16 hex digits of BLAKE2b-64 over the normalized query.",
            max_length=64,
        ),
        Field(
            "query_type",
            "string",
            "Application-defined kind of query.",
            nullable=True,
            required=False,
            max_length=128,
        ),
        Field(
            "tier_accessed",
            "string",
            "Tier that answered (get/search) or first tier that stored (put); null on a full miss.",
            nullable=True,
            max_length=128,
        ),
        Field(
            "tier_latencies",
            "map",
            "Per tier tried, in order: latency, hit, error.",
            values=TIER_ATTEMPT,
            max_entries=32,
        ),
        Field(
            "total_latency_ms",
            "number",
            "End-to-end latency of the access, ms.",
            minimum=0,
            maximum=MAX_LATENCY_MS,
        ),
        Field("cache_hit", "boolean", "get/search answered by the first tier tried."),
        Field("result_count", "integer", "Number of results returned.", minimum=0),
    ),
)


class TierAttempt(TypedDict, total=False):
    latency_ms: float
    hit: bool
    error: str | None


class AccessEvent(TypedDict, total=False):
    schema_version: int
    event_type: str
    event_id: str
    ts: float
    agent_id: str
    user_id: str | None
    session_id: str | None
    operation: Operation
    query: str | None
    query_fingerprint: str
    query_type: str | None
    tier_accessed: str | None
    tier_latencies: dict[str, TierAttempt]
    total_latency_ms: float
    cache_hit: bool
    result_count: int


_WS = re.compile(r"\s+")


def normalize_query(query: str) -> str:
    """The normal form that :func:`fingerprint` hashes."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", query).lower()).strip()


def fingerprint(query: str) -> str:
    """Stable fingerprint of a query: 16 hex digits of BLAKE2b-64 of its normal form."""
    return hashlib.blake2b(normalize_query(query).encode(), digest_size=8).hexdigest()


def validate_access(obj: Any) -> AccessEvent:
    """Check one MEMORY_TIER_ACCESS event; return it, or raise :class:`ValidationError`.

    Beyond the per-field schema this checks what ties fields together: the
    served tier must be one that was tried and hit, and ``cache_hit`` must
    agree with it.
    """
    validate(ACCESS_RECORD, obj)
    chain = obj["tier_latencies"]
    served = obj["tier_accessed"]
    if served is not None:
        attempt = chain.get(served)
        if attempt is None:
            raise ValidationError("tier_accessed", f"{served!r} is not among tier_latencies")
        if not attempt["hit"]:
            raise ValidationError("tier_accessed", f"{served!r} is recorded with hit=false")
    if obj["operation"] == "put":
        if obj["cache_hit"]:
            raise ValidationError("cache_hit", "must be false for a put")
    else:
        first = next(iter(chain), None)
        expect = served is not None and served == first
        if obj["cache_hit"] != expect:
            raise ValidationError(
                "cache_hit",
                f"is {obj['cache_hit']} but tier_accessed={served!r} and the "
                f"first tier tried is {first!r}",
            )
    return obj


#: The cross-field rules of :func:`validate_access` as a verdict (no message),
#: run inside the compiled check after the field checks (``compile_check``'s tail).
_ACCESS_TAIL = """
served = {tier_accessed}
chain = {tier_latencies}
if served is not None:
    attempt = chain.get(served)
    if attempt is None or not attempt["hit"]:
        return False
if {operation} == "put":
    return not {cache_hit}
return bool({cache_hit} == (served is not None and served == next(iter(chain), None)))
"""


#: ``True`` only for events :func:`validate_access` accepts (compiled; no message).
access_ok = compile_check(ACCESS_RECORD, _ACCESS_TAIL)


#: :data:`ACCESS_RECORD` compiled for the C checks (``tierstream/_native.c``), or None.
NATIVE_PLAN = None if _native is None else _native.compile_plan(native_plan(ACCESS_RECORD))
#: ``check_batch``'s ``tail`` code for the cross-field rules above.
_NATIVE_ACCESS_TAIL = 1


def _rejected(objs: list[Any]) -> list[int]:
    """Indices of the objects :data:`access_ok` rejects (in C when built)."""
    if NATIVE_PLAN is not None:
        assert _native is not None
        bad: list[int] = _native.check_batch(NATIVE_PLAN, objs, _NATIVE_ACCESS_TAIL)
        return bad
    ok = access_ok
    if all(map(ok, objs)):
        return []
    return [i for i, obj in enumerate(objs) if not ok(obj)]


def check_access_batch(
    objs: list[Any],
) -> tuple[list[AccessEvent], list[tuple[int, ValidationError]]]:
    """Split decoded objects into valid events and ``(index, error)`` for the rest.

    Same verdicts and messages as :func:`validate_access` on each object, at a
    fraction of the cost for valid ones (the compiled check in
    :mod:`.fastcheck`, or its C twin; only rejected objects go through the
    reference validator, for their messages).
    """
    rejected = _rejected(objs)
    if not rejected:
        return objs, []
    good: list[AccessEvent] = []
    bad: list[tuple[int, ValidationError]] = []
    skip = set(rejected)
    for i, obj in enumerate(objs):
        if i not in skip:
            good.append(obj)
            continue
        try:
            good.append(validate_access(obj))
        except ValidationError as exc:
            bad.append((i, exc))
    return good, bad
