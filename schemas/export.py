"""JSON Schema files for every record, generated from the code.

``python -m tierstream.schemas.export`` rewrites ``schemas/jsonschema/``;
the test suite fails when the checked-in files drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from .access import ACCESS_RECORD
from .alert import ALERT_RECORD
from .metric import METRIC_RECORD
from .spec import Record, json_schema
from .suggestion import SUGGESTION_RECORD
from .summary import SUMMARY_RECORD

#: Every record with a published schema (later records are added here).
RECORDS: tuple[Record, ...] = (
    ACCESS_RECORD,
    SUMMARY_RECORD,
    SUGGESTION_RECORD,
    ALERT_RECORD,
    METRIC_RECORD,
)

SCHEMA_DIR = Path(__file__).resolve().parent / "jsonschema"


def filename(rec: Record) -> str:
    return f"{rec.name}.v{rec.version}.json"


def render(rec: Record) -> bytes:
    """The exact bytes of ``rec``'s schema file."""
    return orjson.dumps(json_schema(rec), option=orjson.OPT_INDENT_2) + b"\n"


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for rec in RECORDS:
        path = directory / filename(rec)
        path.write_bytes(render(rec))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all():
        sys.stdout.write(f"wrote {p}\n")
