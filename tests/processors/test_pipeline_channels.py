"""The pipeline app's agents: no two read one stream with the same types but
different serializers.

Faust decodes a message once for all the channels of a partition whose key
and value *types* are equal, with the serializers of whichever channel its
set of channels yields first (``ConductorCompiler.build``, and our conductor,
which keeps that behaviour). Two such channels with different serializers
get each other's decoding depending on that order: the suggest agent (json)
crashed on the alert agent's raw bytes when the order changed.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

from tierstream.processors.pipeline import app as pipeline


def test_agents_on_one_stream_decode_alike_or_differ_in_type() -> None:
    by_stream: dict[str, list[Any]] = defaultdict(list)
    for agent in pipeline.app.agents.values():
        channel = agent.channel
        for name in getattr(channel, "topics", ()):
            by_stream[name].append(channel)
    shared = [name for name, channels in by_stream.items() if len(channels) > 1]
    assert shared, "expected streams read by several agents (the sinks)"
    for name in shared:
        for a, b in combinations(by_stream[name], 2):
            if (a.key_type, a.value_type) == (b.key_type, b.value_type):
                assert (a.key_serializer, a.value_serializer) == (
                    b.key_serializer,
                    b.value_serializer,
                ), (name, a, b)
