"""The wire format of a stream entry: what the redis:// transport and the
Publisher write, and what any producer in any language may write.

A topic ``T`` with ``N`` partitions is ``N`` Redis streams
(:func:`schemas.names.stream_key`). Every entry is appended with

    XADD <stream> 0-* v <value> [k <key>] [t <timestamp-ms>] [h <headers-json>] [n <count>]

``0-*`` makes Redis number entries ``0-1, 0-2, ...`` (Redis >= 7.0); the Faust
offset of entry ``0-s`` is ``s - 1``. An entry written with a plain ``*`` id
breaks the dense numbering and is moved to the topic's dead-letter stream.

Fields (names are single bytes to keep entries small):

``v`` (required)
    The message value, raw bytes. On ``tierstream.access`` it is UTF-8 JSON:
    either one MEMORY_TIER_ACCESS object or an array of them (a batch; batches
    are what make publishing fast, one entry for hundreds of events).
``k`` (optional)
    The message key, raw bytes. Absent means no key. A producer that writes
    a batch of events puts them all on one partition (each event's partition
    is :func:`schemas.partition.partition_for` of its key) and omits ``k``.
``t`` (optional)
    Producer timestamp, integer milliseconds since the epoch, ASCII. Absent:
    the consumer uses the time it read the entry.
``h`` (optional)
    Headers, a JSON object of string to string.
``n`` (optional)
    Number of events in ``v`` when it is a batch (lets tools count without
    decoding).
``z`` (optional)
    Present (value ``1``): the message value is null, not ``v`` (which is then
    empty). Kafka's tombstone: Faust writes one to a table's changelog when a
    key is deleted. Only the redis:// transport writes it.

Any other field is ignored, so the format can grow.
"""

from __future__ import annotations

from typing import Any

import orjson

from .errors import WireFormatError

VALUE, KEY, TIMESTAMP, HEADERS, COUNT = b"v", b"k", b"t", b"h", b"n"

#: Marks a null value (see ``z`` above).
TOMBSTONE = b"z"

#: Entry ids the transport writes: ``0-<sequence>``.
ID_MAJOR = b"0"


def offset_of(entry_id: bytes | str) -> int:
    """Faust offset of a stream entry id ``0-<seq>``; :class:`WireFormatError` otherwise."""
    raw = entry_id if isinstance(entry_id, bytes) else entry_id.encode()
    major, sep, seq = raw.partition(b"-")
    if major != ID_MAJOR or not sep or not seq.isdigit() or int(seq) < 1:
        raise WireFormatError(
            f"entry id {raw.decode(errors='replace')} is not of the form 0-<n>: it was not "
            "written with XADD <stream> 0-* (only the transport and Publisher may write topics)"
        )
    return int(seq) - 1


def entry_id_of(offset: int) -> bytes:
    """Stream entry id of Faust offset ``offset``."""
    return b"0-%d" % (offset + 1)


def encode_entry(
    value: bytes,
    key: bytes | None = None,
    timestamp_ms: int | None = None,
    headers: dict[str, str] | None = None,
    count: int | None = None,
) -> dict[bytes, bytes]:
    """Fields of one stream entry (pass to ``XADD stream 0-* **fields``)."""
    fields: dict[bytes, bytes] = {VALUE: value}
    if key is not None:
        fields[KEY] = key
    if timestamp_ms is not None:
        fields[TIMESTAMP] = b"%d" % timestamp_ms
    if headers:
        fields[HEADERS] = orjson.dumps(headers)
    if count is not None:
        fields[COUNT] = b"%d" % count
    return fields


def decode_entry(
    fields: dict[bytes, bytes],
) -> tuple[bytes | None, bytes, int | None, dict[str, str] | None]:
    """``(key, value, timestamp_ms, headers)`` of an entry; :class:`WireFormatError`
    naming the problem when the entry is not in this format."""
    value = fields.get(VALUE)
    if value is None:
        names = ", ".join(sorted(k.decode(errors="replace") for k in fields)) or "none"
        raise WireFormatError(f"entry has no 'v' (value) field; fields present: {names}")
    ts_raw = fields.get(TIMESTAMP)
    ts: int | None = None
    if ts_raw is not None:
        if not ts_raw.isdigit():
            raise WireFormatError(f"field 't' must be integer milliseconds, got {ts_raw!r}")
        ts = int(ts_raw)
    h_raw = fields.get(HEADERS)
    headers: dict[str, str] | None = None
    if h_raw is not None:
        try:
            decoded = orjson.loads(h_raw)
        except orjson.JSONDecodeError as exc:
            raise WireFormatError(f"field 'h' is not JSON: {exc}") from None
        if not isinstance(decoded, dict):
            raise WireFormatError("field 'h' must be a JSON object of string to string")
        headers = {str(k): str(v) for k, v in decoded.items()}
    return fields.get(KEY), value, ts, headers


def decode_events(value: bytes) -> list[Any]:
    """The events in an access-topic value: one JSON object, or an array of them.

    Returns the decoded objects unvalidated (validate each with
    :func:`schemas.access.validate_access`)."""
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise WireFormatError(f"value is not valid JSON: {exc}") from None
    if isinstance(decoded, list):
        return decoded
    if isinstance(decoded, dict):
        return [decoded]
    raise WireFormatError(
        f"value must be a JSON object or an array of objects, got {type(decoded).__name__}"
    )
