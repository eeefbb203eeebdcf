"""Events as JSON lines: what ``tierstream publish`` reads from standard input.

One MEMORY_TIER_ACCESS object per line. For convenience of producers in
other languages these fields may be left out and are filled in:
``schema_version`` and ``event_type`` (the current ones), ``event_id`` (a
random UUID), ``ts`` (now) and ``query_fingerprint`` (computed from
``query``). Everything else must be there and valid. A bad line is reported
with its line number and the field; the good lines are still published.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..schemas.access import EVENT_TYPE, SCHEMA_VERSION, AccessEvent, fingerprint, validate_access
from ..schemas.errors import ValidationError


@dataclass
class LineReport:
    """What became of the lines: how many were good, and the error of each bad one."""

    good: int = 0
    errors: list[ValidationError] = field(default_factory=list)


def complete(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with the optional fields filled in (see the module docstring)."""
    obj.setdefault("schema_version", SCHEMA_VERSION)
    obj.setdefault("event_type", EVENT_TYPE)
    if "event_id" not in obj:
        obj["event_id"] = uuid.uuid4().hex
    if "ts" not in obj:
        obj["ts"] = time.time()
    if "query_fingerprint" not in obj and isinstance(obj.get("query"), str):
        obj["query_fingerprint"] = fingerprint(obj["query"])
    return obj


def parse_line(line: bytes | str, lineno: int) -> AccessEvent:
    """One validated event from one line, or :class:`ValidationError` located at ``lineno``."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValidationError("(line)", f"not valid JSON: {exc}", line=lineno) from None
    if not isinstance(obj, dict):
        raise ValidationError("(line)", "must be a JSON object", line=lineno)
    try:
        return validate_access(complete(obj))
    except ValidationError as exc:
        raise exc.at_line(lineno) from None


def parse_lines(lines: Iterable[bytes | str], report: LineReport) -> Iterator[AccessEvent]:
    """The good events of ``lines`` (blank lines skipped); errors go to ``report``."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            event = parse_line(line, lineno)
        except ValidationError as exc:
            report.errors.append(exc)
            continue
        report.good += 1
        yield event
