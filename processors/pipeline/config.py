"""Window settings of the pipeline, shared by the live app and ``replay``.

A frozen value object, built at the edge (the app module, the CLI) from
:class:`tierstream.settings.Settings` and passed in; nothing here reads the
environment. Both views are assembled from *base* windows of
``base_s = gcd(window_s, hop_size_s, hop_step_s)`` seconds, aligned to the
epoch, so every tumbling and every hopping window is a whole number of base
windows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..aggregate.heavy import DEFAULT_CAPACITY, DEFAULT_TOP


def _whole(name: str, value: int) -> None:
    if type(value) is not int or value <= 0:
        raise ValueError(f"{name} must be a positive whole number of seconds, got {value!r}")


@dataclass(frozen=True)
class PipelineConfig:
    """Window sizes, closing rules, hot-query capacity and prices."""

    #: tumbling window length, s
    window_s: int = 60
    #: hopping view: window length and step, s (``hop_size_s == hop_step_s`` is tumbling)
    hop_size_s: int = 300
    hop_step_s: int = 60
    #: wall-clock wait after a base window's end before a caught-up partition closes it, s
    grace_s: float = 5.0
    #: out-of-orderness allowed in event time: an event with ``ts >= end + lateness_s``
    #: closes every window ending at or before ``end``, s
    lateness_s: float = 5.0
    #: a base window with partials from some partitions is merged anyway after this
    #: long (wall clock) even if other partitions never report, s
    merge_timeout_s: float = 60.0
    #: partitions of the access topic
    partitions: int = 8
    #: heavy-hitter capacity k (counts are at most N/k above the truth)
    capacity: int = DEFAULT_CAPACITY
    #: hot queries listed per summary
    top: int = DEFAULT_TOP
    #: price of one access per tier (missing tiers cost 0)
    costs: Mapping[str, float] = field(default_factory=dict)
    #: an event whose ``ts`` is more than this ahead of its entry's producer
    #: timestamp is dead-lettered (it would close windows early), s
    max_ahead_s: float = 300.0

    def __post_init__(self) -> None:
        _whole("window_s", self.window_s)
        _whole("hop_size_s", self.hop_size_s)
        _whole("hop_step_s", self.hop_step_s)
        if self.hop_step_s > self.hop_size_s:
            raise ValueError(
                f"hop_step_s ({self.hop_step_s}) must not exceed hop_size_s ({self.hop_size_s})"
            )
        if self.grace_s < 0 or self.lateness_s < 0 or self.merge_timeout_s <= 0:
            raise ValueError("grace_s and lateness_s must be >= 0, merge_timeout_s > 0")
        if not self.max_ahead_s > 0:
            raise ValueError(f"max_ahead_s must be > 0, got {self.max_ahead_s!r}")
        if self.partitions < 1 or self.capacity < 1 or self.top < 1:
            raise ValueError("partitions, capacity and top must be >= 1")

    @property
    def base_s(self) -> int:
        """Length of the base windows every view is built from."""
        return math.gcd(self.window_s, self.hop_size_s, self.hop_step_s)

    @property
    def retention_s(self) -> int:
        """How long the merger keeps merged base windows (for hopping views and
        revisions): twice the longest view."""
        return 2 * max(self.window_s, self.hop_size_s)
