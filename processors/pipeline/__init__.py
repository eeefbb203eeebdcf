"""The windowed pipeline: access events -> per-partition partials -> WindowSummary records.

Two pure, I/O-free state machines are shared by the live Faust app and by
``tierstream replay``, so both give the same numbers for the same events:

- :class:`.partition.PartitionWindows` (one per access-topic partition):
  open base windows, closing by event time and (when caught up) wall clock,
  late-event policy, recovery marks;
- :class:`.merger.WindowMerger` (one per app): partials in, tumbling and
  hopping WindowSummary records out, partials replaced when re-sent.

The live app is :mod:`.app` (``faust -A tierstream.processors.pipeline.app
worker`` or ``tierstream worker``); the offline one is :mod:`.replay`.
"""

from .config import PipelineConfig
from .decode import BadEvent, decode_entry_events
from .merger import HOPPING, TUMBLING, WindowMerger
from .partition import Partial, PartitionWindows

__all__ = [
    "HOPPING",
    "TUMBLING",
    "BadEvent",
    "Partial",
    "PartitionWindows",
    "PipelineConfig",
    "WindowMerger",
    "decode_entry_events",
]
