"""Lua scripts of the redis:// consumer group: membership and fencing.

Responsible for every check that must be atomic in Redis: heartbeats and
expiry, the leader lease, publishing a generation, the hand-over of
partitions, and the *fenced* writes (commits, changelog entries, changelog
trims) that only the current owner of a partition may make.

Times: every script that needs "now" reads ``TIME`` on the Redis server and
every expiry is in Redis (zset scores in server milliseconds, ``PX``
leases). No worker's clock is ever compared with another's, so clock skew
cannot make two owners.

Owner tokens: hash ``owners`` maps ``<topic>:<partition>`` to
``<generation>:<member>``. It changes only in :data:`TICK` at a hand-over,
which happens once every member that held partitions in the previous
hand-over has acknowledged the new generation (it revoked: committed and
flushed) or has expired. A fenced write compares the writer's token with the
current one inside the same script, so a write is either made by the owner
or refused: never interleaved with a hand-over.

Single Redis only: the scripts touch keys of different hash slots (group
keys, commit hash, streams), which Redis Cluster does not allow.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from ...schemas.errors import TierstreamError


class FencedError(TierstreamError):
    """A write was refused: this worker no longer owns the partition.

    The worker must drop its partitions and rejoin its group (it does so on
    its own); the write is made by the new owner after it resumed from the
    last commit."""

    def __init__(self, what: str, field: str, owner: str | None) -> None:
        self.field = field
        self.owner = owner
        super().__init__(
            f"{what} for {field} refused: the partition is owned by {owner or 'nobody'} "
            f"(this worker was fenced out after a rebalance; it rejoins)"
        )


#: One heartbeat of ``member``. KEYS: members, meta, state, acks, leader,
#: owners, next-owners. ARGV: member, session ms, metadata, "1" if the
#: metadata changed. Returns {was_alive, generation, handed_over, leader,
#: revision, revision_seen_by_newest_generation, alive members if the caller
#: leads else {}, server ms}.
TICK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member, session = ARGV[1], tonumber(ARGV[2])
local score = redis.call('ZSCORE', KEYS[1], member)
local was_alive = 0
if score and tonumber(score) > now then was_alive = 1 end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #dead > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, m in ipairs(dead) do
    if m ~= member then redis.call('HDEL', KEYS[2], m) end
  end
  redis.call('HINCRBY', KEYS[3], 'rev', 1)
end
redis.call('ZADD', KEYS[1], now + session, member)
if was_alive == 0 or ARGV[4] == '1' then
  redis.call('HSET', KEYS[2], member, ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'rev', 1)
end
local leader = redis.call('GET', KEYS[5])
if not leader then
  redis.call('SET', KEYS[5], member, 'PX', session)
  leader = member
elseif leader == member then
  redis.call('PEXPIRE', KEYS[5], session)
end
local st = redis.call('HMGET', KEYS[3], 'gen', 'done', 'holders', 'seen', 'members')
local gen = tonumber(st[1]) or 0
local done = tonumber(st[2]) or 0
if gen > done then
  local ready = true
  if st[3] then
    for m in string.gmatch(st[3], '%S+') do
      if redis.call('SISMEMBER', KEYS[4], m) == 0 and redis.call('ZSCORE', KEYS[1], m) then
        ready = false
        break
      end
    end
  end
  if ready then
    redis.call('DEL', KEYS[6])
    if redis.call('EXISTS', KEYS[7]) == 1 then redis.call('COPY', KEYS[7], KEYS[6]) end
    redis.call('HSET', KEYS[3], 'done', gen, 'holders', st[5] or '')
    done = gen
  end
end
local rev = tonumber(redis.call('HGET', KEYS[3], 'rev')) or 0
local alive = {}
if leader == member then alive = redis.call('ZRANGE', KEYS[1], 0, -1) end
return {was_alive, gen, done, leader, rev, tonumber(st[4]) or -1, alive, now}
"""

