"""Faust messages straight from a fetch, for entries in the producer's own layout.

Responsible for: the fetch's fast path (see ``FetchingConsumer._parse_some``):
entries written as ``v <value> k <key> t <ms>`` or ``v <value> t <ms>``
(:mod:`...schemas.wire`, what our producer writes) with dense offsets become
:class:`~faust.types.ConsumerMessage` objects without a dict or a record per
entry. It runs in C when ``tierstream._native`` is built (:mod:`tierstream.native`;
``messages`` and ``message_plan`` there), else :func:`messages_py`, its
pure-Python twin, which gives the same messages and stops at the same entry.

Faust's ``Message.__init__`` is Python setting 20 slots (~0.7 us of the
~0.8 us per entry the Python loop costs); the C twin makes the object as
``__init__``'s caller does (``tp_new``: the managed ``__dict__`` is set up)
and copies the slots that are the same for the whole partition from a
template message made by ``__init__``. Measured (a 1000-entry stream through
``_parse_some``, median of 200): 0.81 -> 0.15 us per message made (freeing a
message costs ~0.05 us either way); the Python twin 0.85 us.

Both stop at the first entry that is not in the layout, or whose parts are
not what a Redis reply holds (exact ``bytes``, an exact ``int`` field count),
or whose timestamp is not 1 to 15 ASCII digits (exact as a double: the result
is ``int(t) / 1000.0`` bit for bit): the caller's general code takes that
entry and calls again for the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from faust.types import TP, ConsumerMessage

from ...native import ext as _native
from ...schemas.wire import KEY, TIMESTAMP, VALUE

#: ``run(plan, flat, i, n, first_offset, out) -> index of the first entry not made``
Run = Callable[[Any, list[Any], int, int, int, list[Any]], int]

logger = logging.getLogger(__name__)

#: Message types the C twin refused (logged once each).
_refused: set[type] = set()

#: The wire field names, in the order the plans take them.
FIELDS = (VALUE, KEY, TIMESTAMP)

#: Longest timestamp (ASCII digits of ms) the fast path takes: below 2**53, so
#: its division by 1000.0 is the same in C and Python.
MAX_TS_DIGITS = 15


def template(tp: TP, message_type: type[ConsumerMessage] = ConsumerMessage) -> ConsumerMessage:
    """A message of ``tp`` made by its ``__init__``: what every fast-path
    message of the partition has in the slots that do not vary per entry."""
    return message_type(tp.topic, tp.partition, 0, 0.0, 0, None, None, b"", None, 0, 0, tp)


def message_plan_py(template: ConsumerMessage) -> tuple[Any, ...]:
    """The twin of ``_native.message_plan``: what :func:`messages_py` needs."""
    return (type(template), template.topic, template.partition, template.tp, *FIELDS)


def messages_py(
    plan: tuple[Any, ...], flat: list[Any], i: int, n: int, first_offset: int, out: list[Any]
) -> int:
    """Up to ``n`` entries of :data:`.fetching.READ_SCRIPT`'s flat reply from
    ``flat[i]`` (an id) as messages with offsets ``first_offset, ...``,
    appended to ``out``; returns the index of the first entry not made (or
    the index after the ``n``-th). The twin of ``_native.messages``.

    Offsets that would not fit in an int64 (ids go up to ``0-(2**64-1)``)
    make nothing: the index returned is ``i``."""
    if i < 0:
        raise ValueError("messages: negative index")
    if n > 0 and not -(2**63) <= first_offset <= 2**63 - 1 - (n - 1):
        return i
    new_message, topic, partition, tp, f_v, f_k, f_t = plan
    append = out.append
    offset = first_offset
    for _ in range(n):
        at = i + 2
        try:
            nf = flat[i + 1]
            if nf == 6 and type(nf) is int:
                f_value, value, f_key, key, f_ts, ts_raw = flat[at : at + 6]
                # `x is name`: a reply's one-byte bytes are CPython's cached objects
                if not (
                    (f_key is f_k or (type(f_key) is bytes and f_key == f_k)) and type(key) is bytes
                ):
                    break
            elif nf == 4 and type(nf) is int:
                f_value, value, f_ts, ts_raw = flat[at : at + 4]
                key = None
            else:
                break
        except (IndexError, ValueError):  # the reply ends inside the entry
            break
        if not (
            (f_value is f_v or (type(f_value) is bytes and f_value == f_v))
            and (f_ts is f_t or (type(f_ts) is bytes and f_ts == f_t))
            and type(value) is bytes
            and type(ts_raw) is bytes
            and len(ts_raw) <= MAX_TS_DIGITS
            and ts_raw.isdigit()
        ):
            break
        append(
            new_message(
                topic,
                partition,
                offset,
                int(ts_raw) / 1000.0,
                0,
                None,
                key,
                value,
                None,
                len(key) if key is not None else 0,
                len(value),
                tp,
            )
        )
        offset += 1
        i = at + nf
    return i


def fast_run(tp: TP, message_type: type[ConsumerMessage] = ConsumerMessage) -> tuple[Run, Any]:
    """The fast path for ``tp``'s messages: (run, plan), in C when built and
    when the C twin can make ``message_type`` as its ``__init__`` would (else
    it says why, once per type, and the Python twin runs)."""
    model = template(tp, message_type)
    if _native is not None and hasattr(_native, "messages"):
        try:
            return _native.messages, _native.message_plan(model, FIELDS)
        except TypeError as exc:
            if message_type not in _refused:
                _refused.add(message_type)
                logger.warning("Fetched messages are made in Python: %s", exc)
    return messages_py, message_plan_py(model)
