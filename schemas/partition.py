"""Which partition a key goes to: one function for the Publisher and the transport.

The rule is Kafka's default partitioner, which is also what Faust uses with
its Kafka drivers, so a Faust app moved to ``redis://`` keeps its keys on the
same partitions:

    partition = (murmur2(key) & 0x7FFFFFFF) % partitions

``murmur2`` is the 32-bit MurmurHash2 of the Java client
(``org.apache.kafka.common.utils.Utils.murmur2``, seed ``0x9747B28C``) over
the key's bytes. For MEMORY_TIER_ACCESS events the key is the ASCII query
fingerprint (:func:`access_key`), so all accesses to one query land on one
partition and per-partition heavy-hitter counts are disjoint.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
#: little-endian 32-bit word unpackers, by the byte length they cover
_STRUCTS: dict[int, struct.Struct] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` as an unsigned 32-bit value (as aiokafka returns it)."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    n4 = length & ~3
    m = _M
    mask = _MASK
    words = _STRUCTS.get(n4)
    if words is None:
        words = _STRUCTS[n4] = struct.Struct(f"<{n4 >> 2}I")
    for k in words.unpack_from(data):
        k = (k * m) & mask
        k ^= k >> 24
        h = ((h * m) & mask) ^ ((k * m) & mask)
    extra = length & 3
    if extra >= 3:
        h ^= data[n4 + 2] << 16
    if extra >= 2:
        h ^= data[n4 + 1] << 8
    if extra >= 1:
        h ^= data[n4]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """Partition of ``key`` among ``partitions`` partitions (Kafka's default rule)."""
    if partitions <= 0:
        raise ValueError(f"partitions must be positive, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def access_key(event: Mapping[str, Any]) -> bytes:
    """The partitioning key of a MEMORY_TIER_ACCESS event: its query fingerprint."""
    return str(event["query_fingerprint"]).encode()
