"""Compiled validity checks: the verdict of :func:`spec.validate`, several times faster.

A worker validates every event it aggregates, so validation is on the hot
path. :func:`compile_check` turns a :class:`~.spec.Record` into a Python
function (generated source, compiled once) that returns ``True`` when the
object is valid and ``False`` otherwise, with no error message and no
per-field function calls.

The compiled check only ever *accepts* what :func:`spec.validate` accepts
(tests mutate valid events field by field to hold it to that). It may
reject more cheaply than it explains: callers that need the reason call the
reference validator on the rejected object (:func:`.access.check_access_batch`
does), so verdicts and messages are always the reference's.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from typing import Any

from .spec import Field, Record

#: ``Field.kind`` codes of the C checker (``tierstream/_native.c``, enum ``K_*``).
NATIVE_KINDS = ("string", "number", "integer", "boolean", "map", "record", "list", "object")

_MISSING = object()


class _Gen:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {"_isfinite": math.isfinite, "_type": type, "_len": len}
        self.n = 0
        #: top-level field name -> the variable holding its value (for ``tail``)
        self.binds: dict[str, str] = {}

    def const(self, value: Any) -> str:
        self.n += 1
        name = f"_c{self.n}"
        self.consts[name] = value
        return name

    def var(self) -> str:
        self.n += 1
        return f"_v{self.n}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


def _check_value(g: _Gen, f: Field, v: str, ind: int) -> None:
    """Emit lines that ``return False`` unless the non-null value ``v`` satisfies ``f``."""
    k = f.kind
    if k == "string":
        g.emit(ind, f"if _type({v}) is not str: return False")
        if f.max_length is not None:
            g.emit(ind, f"if _len({v}) > {f.max_length}: return False")
        if f.enum is not None:
            g.emit(ind, f"if {v} not in {g.const(frozenset(f.enum))}: return False")
    elif k in ("number", "integer"):
        lo = None if f.minimum is None else g.const(f.minimum)
        hi = None if f.maximum is None else g.const(f.maximum)
        if k == "integer":
            g.emit(ind, f"if _type({v}) is not int: return False")
        else:
            t = g.var()
            g.emit(ind, f"{t} = _type({v})")
            g.emit(ind, f"if {t} is not float and {t} is not int: return False")
            if lo is None or hi is None:
                # both bounds reject NaN and infinities by themselves
                g.emit(ind, f"if {t} is float and not _isfinite({v}): return False")
        if lo is not None and hi is not None:
            g.emit(ind, f"if not ({lo} <= {v} <= {hi}): return False")
        elif lo is not None:
            g.emit(ind, f"if {v} < {lo}: return False")
        elif hi is not None:
            g.emit(ind, f"if {v} > {hi}: return False")
    elif k == "boolean":
        g.emit(ind, f"if _type({v}) is not bool: return False")
    elif k == "object":
        g.emit(ind, f"if _type({v}) is not dict: return False")
    elif k == "map":
        assert f.values is not None
        g.emit(ind, f"if _type({v}) is not dict: return False")
        if f.max_entries is not None:
            g.emit(ind, f"if _len({v}) > {f.max_entries}: return False")
        kk, vv = g.var(), g.var()
        g.emit(ind, f"for {kk}, {vv} in {v}.items():")
        g.emit(ind + 1, f"if not {kk}: return False")
        _check_record(g, f.values, vv, ind + 1)
    elif k == "record":
        assert f.values is not None
        _check_record(g, f.values, v, ind)
    elif k == "list":
        assert f.values is not None
        g.emit(ind, f"if _type({v}) is not list: return False")
        if f.max_entries is not None:
            g.emit(ind, f"if _len({v}) > {f.max_entries}: return False")
        item = g.var()
        g.emit(ind, f"for {item} in {v}:")
        _check_record(g, f.values, item, ind + 1)
    else:  # pragma: no cover - Kind is closed
        raise ValueError(f"unknown field kind {k!r}")
    if f.const is not None:
        c = g.const(f.const)
        tc = g.const(type(f.const))
        # the reference compares with != after the type checks above
        g.emit(ind, f"if {v} != {c} or _type({v}) is not {tc}: return False")


def _check_record(g: _Gen, rec: Record, o: str, ind: int, top: bool = False) -> None:
    """Emit the checks of record ``rec`` on the object in variable ``o`` (inline;
    a missing required key raises KeyError, which the function turns into False).
    ``top``: record each field's variable in ``g.binds``."""
    g.emit(ind, f"if _type({o}) is not dict: return False")
    if not rec.additional:
        g.emit(ind, f"if not {o}.keys() <= {g.const(frozenset(rec._by_name))}: return False")
    for f in rec.fields:
        v = g.var()
        if top:
            g.binds[f.name] = v
        if f.required:
            g.emit(ind, f"{v} = {o}[{f.name!r}]")
        else:
            g.emit(ind, f"{v} = {o}.get({f.name!r})")
        if f.nullable or not f.required:
            if not f.nullable:
                # optional but not nullable: absent is fine, an explicit null is not
                g.emit(ind, f"if {v} is None and {f.name!r} in {o}: return False")
            g.emit(ind, f"if {v} is not None:")
            _check_value(g, f, v, ind + 1)
        else:
            _check_value(g, f, v, ind)


def compile_check(rec: Record, tail: str | None = None) -> Callable[[Any], bool]:
    """A function ``check(obj) -> bool``: ``True`` only if ``spec.validate(rec, obj)``
    would accept ``obj`` (it rejects any non-``dict`` mapping; ask the reference).

    ``tail``: Python statements run once every field check has passed, in the
    same function (no second call per object), which must ``return`` the
    verdict; ``{name}`` in them stands for the value of top-level field
    ``name`` (already loaded), a ``KeyError`` they raise means ``False``.
    """
    g = _Gen()
    body = _Gen()
    body.n = g.n
    body.consts = g.consts
    _check_record(body, rec, "o", 2, top=True)
    names = sorted(g.consts)
    g.emit(0, "def check(o, " + ", ".join(f"{n}={n}" for n in names) + "):")
    g.emit(1, "try:")
    g.lines.extend(body.lines)
    if tail is not None:
        for line in textwrap.dedent(tail.format_map(body.binds)).strip().splitlines():
            g.emit(2, line)
    g.emit(1, "except KeyError:")
    g.emit(2, "return False")
    g.emit(1, "return True")
    source = "\n".join(g.lines)
    namespace = dict(g.consts)
    exec(compile(source, f"<check {rec.name}>", "exec"), namespace)
    check: Callable[[Any], bool] = namespace["check"]
    check.__doc__ = f"True when the object is a valid {rec.title} (compiled from its spec)."
    return check


def native_plan(rec: Record) -> tuple[Any, ...]:
    """``rec`` as the nested tuples the C checker compiles (``_native.compile_plan``):
    ``(additional, frozenset(names), fields)``, each field ``(name, kind code,
    required, nullable, max_length, enum, minimum, maximum, const, values,
    max_entries)``. The C checker follows :func:`compile_check`'s verdicts."""
    fields = tuple(
        (
            f.name,
            NATIVE_KINDS.index(f.kind),
            f.required,
            f.nullable,
            f.max_length,
            None if f.enum is None else frozenset(f.enum),
            f.minimum,
            f.maximum,
            f.const,
            None if f.values is None else native_plan(f.values),
            f.max_entries,
        )
        for f in rec.fields
    )
    return (rec.additional, frozenset(rec._by_name), fields)
