"""The event contract: validation errors, JSON Schema drift, wire format, partitioning."""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import jsonschema
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as kafka_murmur2
from tierstream.schemas import ValidationError, WireFormatError, validate_access
from tierstream.schemas.access import ACCESS_RECORD, fingerprint, normalize_query
from tierstream.schemas.export import RECORDS, SCHEMA_DIR, filename, render
from tierstream.schemas.partition import murmur2, partition_for
from tierstream.schemas.spec import json_schema
from tierstream.schemas.wire import (
    decode_entry,
    decode_events,
    encode_entry,
    entry_id_of,
    offset_of,
)


def good_event(**over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "schema_version": 1,
        "event_type": "memory_tier_access",
        "event_id": "e1",
        "ts": 1_763_700_000.25,
        "agent_id": "a",
        "user_id": "u",
        "session_id": None,
        "operation": "search",
        "query": "Where is Paris?",
        "query_fingerprint": fingerprint("Where is Paris?"),
        "query_type": "historical",
        "tier_accessed": "postgresql",
        "tier_latencies": {
            "redis": {"latency_ms": 5.2, "hit": False, "error": None},
            "postgresql": {"latency_ms": 27.3, "hit": True, "error": None},
        },
        "total_latency_ms": 32.5,
        "cache_hit": False,
        "result_count": 5,
    }
    ev.update(over)
    return ev


def test_good_event_passes_ours_and_the_published_json_schema() -> None:
    ev = good_event()
    assert validate_access(ev) is ev
    jsonschema.validate(ev, json_schema(ACCESS_RECORD))


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"operation": "delete"}, "operation", "must be one of"),
        ({"ts": 1_763_700_000_000}, "ts", "<="),
        ({"result_count": -1}, "result_count", ">= 0"),
        ({"result_count": 1.5}, "result_count", "integer"),
        ({"cache_hit": "yes"}, "cache_hit", "true or false"),
        ({"total_latency_ms": float("nan")}, "total_latency_ms", "finite"),
        ({"agent_id": None}, "agent_id", "null"),
        ({"schema_version": 2}, "schema_version", "must be 1"),
        ({"extra": 1}, "extra", "not a field"),
        (
            {"tier_latencies": {"redis": {"latency_ms": -3, "hit": True}}},
            "tier_latencies.redis.latency_ms",
            ">= 0",
        ),
        (
            {"tier_latencies": {"redis": {"hit": True}}},
            "tier_latencies.redis.latency_ms",
            "missing",
        ),
        ({"tier_accessed": "chroma"}, "tier_accessed", "not among"),
        ({"cache_hit": True}, "cache_hit", "first tier"),
    ],
)
def test_validation_names_the_field_and_the_problem(
    change: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(ValidationError) as info:
        validate_access(good_event(**change))
    assert info.value.field == field
    assert words in info.value.problem
    assert str(info.value).startswith(field)


def test_missing_field_is_named() -> None:
    ev = good_event()
    del ev["query_fingerprint"]
    with pytest.raises(ValidationError, match="query_fingerprint: is required"):
        validate_access(ev)


def test_put_semantics() -> None:
    ev = good_event(
        operation="put",
        tier_accessed="redis",
        cache_hit=False,
        tier_latencies={"redis": {"latency_ms": 1.0, "hit": True}},
    )
    validate_access(ev)
    with pytest.raises(ValidationError, match="cache_hit"):
        validate_access(dict(ev, cache_hit=True))


def test_published_schema_rejects_what_we_reject() -> None:
    schema = json_schema(ACCESS_RECORD)
    for bad in (
        {"operation": "delete"},
        {"result_count": -1},
        {"extra": 1},
        {"agent_id": None},
        {"schema_version": 2},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(good_event(**bad), schema)


@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: r.name)
def test_checked_in_json_schemas_match_the_code(rec: Any) -> None:
    path = SCHEMA_DIR / filename(rec)
    assert path.exists(), f"{path} missing: run python -m tierstream.schemas.export"
    assert path.read_bytes() == render(rec), (
        f"{path.name} drifted from the code: run python -m tierstream.schemas.export"
    )
    jsonschema.Draft202012Validator.check_schema(json_schema(rec))


def test_fingerprint_is_the_documented_hash_of_the_normal_form() -> None:
    assert normalize_query("  Where\tis\n PARIS?  ") == "where is paris?"
    expected = hashlib.blake2b(b"where is paris?", digest_size=8).hexdigest()
    assert fingerprint("  Where\tis\n PARIS?  ") == expected
    # Pinned so that producers in other languages can check their implementation.
    assert fingerprint("Where is Paris?") == "64fd0b6b64ff3280"


def test_murmur2_and_partition_match_kafkas_default_partitioner() -> None:
    rng = random.Random(7)
    kafka = DefaultPartitioner()
    for _ in range(3000):
        key = os.urandom(rng.randrange(0, 64))
        assert murmur2(key) == kafka_murmur2(key)
        n = rng.randrange(1, 64)
        assert partition_for(key, n) == kafka(key, list(range(n)), list(range(n)))
    with pytest.raises(ValueError):
        partition_for(b"x", 0)


def test_wire_entry_round_trip_and_offsets() -> None:
    fields = encode_entry(b'{"a":1}', key=b"k", timestamp_ms=123, headers={"x": "y"}, count=1)
    assert decode_entry(fields) == (b"k", b'{"a":1}', 123, {"x": "y"})
    assert decode_entry({b"v": b"1"}) == (None, b"1", None, None)
    assert offset_of(b"0-1") == 0 and offset_of("0-42") == 41
    assert entry_id_of(41) == b"0-42"
    for bad in (b"1700000000000-0", b"0-0", b"0", b"x-1"):
        with pytest.raises(WireFormatError, match="0-<n>"):
            offset_of(bad)
    with pytest.raises(WireFormatError, match="no 'v'"):
        decode_entry({b"value": b"1"})
    with pytest.raises(WireFormatError, match="'t'"):
        decode_entry({b"v": b"1", b"t": b"soon"})


def test_decode_events_accepts_one_or_many() -> None:
    assert decode_events(b'{"a":1}') == [{"a": 1}]
    assert decode_events(b'[{"a":1},{"a":2}]') == [{"a": 1}, {"a": 2}]
    for bad in (b"not json", b"42", b'"s"'):
        with pytest.raises(WireFormatError):
            decode_events(bad)
