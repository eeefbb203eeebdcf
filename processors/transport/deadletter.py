"""Dead letters: stream entries the transport did not write.

Responsible for moving bad entries of a topic's partition stream to the
topic's dead-letter stream (:func:`names.dead_letter_key`, one unpartitioned
stream per topic, entries ``reason``, ``stream``, ``id`` and then the
original fields) and counting them (:func:`names.dead_letter_count_key`).

Two kinds of bad entry, handled differently:

* **Foreign id** (written with ``XADD key *`` or any id whose major part is
  not 0). Such an entry breaks the dense numbering for good: its id is
  greater than every ``0-N``, so every later ``XADD key 0-*`` fails with
  "ID ... equal or smaller than the target stream top item". Foreign
  entries can therefore only sit at the tail of a stream (after the first
  one only more foreign writes can succeed). :data:`REPAIR_SCRIPT` moves all
  of them to the dead-letter stream, ``XDEL``\\ s them and resets the stream's
  id generator with ``XSETID key 0-N ENTRIESADDED N MAXDELETEDID 0-N``, N the
  last dense sequence, atomically (one Lua call). They never had an offset,
  so offsets stay dense and no commit has to skip anything. Both the
  consumer (on reading one) and the producer (on the XADD error) run it.
* **Dense id, bad fields** (``0-N`` but no ``v`` field, or a malformed
  ``t``/``h``). It owns offset ``N-1``; it is copied to the dead-letter stream
  and left in place, and the consumer treats the offset as consumed so that
  commits move past it. It is not deleted: deleting would punch a hole in
  the offsets. If the worker stops before committing past it, it is
  dead-lettered again after the restart (at-least-once, like everything).
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis

from ...schemas import names

logger = logging.getLogger(__name__)

REASON_FOREIGN_ID = "entry id is not of the form 0-<n> (not written with XADD <stream> 0-*)"

#: KEYS: stream, dead-letter stream, dead-letter counter. ARGV: reason.
#: Returns the number of entries moved.
REPAIR_SCRIPT = """
local stream, dlq, counter, reason = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
if redis.call('EXISTS', stream) == 0 then return 0 end
local foreign = redis.call('XRANGE', stream, '1-0', '+')
for _, entry in ipairs(foreign) do
  local args = {'XADD', dlq, '*', 'reason', reason, 'stream', stream, 'id', entry[1]}
  for _, f in ipairs(entry[2]) do args[#args + 1] = f end
  redis.call(unpack(args))
  redis.call('XDEL', stream, entry[1])
end
local moved = #foreign
if moved > 0 then redis.call('INCRBY', counter, moved) end
local info = redis.call('XINFO', 'STREAM', stream)
local last_id, added = nil, 0
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last_id = info[i + 1] end
  if info[i] == 'entries-added' then added = tonumber(info[i + 1]) end
end
if last_id ~= nil and string.sub(last_id, 1, 2) == '0-' then return moved end
local n
local tail = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
if #tail > 0 then
  n = tonumber(string.sub(tail[1][1], 3))
else
  n = added - moved
  if n < 0 then n = 0 end
end
redis.call('XSETID', stream, '0-' .. n, 'ENTRIESADDED', n, 'MAXDELETEDID', '0-' .. n)
return moved
"""


class DeadLetters:
    """Writes dead letters for one Redis client."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._repair = client.register_script(REPAIR_SCRIPT)

    async def repair_stream(self, topic: str, partition: int) -> int:
        """Move every foreign-id entry of a partition stream to the dead-letter
        stream and make ``XADD 0-*`` work again. Returns how many were moved."""
        key = names.stream_key(topic, partition)
        moved = int(
            await self._repair(
                keys=[key, names.dead_letter_key(topic), names.dead_letter_count_key(topic)],
                args=[REASON_FOREIGN_ID],
            )
        )
        if moved:
            logger.error(
                "Moved %d entries with foreign ids from stream %s to dead-letter "
                "stream %s (they were not written with XADD %s 0-*)",
                moved,
                key,
                names.dead_letter_key(topic),
                key,
            )
        return moved

    async def dead_letter(
        self, topic: str, stream: bytes | str, entry_id: bytes, fields: list[bytes], reason: str
    ) -> None:
        """Copy one bad entry (fields as a flat ``[f1, v1, f2, v2, ...]`` list)
        to the topic's dead-letter stream and count it."""
        stream_s = stream.decode() if isinstance(stream, bytes) else stream
        logger.error(
            "Dead letter: stream %s id %s: %s (moved to %s)",
            stream_s,
            entry_id.decode(errors="replace"),
            reason,
            names.dead_letter_key(topic),
        )
        entry: dict[bytes | str, bytes | str] = {
            "reason": reason,
            "stream": stream_s,
            "id": entry_id,
        }
        # Field names of the original entry are kept as they were; a name
        # that collides with ours ("reason", "stream", "id") is prefixed.
        for i in range(0, len(fields) - 1, 2):
            name = fields[i]
            if name in (b"reason", b"stream", b"id"):
                name = b"orig-" + name
            entry[name] = fields[i + 1]
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xadd(names.dead_letter_key(topic), entry)  # type: ignore[arg-type]
            pipe.incr(names.dead_letter_count_key(topic))
            await pipe.execute()
