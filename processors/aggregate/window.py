"""Window arithmetic: which tumbling or hopping window(s) an event belongs to.

Pure functions. Windows are aligned to the Unix epoch: a window of size ``s``
starting at ``start`` covers ``start <= ts < start + s``. Sizes and steps are
whole seconds, so window starts are exact integers and the live agents and
the offline replay always agree on boundaries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def _check(size_s: int, name: str = "size_s") -> None:
    if type(size_s) is not int or size_s <= 0:
        raise ValueError(f"{name} must be a positive whole number of seconds, got {size_s!r}")


def window_start(ts: float, size_s: int) -> int:
    """Start (epoch seconds) of the tumbling window of ``size_s`` holding ``ts``."""
    _check(size_s)
    return int(ts // size_s) * size_s


def hopping_windows(ts: float, size_s: int, step_s: int) -> list[int]:
    """Starts of every hopping window ``(size_s, step_s)`` holding ``ts``, ascending.

    Windows start at every multiple of ``step_s``; ``ts`` belongs to the window
    starting at ``s`` when ``s <= ts < s + size_s``. With ``step_s == size_s``
    this is the one tumbling window; with ``size_s = 60, step_s = 10`` an event
    belongs to six windows.
    """
    _check(size_s)
    _check(step_s, "step_s")
    last = int(ts // step_s) * step_s
    starts = []
    s = last
    while ts < s + size_s:
        starts.append(s)
        s -= step_s
    starts.reverse()
    return starts


def split_by_window(
    events: Iterable[Mapping[str, Any]], size_s: int
) -> dict[int, list[Mapping[str, Any]]]:
    """Group a batch of events by tumbling window start (insertion order kept)."""
    _check(size_s)
    out: dict[int, list[Mapping[str, Any]]] = {}
    for ev in events:
        start = int(ev["ts"] // size_s) * size_s
        bucket = out.get(start)
        if bucket is None:
            out[start] = [ev]
        else:
            bucket.append(ev)
    return out
