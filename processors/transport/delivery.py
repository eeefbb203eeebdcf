"""The delivery loop of the redis:// consumer: Faust's, made fast.

Responsible for moving fetched messages into Faust (``_drain_messages``) and
for waiting for the next fetch (``_wait_next_records``). Both are Faust's own
code (``faust.transport.consumer.Consumer`` of faust-streaming 0.15) with two
changes that made consuming through the transport ~3x faster:

* each message's delivery callback is started eagerly (:mod:`.eager`) and
  only raced against ``suspend_flow`` in a task if it actually has to wait;
  Faust wrapped every message in ``Service.wait_first`` (four tasks each);
* with every partition paused because agent buffers are full, it waits for a
  buffer to drain instead of sleeping a whole second.

then two that took the garbage collector out of the picture (consume
0.77 -> 0.91 of Faust's in-memory channel; see :mod:`.pacing`):

* a fetch is made into messages 100 at a time (``_parse_some``), just
  before they are delivered, not all at once;
* the loop's turn every 100 messages is :meth:`.Pacer.turn`, which waits
  for the agent to take its buffer down to :data:`.pacing.PACE_LEVEL`
  events, instead of one loop turn.

and one for seeking while running: the message whose delivery waits for room
is known (``_delivering``) so that a seek can retire it, and it does not
move the read offset (see ``PositionsConsumer.seek``).

Smaller savings, measured alone (best of 7 timeit runs): the loop walks the
fetched records itself instead of an async generator (~0.2 us a message),
and calls the conductor's per-partition handler directly while the
conductor's index lock is free instead of ``Conductor.on_message``, which
takes and releases that lock around the same lookup (~0.7 us a message);
what only another task can change (a seek, the flow, the generation, the
conductor's lock) is checked once per run of deliveries and again only
after a delivery that waited, not around every message (the loop's own
cost, 0.44 -> 0.31 us a message).

Semantics are Faust's: a delivery that blocks is abandoned when the flow is
suspended (rebalance) or the consumer stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from faust.transport import consumer as faust_consumer
from faust.types import TP, Message

from .client import CONNECTION_ERRORS
from .eager import resumed, start_eagerly
from .pacing import Pacer


class DeliveryLoop(faust_consumer.Consumer):
    """Faust consumer base with the faster delivery loop (abstract)."""

    _buffer_dropped: asyncio.Event
    _epochs: dict[TP, int]
    #: The message whose delivery is waiting for room in a stream buffer.
    _delivering: Message | None = None
    #: The next chunk of a fetch's messages (``FetchingConsumer._parse_some``).
    _parse_some: Callable[[Any, int], Awaitable[list[Any]]]

    def on_buffer_drop(self, tp: TP) -> None:
        super().on_buffer_drop(tp)
        self._buffer_dropped.set()

    async def _wait_next_records(
        self, timeout: float, as_messages: bool = False, lazy: bool = False
    ) -> tuple[Any, set[TP] | None]:
        """Faust's version, except that with every partition paused because
        agent buffers are full it waits for a buffer to drain (or
        ``timeout``) instead of sleeping a whole second, which stalled
        fast pipelines for most of the time."""
        if not self.flow_active:
            await self.wait(self.can_resume_flow)  # type: ignore[arg-type]
        try:
            self.not_waiting_next_records.set()
            active: set[TP] | None = None if self.app.client_only else self._get_active_partitions()
            if active is None or active:
                return await self._getmany(  # type: ignore[call-arg]
                    active, timeout, as_messages=as_messages, lazy=lazy
                ), active
            self._buffer_dropped.clear()
            await self.wait_for_stopped_or(self._buffer_dropped, timeout)
            return {}, active
        finally:
            self.not_waiting_next_records.set()

    async def wait_for_stopped_or(self, event: asyncio.Event, timeout: float) -> None:
        """Wait until ``event`` is set, at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - hot loop
        """Faust's fetch-and-deliver loop with eager delivery (see module doc).

        Per fetch: the records of each partition are turned into messages and
        handed to the conductor one by one, in offset order, as Faust's loop
        does, but without an async generator step per message, and with the
        conductor's per-partition handler called directly while its index
        lock is free (what ``Conductor.on_message`` does, minus taking and
        releasing the free lock). The rest of a partition's records is
        dropped when it is sought, the flow is suspended or the generation
        changes (they are read again).

        The messages between two loop turns (at most ``yield_every``) are
        delivered by one coroutine (``deliver``), started eagerly: it awaits
        the handlers in turn, and only becomes a task, raced against
        ``suspend_flow`` as Faust races each delivery, if one of them has to
        wait. A message that needs the loop's own awaits first (a commit is
        due, or it follows a gap) ends the run and is delivered alone.
        """
        app = self.app
        callback = self.callback
        conductor: Any = app.topics
        # The conductor's own handler map (what ``conductor.on_message`` looks
        # up under ``_tp_to_callback_lock``); not in client-only mode, whose
        # ``on_message`` maps every message to partition 0.
        direct = not app.client_only and callback is getattr(conductor, "on_message", None)
        handlers: dict[TP, Any] = conductor._tp_to_callback if direct else {}
        # (not direct: no handlers, so always ``callback``; a lock never held)
        lock: asyncio.Lock = conductor._tp_to_callback_lock if direct else asyncio.Lock()
        wait_next_records = self._wait_next_records
        highwater = self.highwater
        track = app.monitor.track_tp_end_offset
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offsets = self._read_offset
        get_read_offset = read_offsets.__getitem__
        set_read_offset = read_offsets.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = app.topics.acks_enabled_for
        epochs = self._epochs
        get_epoch = epochs.get
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        # The turn every ``yield_every`` messages; waits for agents that are
        # far behind (see .pacing). Not in client-only mode (no handler map).
        pacer = Pacer(conductor, yield_every) if direct else None
        parse_some = self._parse_some
        consumer = self
        #: where the last ``deliver`` run stopped (it may finish in a task)
        progress = [0]

        get_handler = handlers.get
        lock_held = lock.locked

        def handler_for(tp: TP) -> Any:
            # The index lock is held (or wanted) while the conductor rebuilds
            # its handler map: then go through ``on_message``, which waits.
            if lock_held() or lock._waiters:
                return callback
            return get_handler(tp) or callback

        def unchanged(tp: TP, epoch: Any, generation_id: int) -> bool:
            """Not sought, flow not suspended and not rebalanced since the fetch."""
            return (
                get_epoch(tp) == epoch
                and consumer.flow_active
                and app.consumer_generation_id == generation_id
            )

        async def deliver(
            tp: TP, batch: list[Any], i: int, end: int, epoch: Any, generation_id: int
        ) -> None:
            """Deliver ``batch[i:end]``; ``progress[0]`` is then the index of
            the first record not delivered: ``end``, unless the partition was
            sought, the flow suspended or the generation changed, or record
            ``i`` follows a gap or a commit is due before it.

            Only another task can seek, suspend the flow, rebalance or take
            the conductor's index lock, and no other task runs unless a
            delivery waits: those are checked at the start and after a
            delivery that waited (``resumed`` moved; this coroutine is only
            run by ``start_eagerly``), not around every message."""
            checked = -1
            r_offset: int | None = None
            handler: Any = callback
            while i < end:
                if resumed[0] != checked:
                    if not unchanged(tp, epoch, generation_id):
                        progress[0] = i  # sought, suspended or rebalanced: re-read later
                        return
                    handler = handler_for(tp)
                    r_offset = get_read_offset(tp)
                    checked = resumed[0]
                message = batch[i]
                offset = message.offset
                if r_offset is not None and offset < r_offset:
                    i += 1  # below the read offset (Faust drops it, too)
                    continue
                if (r_offset and offset - r_offset > 1) or (
                    commit_every is not None and consumer._n_acked >= commit_every
                ):
                    progress[0] = i  # a gap or a commit first: the loop does both
                    return
                message.generation_id = generation_id
                consumer._delivering = message
                try:
                    await handler(message)
                finally:
                    if consumer._delivering is message:
                        consumer._delivering = None
                i += 1
                if resumed[0] != checked and get_epoch(tp) != epoch:
                    # Sought while this delivery waited for room: the seek
                    # retired the message.
                    progress[0] = i
                    return
                set_read_offset(tp, offset)
                r_offset = offset
            progress[0] = i

        async def deliver_one(tp: TP, message: Message, epoch: Any) -> None:
            """Faust's per-message step, for a message after a gap or when a
            commit is due (what ``deliver`` leaves to the loop)."""
            offset = message.offset
            r_offset = get_read_offset(tp)
            if r_offset is None or offset >= r_offset:
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and acks_enabled_for(message.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                pending = start_eagerly(handler_for(tp)(message))
                if pending is not None:
                    self._delivering = message
                    try:
                        await self.wait_first(pending, self.suspend_flow.wait())
                    finally:
                        self._delivering = None
                    if get_epoch(tp) != epoch:
                        return  # sought while this delivery waited: retired
                set_read_offset(tp, offset)

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(faust_consumer.CONSUMER_FETCHING)
                # As Faust: never loop on fetches without giving the loop a turn.
                await sleep(0)
                # Messages, not records (FetchingConsumer._getmany).
                # Unparsed entries per partition, made into messages a chunk
                # (at most ``yield_every``) at a time (FetchingConsumer._getmany).
                records, _active = await wait_next_records(1.0, True, True)
                if records and not self.should_stop and self.flow_active:
                    generation_id = app.consumer_generation_id
                    # No await since the fetch checked the epochs: these are the fetch's.
                    started = {tp: get_epoch(tp) for tp in records}
                    for tp, unparsed in records.items():
                        track(tp, highwater(tp))
                        epoch = started[tp]
                        stopped = False
                        while not stopped:
                            if num_since_yield >= yield_every:
                                if pacer is not None:
                                    await pacer.turn(tp, records)
                                else:
                                    await sleep(0)
                                num_since_yield = 0
                            if not unchanged(tp, epoch, generation_id):
                                break  # sought, suspended or rebalanced: re-read later
                            try:
                                batch = await parse_some(unparsed, yield_every - num_since_yield)
                            except CONNECTION_ERRORS as exc:
                                # Redis went away while dead-lettering: the
                                # position is after the chunks delivered; the
                                # rest is read again by a later fetch.
                                self.log.warning(
                                    "Dead-lettering in %s failed (%s); will re-read it", tp, exc
                                )
                                break
                            if not batch:
                                break
                            i, n = 0, len(batch)
                            while i < n:
                                if not unchanged(tp, epoch, generation_id):
                                    stopped = True  # sought, suspended or rebalanced
                                    break
                                pending = start_eagerly(
                                    deliver(tp, batch, i, n, epoch, generation_id)
                                )
                                if pending is not None:
                                    # A delivery has to wait: the rest of the run
                                    # is raced against a suspended flow, as Faust
                                    # races every delivery.
                                    await self.wait_first(pending, self.suspend_flow.wait())
                                    if not pending.done():
                                        # Abandoned (wait_first cancels it), as Faust
                                        # abandons a delivery; its offset counts as
                                        # read, as in Faust's loop.
                                        message = self._delivering
                                        self._delivering = None
                                        if message is not None and get_epoch(tp) == epoch:
                                            set_read_offset(tp, message.offset)
                                        stopped = True
                                        break
                                stopped_at = progress[0]
                                num_since_yield += stopped_at - i
                                i = stopped_at
                                if i < n and unchanged(tp, epoch, generation_id):
                                    # A gap or a due commit before record i: Faust's step.
                                    num_since_yield += 1
                                    message = batch[i]
                                    message.generation_id = generation_id
                                    await deliver_one(tp, message, epoch)
                                    i += 1
                        if not self.flow_active or app.consumer_generation_id != generation_id:
                            break
                unset_flag(faust_consumer.CONSUMER_FETCHING)
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(faust_consumer.CONSUMER_FETCHING)
