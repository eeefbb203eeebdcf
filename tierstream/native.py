"""The optional C hot path (``tierstream/_native.c``), or ``None``.

``pip install -e .`` builds ``tierstream._native`` with the machine's C
compiler (it is an optional extension: without a compiler the install still
succeeds). Every function in it has a pure-Python twin in the package, with
the same results, which is used when the module is missing or when the
environment sets ``TIERSTREAM_NATIVE=0`` (the tests run both and compare).
:data:`ext` is the module, or ``None`` when the Python twins are in use.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("TIERSTREAM_NATIVE", "1") == "0":
        return None
    try:
        return importlib.import_module("tierstream._native")
    except ImportError:
        return None


ext: ModuleType | None = _load()


def describe() -> str:
    """One line for logs: which hot path this process uses."""
    if ext is not None:
        return "native (C) aggregation hot path"
    if os.environ.get("TIERSTREAM_NATIVE", "1") == "0":
        return "pure-Python aggregation hot path (TIERSTREAM_NATIVE=0)"
    return "pure-Python aggregation hot path (tierstream._native is not built)"
