"""The compiled checks give exactly the reference validator's verdicts.

Every field of valid events (top level and inside the tier chain) is
replaced with values of each wrong type, out-of-bound and boundary values,
NaN and infinities, nulls, or deleted; unknown keys are added. For each
mutant the compiled check and ``validate_access`` must agree.
"""

from __future__ import annotations

import copy
import math
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from tierstream.schemas import ValidationError, validate_access
from tierstream.schemas.access import ACCESS_RECORD, access_ok, check_access_batch
from tierstream.schemas.fastcheck import compile_check
from tierstream.schemas.summary import SUMMARY_RECORD, validate_summary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "processors"))
from aggregate_truth import make_events

ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**70,
    0.0,
    -0.0,
    -1e-9,
    1.5,
    1e9,
    1e10,
    1e10 + 1,
    3_600_000.0,
    3_600_000.5,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "x",
    "get",
    "put",
    "memory_tier_access",
    "a" * 129,
    "a" * 2001,
    [],
    [1],
    {},
    {"x": 1},
    {"latency_ms": 1.0, "hit": True},
]


def reference_ok(obj: Any, validate: Any = validate_access) -> bool:
    """The reference validator's verdict (``validate_access`` unless given)."""
    try:
        validate(obj)
    except ValidationError:
        return False
    return True


def mutants(ev: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for name in [*list(ev), "user_id", "session_id", "query_type", "unknown_field"]:
        m = copy.deepcopy(ev)
        m.pop(name, None)
        out.append(m)
        for v in ODD_VALUES:
            m = copy.deepcopy(ev)
            m[name] = v
            out.append(m)
    for tier in ev["tier_latencies"]:
        for name in ("latency_ms", "hit", "error", "extra"):
            m = copy.deepcopy(ev)
            m["tier_latencies"][tier].pop(name, None)
            out.append(m)
            for v in ODD_VALUES:
                m = copy.deepcopy(ev)
                m["tier_latencies"][tier][name] = v
                out.append(m)
        m = copy.deepcopy(ev)
        m["tier_latencies"][""] = m["tier_latencies"].pop(tier)
        out.append(m)
    out.append(dict(ev))  # unchanged
    out.extend([None, [], "event", 1, [ev]])
    return out


def test_compiled_check_agrees_with_the_reference_on_every_mutant() -> None:
    events = make_events(60, seed=11)
    checked = disagreements = 0
    for ev in events:
        for m in mutants(ev):
            checked += 1
            if access_ok(m) != reference_ok(m):
                disagreements += 1
                assert access_ok(m) == reference_ok(m), m
    # the mutants exercise both verdicts a lot
    assert checked > 10_000 and disagreements == 0


def test_batch_split_keeps_valid_events_and_gives_reference_errors() -> None:
    rng = random.Random(3)
    events = make_events(200, seed=5)
    batch: list[Any] = []
    expect_bad: list[tuple[int, str]] = []
    for ev in events:
        if rng.random() < 0.2:
            m = rng.choice(mutants(ev)[:-5])
            if not reference_ok(m):
                try:
                    validate_access(m)
                except ValidationError as exc:
                    expect_bad.append((len(batch), str(exc)))
            batch.append(m)
        else:
            batch.append(ev)
    good, bad = check_access_batch(batch)
    assert [(i, str(e)) for i, e in bad] == expect_bad
    bad_idx = {i for i, _ in bad}
    assert good == [b for i, b in enumerate(batch) if i not in bad_idx]
    assert len(bad) > 10


@pytest.mark.parametrize("seed", [1, 2])
def test_compiled_check_of_nested_records_agrees(seed: int) -> None:
    """The WindowSummary spec (records, maps and lists nested) compiles too."""
    from tierstream.processors.aggregate import WindowAggregate

    agg = WindowAggregate(1_700_000_000, 1_700_000_060)
    agg.add_batch(make_events(500, seed=seed))
    summary = agg.summary()
    check = compile_check(SUMMARY_RECORD)
    assert check(summary) and reference_ok(summary, validate_summary)
    for m in nested_mutants(summary, seed, 3000):
        assert check(m) == reference_ok(m, validate_summary), m


def nested_mutants(record: dict[str, Any], seed: int, n: int) -> list[Any]:
    """``n`` copies of ``record``, each with one field somewhere in its nesting
    deleted, set to an odd value, or an unknown key added."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        m = copy.deepcopy(record)
        # walk to a random nested dict and break one of its fields
        node: Any = m
        while True:
            if isinstance(node, list) and node:
                node = rng.choice(node)
            elif isinstance(node, dict) and node and rng.random() < 0.6:
                key = rng.choice(list(node))
                if isinstance(node[key], (dict, list)) and node[key]:
                    node = node[key]
                    continue
                if rng.random() < 0.2:
                    del node[key]
                else:
                    node[key] = rng.choice(ODD_VALUES)
                break
            else:
                if isinstance(node, dict):
                    node[rng.choice(["zz", "count", ""])] = rng.choice(ODD_VALUES)
                break
        out.append(m)
    return out


def test_compiled_check_rejects_what_is_not_a_dict_like_the_reference() -> None:
    check = compile_check(ACCESS_RECORD)
    for obj in (None, 1, "x", [], (), set()):
        assert not check(obj) and not reference_ok(obj)


def test_tail_runs_only_on_field_valid_objects_and_gives_the_verdict() -> None:
    # the tail sees the loaded field values; a KeyError in it means False
    check = compile_check(ACCESS_RECORD, 'return {operation} == "get"')
    strict = compile_check(ACCESS_RECORD, 'return {tier_latencies}["no such tier"]["hit"]')
    events = make_events(200, seed=5)
    ops = {ev["operation"] for ev in events}
    assert {"get", "put"} <= ops
    for ev in events:
        assert check(ev) == (ev["operation"] == "get")
        assert not strict(ev)
        bad = {**ev, "ts": "soon"}  # fails a field check: the tail is not reached
        assert not check(bad) and not reference_ok(bad)
