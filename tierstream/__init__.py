"""tierstream: telemetry and advice for tiered AI-agent memory.

The layers live in top-level folders mapped into this namespace:
``tierstream.schemas``, ``tierstream.producers``, ``tierstream.processors``,
``tierstream.sinks``.
"""

__version__ = "0.1.0"
