"""The pure aggregation core: mergeable per-window aggregates of access events.

No Faust, no I/O, no asyncio: the same code runs live in the Faust agents
(one partial per partition per window, merged per window) and offline in
``replay``, so both give the same numbers for the same events.

- :mod:`.window`: tumbling and hopping window arithmetic.
- :mod:`.batch`: the single pass over a batch that every aggregator consumes.
- :mod:`.counts`: hits, misses, errors, hit rates, tier shares (exact).
- :mod:`.latency`: HDR histograms per tier and end to end (< 0.1% error).
- :mod:`.heavy`: hot queries, bounded and mergeable (overestimate <= N/k).
- :mod:`.cost`: cost per tier and its daily projection (exact).
- :mod:`.window_aggregate`: all of them for one window -> WindowSummary.
"""

from .batch import Batch, group_batch
from .cost import CostAggregator
from .counts import AccessCounts
from .heavy import HeavyHitters
from .latency import LatencyAggregator, LatencyHistogram
from .window import hopping_windows, split_by_window, window_start
from .window_aggregate import WindowAggregate

__all__ = [
    "AccessCounts",
    "Batch",
    "CostAggregator",
    "HeavyHitters",
    "LatencyAggregator",
    "LatencyHistogram",
    "WindowAggregate",
    "group_batch",
    "hopping_windows",
    "split_by_window",
    "window_start",
]
