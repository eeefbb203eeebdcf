"""A small record-specification language: one spec drives both validation and
the JSON Schema export, so the two cannot disagree.

Only what the tierstream records need is supported: scalar fields with
bounds, enums, nullability, maps from a string to a nested record, a nested
record, and lists of nested records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ValidationError

Kind = Literal["string", "number", "integer", "boolean", "map", "object", "record", "list"]

_JSON_TYPE = {
    "string": "string",
    "number": "number",
    "integer": "integer",
    "boolean": "boolean",
    "map": "object",
    "object": "object",
    "record": "object",
    "list": "array",
}


@dataclass(frozen=True)
class Field:
    """One field of a record."""

    name: str
    kind: Kind
    description: str
    required: bool = True
    nullable: bool = False
    enum: tuple[str, ...] | None = None
    const: Any = None
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None
    #: for ``kind="map"``: the record every value must satisfy; for
    #: ``kind="list"``: every item; for ``kind="record"``: the value itself
    values: Record | None = None
    #: for ``kind="map"`` and ``kind="list"``: most entries (items) allowed
    max_entries: int | None = None


@dataclass(frozen=True)
class Record:
    """A versioned record type."""

    name: str
    title: str
    description: str
    fields: tuple[Field, ...]
    additional: bool = False
    version: int | None = None
    _by_name: dict[str, Field] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({f.name: f for f in self.fields})

    def field(self, name: str) -> Field:
        return self._by_name[name]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        dict: "object",
        list: "array",
    }.get(type(value), type(value).__name__)


def check_value(f: Field, value: Any, path: str) -> None:
    """Raise :class:`ValidationError` unless ``value`` satisfies ``f``."""
    if value is None:
        if f.nullable:
            return
        raise ValidationError(path, "must not be null")
    kind = f.kind
    t = type(value)
    if kind == "string":
        if t is not str:
            raise ValidationError(path, f"must be a string, got {_type_name(value)}")
        if f.max_length is not None and len(value) > f.max_length:
            raise ValidationError(path, f"longer than {f.max_length} characters ({len(value)})")
        if f.enum is not None and value not in f.enum:
            raise ValidationError(path, f"must be one of {', '.join(f.enum)}; got {value!r}")
    elif kind == "number" or kind == "integer":
        if t is bool or (t is not int and t is not float) or (kind == "integer" and t is float):
            want = "an integer" if kind == "integer" else "a number"
            raise ValidationError(path, f"must be {want}, got {_type_name(value)}")
        if t is float and not math.isfinite(value):
            raise ValidationError(path, f"must be finite, got {value}")
        if f.minimum is not None and value < f.minimum:
            raise ValidationError(path, f"must be >= {f.minimum:g}, got {value}")
        if f.maximum is not None and value > f.maximum:
            raise ValidationError(path, f"must be <= {f.maximum:g}, got {value}")
    elif kind == "boolean":
        if t is not bool:
            raise ValidationError(path, f"must be true or false, got {_type_name(value)}")
    elif kind == "map":
        if t is not dict:
            raise ValidationError(path, f"must be an object, got {_type_name(value)}")
        if f.max_entries is not None and len(value) > f.max_entries:
            raise ValidationError(path, f"has {len(value)} entries; at most {f.max_entries}")
        assert f.values is not None
        for k, v in value.items():
            if not k:
                raise ValidationError(path, "keys must be non-empty strings")
            validate(f.values, v, f"{path}.{k}")
    elif kind == "record":
        assert f.values is not None
        validate(f.values, value, path)
    elif kind == "list":
        if t is not list:
            raise ValidationError(path, f"must be an array, got {_type_name(value)}")
        if f.max_entries is not None and len(value) > f.max_entries:
            raise ValidationError(path, f"has {len(value)} items; at most {f.max_entries}")
        assert f.values is not None
        for i, v in enumerate(value):
            validate(f.values, v, f"{path}[{i}]")
    elif kind == "object" and t is not dict:
        raise ValidationError(path, f"must be an object, got {_type_name(value)}")
    if f.const is not None and value != f.const:
        raise ValidationError(path, f"must be {f.const!r}, got {value!r}")


def validate(rec: Record, obj: Any, prefix: str = "") -> None:
    """Check ``obj`` against ``rec``; raise :class:`ValidationError` naming the field."""
    where = prefix or "(record)"
    if not isinstance(obj, Mapping):
        raise ValidationError(where, f"must be a JSON object, got {_type_name(obj)}")
    dot = f"{prefix}." if prefix else ""
    for f in rec.fields:
        if f.name in obj:
            check_value(f, obj[f.name], dot + f.name)
        elif f.required:
            raise ValidationError(dot + f.name, "is required but missing")
    if not rec.additional:
        for k in obj:
            if k not in rec._by_name:
                raise ValidationError(dot + str(k), f"is not a field of {rec.title}")


def _field_schema(f: Field) -> dict[str, Any]:
    s: dict[str, Any] = {"description": f.description}
    jt = _JSON_TYPE[f.kind]
    s["type"] = [jt, "null"] if f.nullable else jt
    if f.enum is not None:
        s["enum"] = list(f.enum) + ([None] if f.nullable else [])
    if f.const is not None:
        s["const"] = f.const
    if f.minimum is not None:
        s["minimum"] = f.minimum
    if f.maximum is not None:
        s["maximum"] = f.maximum
    if f.max_length is not None:
        s["maxLength"] = f.max_length
    if f.kind == "map":
        assert f.values is not None
        s["additionalProperties"] = _object_schema(f.values)
        s["propertyNames"] = {"minLength": 1}
        if f.max_entries is not None:
            s["maxProperties"] = f.max_entries
    elif f.kind == "record":
        assert f.values is not None
        nested = _object_schema(f.values)
        nested.pop("type")
        s.update(nested)
        s["description"] = f.description
    elif f.kind == "list":
        assert f.values is not None
        s["items"] = _object_schema(f.values)
        if f.max_entries is not None:
            s["maxItems"] = f.max_entries
    return s


def _object_schema(rec: Record) -> dict[str, Any]:
    return {
        "type": "object",
        "title": rec.title,
        "description": rec.description,
        "properties": {f.name: _field_schema(f) for f in rec.fields},
        "required": [f.name for f in rec.fields if f.required],
        "additionalProperties": rec.additional,
    }


def json_schema(rec: Record) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of ``rec``."""
    s = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://tierstream.dev/schemas/{rec.name}.v{rec.version}.json",
    }
    s.update(_object_schema(rec))
    return s