#: The leader publishes generation ``expected + 1``. KEYS: state, acks,
#: leader, assign, next-owners. ARGV: member, expected generation, revision
#: seen, members (space separated), n, n x (member, assignment), then
#: (field, owner member) pairs. Returns the new generation, 0 if refused
#: (not the leader any more, or someone published first).
PUBLISH = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen')) or 0
if gen ~= tonumber(ARGV[2]) then return 0 end
gen = gen + 1
redis.call('DEL', KEYS[2], KEYS[4], KEYS[5])
local n = tonumber(ARGV[5])
local i = 6
for _ = 1, n do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  redis.call('HSET', KEYS[5], ARGV[i], gen .. ':' .. ARGV[i + 1])
  i = i + 2
end
redis.call('HSET', KEYS[1], 'gen', gen, 'members', ARGV[4], 'seen', ARGV[3])
return gen
"""

#: ``member`` revoked everything for generation ARGV[2]. KEYS: state, acks.
ACK = """
if tonumber(redis.call('HGET', KEYS[1], 'gen')) ~= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

#: KEYS: state, assign. ARGV: member. Returns {generation, handed_over, assignment or false}.
FETCH = """
local st = redis.call('HMGET', KEYS[1], 'gen', 'done')
return {tonumber(st[1]) or 0, tonumber(st[2]) or 0, redis.call('HGET', KEYS[2], ARGV[1])}
"""

#: A member leaves. KEYS: members, meta, state, leader. ARGV: member.
LEAVE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then redis.call('HINCRBY', KEYS[3], 'rev', 1) end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
return 1
"""

#: Fenced commit. KEYS: owners, commits. ARGV: token, then (field, offset)
#: pairs. Returns {1} or {0, field, current owner}.
COMMIT = """
for i = 2, #ARGV, 2 do
  local owner = redis.call('HGET', KEYS[1], ARGV[i])
  if owner ~= ARGV[1] then return {0, ARGV[i], owner or ''} end
end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return {1}
"""

#: Fenced ``XADD <stream> 0-* ...``. KEYS: owners, stream. ARGV: field,
#: token, then the entry's field/value pairs. Returns the id, or an error
#: starting with FENCED.
XADD = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner ~= ARGV[2] then
  return redis.error_reply('FENCED ' .. ARGV[1] .. ' ' .. (owner or ''))
end
return redis.call('XADD', KEYS[2], '0-*', unpack(ARGV, 3))
"""

#: Fenced ``XTRIM <stream> MINID <id>``. KEYS: owners, stream. ARGV: field,
#: token, min id. Returns the number of entries removed, or a FENCED error.
TRIM = """
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if owner ~= ARGV[2] then
  return redis.error_reply('FENCED ' .. ARGV[1] .. ' ' .. (owner or ''))
end
return redis.call('XTRIM', KEYS[2], 'MINID', ARGV[3])
"""

#: Prefix of the error a fenced script returns.
FENCED_PREFIX = "FENCED"


def fenced_owner(error: BaseException) -> tuple[str, str] | None:
    """``(field, owner)`` if ``error`` is a fenced script's refusal, else None."""
    text = str(error)
    if not text.startswith(FENCED_PREFIX):
        return None
    parts = text.split(" ", 2)
    return parts[1] if len(parts) > 1 else "", parts[2] if len(parts) > 2 else ""


class Scripts:
    """The scripts registered on one client (``EVALSHA``, loaded on demand)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.tick: AsyncScript = client.register_script(TICK)
        self.publish: AsyncScript = client.register_script(PUBLISH)
        self.ack: AsyncScript = client.register_script(ACK)
        self.fetch: AsyncScript = client.register_script(FETCH)
        self.leave: AsyncScript = client.register_script(LEAVE)
        self.commit: AsyncScript = client.register_script(COMMIT)
        self.xadd: AsyncScript = client.register_script(XADD)
        self.trim: AsyncScript = client.register_script(TRIM)


def as_str(value: Any) -> str:
    """A script's reply element (bytes or str) as str."""
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)
