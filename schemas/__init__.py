"""The event contract: records, validation, wire format, names and partitioning.

This package imports nothing else of tierstream; everything else imports it.
"""

from .access import (
    ACCESS_RECORD,
    EVENT_TYPE,
    SCHEMA_VERSION,
    AccessEvent,
    TierAttempt,
    fingerprint,
    normalize_query,
    validate_access,
)
from .errors import TierstreamError, ValidationError, WireFormatError
from .partition import access_key, murmur2, partition_for

__all__ = [
    "ACCESS_RECORD",
    "EVENT_TYPE",
    "SCHEMA_VERSION",
    "AccessEvent",
    "TierAttempt",
    "TierstreamError",
    "ValidationError",
    "WireFormatError",
    "access_key",
    "fingerprint",
    "murmur2",
    "normalize_query",
    "partition_for",
    "validate_access",
]
