"""The consumer group protocol of the redis:// transport: members, leader,
generations, eager hand-over, owner tokens.

Responsible for: telling one member (one worker) when to give up its
partitions and when to take up which ones, so that a partition has at most
one owner at any time and every partition of a live group has one within
about a session timeout. What the assignment *is* (bytes for the members,
the partitions each member owns) is computed by a function the caller gives
(:mod:`.membership` drives Faust's ``PartitionAssignor`` with it); this
module only moves it through Redis. Atomic steps are Lua
(:mod:`.fencing`); every time is the Redis server's.

The protocol (Kafka's classic eager rebalance, on Redis):

1. Every member calls :meth:`GroupMember.poll` every ``interval`` seconds:
   one script that refreshes its heartbeat (expiry = server now + session
   timeout), expires members whose heartbeat is older, renews or takes the
   leader lease (``SET NX PX``), and hands over a published generation when
   it may (step 4). Joining, leaving, expiring or changing metadata bumps the
   group's revision.
2. The lease holder (leader) sees a revision newer than the one the newest
   generation was computed from; it reads the live members' metadata,
   computes every member's assignment and publishes generation ``g + 1``
   (refused unless it still holds the lease and ``g`` is still the newest).
3. A member that sees a generation newer than the one it acknowledged gets
   :class:`Revoke`: it gives up everything (Faust's revoke: commit, flush),
   then calls :meth:`GroupMember.ack`.
4. When every member that held partitions after the previous hand-over has
   acknowledged ``g + 1`` or expired, the owner tokens of ``g + 1``
   (``<generation>:<member>`` per partition) replace the old ones in one
   step. Only then do members get :class:`Assign` with their part.
5. A member that finds out it had expired (its heartbeat came too late:
   stopped, paused, partitioned) gets :class:`Fenced`: whatever it held has
   been or will be handed over; it drops it without committing (its commits
   would be refused anyway) and rejoins as a new member would.

Guarantees: tokens change only at a hand-over; a hand-over needs every
previous holder to have revoked or expired; fenced writes (:mod:`.fencing`)
compare tokens atomically. So a partition's commits and changelog writes
come from one member at a time, whatever the members' clocks say, and a
member that was stopped past its session timeout cannot write for
partitions it lost. A member stopped for less than the session timeout
keeps its partitions (nothing was handed over).

Bounds: a join or a graceful leave is handed over within about
``2 x interval`` plus the time members take to revoke; a crash within the
session timeout plus ``interval``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from ...schemas import names
from .fencing import XADD, FencedError, Scripts, as_str, fenced_owner

logger = logging.getLogger(__name__)

#: A member's assignment: opaque bytes for the member and the partition
#: fields (``<topic>:<partition>``) it alone owns (gets an owner token for).
MemberAssignment = tuple[bytes, Sequence[str]]

#: The leader's function: live members' metadata -> every member's assignment.
Compute = Callable[[Mapping[str, bytes]], Mapping[str, MemberAssignment]]


@dataclass(frozen=True)
class Revoke:
    """Give up every partition (commit and flush first), then :meth:`GroupMember.ack`."""

    generation: int


@dataclass(frozen=True)
class Assign:
    """Take up the partitions of ``payload``; writes carry ``token``."""

    generation: int
    payload: bytes
    token: str


@dataclass(frozen=True)
class Fenced:
    """This member had expired: drop everything without committing; it rejoins."""

    generation: int


Change = Revoke | Assign | Fenced


@dataclass
class GroupKeys:
    """The Redis keys of one group (see :func:`names.group_key`)."""

    group: str
    members: str = field(init=False)
    meta: str = field(init=False)
    state: str = field(init=False)
    acks: str = field(init=False)
    leader: str = field(init=False)
    owners: str = field(init=False)
    next_owners: str = field(init=False)
    assign: str = field(init=False)

    def __post_init__(self) -> None:
        for part in ("members", "meta", "state", "acks", "leader", "owners", "assign"):
            setattr(self, part, names.group_key(self.group, part))
        self.next_owners = names.group_key(self.group, "next-owners")

    def all(self) -> list[str]:
        return [
            self.members,
            self.meta,
            self.state,
            self.acks,
            self.leader,
            self.owners,
            self.next_owners,
            self.assign,
        ]


class GroupMember:
    """One member of a group: heartbeats, leads when it holds the lease, and
    says what its owner must do (:meth:`poll`). Not thread-safe; one task
    calls :meth:`poll`, :meth:`ack` and :meth:`leave`."""

    def __init__(
        self,
        client: aioredis.Redis,
        group: str,
        member_id: str,
        *,
        session_timeout: float,
        interval: float,
        metadata: Callable[[], bytes],
        compute: Compute,
        fenced_topics: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        if not member_id or any(c.isspace() for c in member_id):
            raise ValueError(f"member id must be non-empty without spaces: {member_id!r}")
        if interval <= 0 or session_timeout <= 2 * interval:
            raise ValueError(
                f"session timeout ({session_timeout} s) must exceed twice the heartbeat "
                f"interval ({interval} s)"
            )
        self.client = client
        self.keys = GroupKeys(group)
        self.member_id = member_id
        self.session_ms = int(session_timeout * 1000)
        self.interval = interval
        self._metadata = metadata
        self._compute = compute
        self._scripts = Scripts(client)
        self._fenced_topics_of = fenced_topics
        self._fenced_topics: frozenset[str] | None = None
        self._last_metadata: bytes | None = None
        self._joined = False
        self._acked = 0  # newest generation revoked and acknowledged
        self._taken = 0  # generation whose assignment this member holds (0: none)
        self._last_ok: float | None = None  # monotonic time a successful tick was *sent*
        self.token: str | None = None
        self.leader = False
        self.generation = 0
        #: Called when a fenced write was refused (the owner wakes its poll).
        self.on_refused: Callable[[], None] | None = None

    # --- the owner's view --------------------------------------------------------

    @property
    def holds(self) -> bool:
        """True while this member holds an assignment it took up."""
        return self._taken > 0

    def stale(self, now: float | None = None) -> bool:
        """True unless a heartbeat sent less than ~a session timeout ago was
        answered: the group may already have expired this member, so it must
        not act as an owner or a leader (``app.is_leader()``). Measured on the
        monotonic clock from before the heartbeat was sent, so it turns true
        no later than Redis expires the member."""
        if self._last_ok is None:
            return True
        now = time.monotonic() if now is None else now
        return now - self._last_ok > self.session_ms / 1000.0 - self.interval

    def metadata_changed(self) -> None:
        """Make the next :meth:`poll` send the metadata even if equal."""
        self._last_metadata = None

    # --- the protocol ------------------------------------------------------------

    async def poll(self) -> Change | None:
        """One heartbeat, and the next thing the owner must do (or None)."""
        metadata = self._metadata()
        changed = metadata != self._last_metadata
        sent = time.monotonic()
        k = self.keys
        reply = await self._scripts.tick(
            keys=[k.members, k.meta, k.state, k.acks, k.leader, k.owners, k.next_owners],
            args=[self.member_id, self.session_ms, metadata, "1" if changed else "0"],
        )
        was_alive, gen, done, leader, rev, seen, alive, _now = reply
        self._last_ok = sent
        self._last_metadata = metadata
        gen, done, rev, seen = int(gen), int(done), int(rev), int(seen)
        self.leader = as_str(leader) == self.member_id
        if self._joined and not int(was_alive):
            logger.warning(
                "Group %s: member %s had expired (no heartbeat for the session timeout of "
                "%.1f s); dropping its partitions and rejoining",
                k.group,
                self.member_id,
                self.session_ms / 1000.0,
            )
            self._taken = 0
            self.token = None
            return Fenced(gen)
        self._joined = True
        if self.leader and rev != seen:
            published = await self._lead(gen, rev, [as_str(m) for m in alive])
            if published:
                gen = published
        self.generation = gen
        if gen > self._acked:
            return Revoke(gen)
        if done == gen == self._acked and self._taken != gen:
            fetched = await self._scripts.fetch(keys=[k.state, k.assign], args=[self.member_id])
            f_gen, f_done, payload = int(fetched[0]), int(fetched[1]), fetched[2]
            if f_gen == f_done == gen and payload is not None:
                self._taken = gen
                self.token = f"{gen}:{self.member_id}"
                return Assign(gen, bytes(payload), self.token)
        return None

    async def ack(self, generation: int) -> bool:
        """Say that everything was revoked for ``generation`` (False if a newer
        generation was published meanwhile: the next poll revokes again)."""
        self._taken = 0
        self.token = None
        ok = await self._scripts.ack(
            keys=[self.keys.state, self.keys.acks], args=[self.member_id, generation]
        )
        self._acked = max(self._acked, generation)
        return bool(ok)

    def fenced_out(self) -> None:
        """A fenced write was refused: forget the assignment; the next
        generation (there is one, or this member expired) gives a new one."""
        self._taken = 0
        self.token = None
        if self.on_refused is not None:
            self.on_refused()

    async def leave(self) -> None:
        """Leave the group now (graceful stop), so the others need not wait
        for the session timeout."""
        k = self.keys
        await self._scripts.leave(
            keys=[k.members, k.meta, k.state, k.leader], args=[self.member_id]
        )
        self._joined = False
        self._taken = 0
        self.token = None

    async def _lead(self, gen: int, rev: int, alive: list[str]) -> int:
        """Compute and publish generation ``gen + 1`` for the live members."""
        raw = await self.client.hmget(self.keys.meta, alive) if alive else []
        metas = {
            m: v if isinstance(v, bytes) else str(v).encode()
            for m, v in zip(alive, raw, strict=True)
            if v is not None
        }
        if not metas:
            return 0
        assignments = self._compute(metas)
        args: list[Any] = [self.member_id, gen, rev, " ".join(sorted(assignments))]
        args.append(len(assignments))
        for member, (payload, _) in sorted(assignments.items()):
            args += [member, payload]
        owned: dict[str, str] = {}
        for member, (_, fields) in sorted(assignments.items()):
            for f in fields:
                if f in owned:
                    raise ValueError(f"partition {f} assigned to {owned[f]} and {member}")
                owned[f] = member
        for f, member in sorted(owned.items()):
            args += [f, member]
        k = self.keys
        published = int(
            await self._scripts.publish(
                keys=[k.state, k.acks, k.leader, k.assign, k.next_owners], args=args
            )
        )
        if published:
            logger.info(
                "Group %s: leader %s published generation %d for %d members",
                k.group,
                self.member_id,
                published,
                len(assignments),
            )
        return published

    # --- fenced writes --------------------------------------------------------------

    async def commit(self, commits_key: str, offsets: Mapping[str, int]) -> None:
        """Write ``offsets`` (field -> next offset) into ``commits_key`` if
        this member owns every field; else raise :class:`FencedError`."""
        if self.token is None:
            raise FencedError("commit", next(iter(offsets), "?"), None)
        args: list[Any] = [self.token]
        for f, offset in offsets.items():
            args += [f, offset]
        reply = await self._scripts.commit(keys=[self.keys.owners, commits_key], args=args)
        if int(reply[0]) != 1:
            raise FencedError("commit", as_str(reply[1]), as_str(reply[2]) or None)

    def fenced_xadd(
        self, pipe: Any, topic: str, partition: int, stream: bytes, args: list[bytes]
    ) -> bool:
        """Queue on ``pipe`` a fenced ``XADD stream 0-* args`` if ``topic`` is
        fenced (a table's changelog: see ``fenced_topics``); False if it is
        not (the caller writes it plainly). A refused write's reply is an
        error starting with ``FENCED``; one that meets a Redis that lost its
        scripts (restarted) says ``NOSCRIPT``: :meth:`load_scripts`, retry."""
        fenced = self._fenced_topics
        if fenced is None:
            fenced = self._fenced_topics = frozenset(self._fenced_topics_of())
        if topic not in fenced:
            return False
        pipe.execute_command(
            "EVALSHA",
            self._scripts.xadd.sha,
            2,
            self.keys.owners,
            stream,
            f"{topic}:{partition}",
            self.token or "-",
            *args,
        )
        return True

    async def load_scripts(self) -> None:
        """Load the scripts queued by hand into pipelines (after a restart)."""
        await self.client.script_load(XADD)

    async def trim(self, topic: str, partition: int, stream: str, min_id: str) -> int:
        """Fenced ``XTRIM stream MINID min_id``; raises :class:`FencedError`."""
        try:
            return int(
                await self._scripts.trim(
                    keys=[self.keys.owners, stream],
                    args=[f"{topic}:{partition}", self.token or "-", min_id],
                )
            )
        except redis.exceptions.ResponseError as exc:
            refused = fenced_owner(exc)
            if refused is None:
                raise
            raise FencedError("trim", refused[0], refused[1] or None) from exc
