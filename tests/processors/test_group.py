"""The group protocol (processors/transport/group.py) with several in-process
members on the real Redis: joins, leaves, expiry, hand-over, fenced commits.

Members are driven by hand (one :meth:`poll` at a time, in an order the test
chooses), so the tests can stop a member exactly where a SIGSTOP would.
The assignment function is a plain round-robin over ``PARTITIONS``; the
Faust assignor is exercised by the worker tests.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping

import orjson
import pytest
import redis.asyncio as aioredis
from tierstream.processors.transport.fencing import FencedError
from tierstream.processors.transport.group import (
    Assign,
    Fenced,
    GroupMember,
    MemberAssignment,
    Revoke,
)

pytestmark = pytest.mark.timeout(60)

PARTITIONS = 12
SESSION = 1.0
INTERVAL = 0.1
COMMITS = "ts:commits:test-group"


def round_robin(metas: Mapping[str, bytes]) -> dict[str, MemberAssignment]:
    members = sorted(metas)
    out: dict[str, list[str]] = {m: [] for m in members}
    for p in range(PARTITIONS):
        out[members[p % len(members)]].append(f"t:{p}")
    return {m: (orjson.dumps(fields), fields) for m, fields in out.items()}


class Driven:
    """A member and what its owner holds, driven like a consumer would."""

    def __init__(self, client: aioredis.Redis, group: str, name: str) -> None:
        self.member = GroupMember(
            client,
            group,
            name,
            session_timeout=SESSION,
            interval=INTERVAL,
            metadata=lambda: name.encode(),
            compute=round_robin,
        )
        self.held: set[str] = set()
        self.events: list[str] = []

    async def step(self) -> None:
        change = await self.member.poll()
        if isinstance(change, Revoke):
            self.held = set()
            await self.member.ack(change.generation)
        elif isinstance(change, Assign):
            self.held = set(orjson.loads(change.payload))
        elif isinstance(change, Fenced):
            self.held = set()
        if change is not None:
            self.events.append(type(change).__name__)


async def settle(members: list[Driven], rounds: int = 60) -> None:
    """Poll every member until the assignment is stable and complete."""
    for _ in range(rounds):
        for m in members:
            await m.step()
        held = [p for m in members for p in m.held]
        if len(held) == PARTITIONS and len(set(held)) == PARTITIONS:
            gens = {m.member.generation for m in members}
            if len(gens) == 1 and all(m.member.holds for m in members):
                return
        await asyncio.sleep(INTERVAL / 4)
    raise AssertionError(f"group did not settle: {[(m.member.member_id, m.held) for m in members]}")


def assert_disjoint(members: list[Driven]) -> None:
    seen: dict[str, str] = {}
    for m in members:
        for p in m.held:
            assert p not in seen, f"{p} held by {seen[p]} and {m.member.member_id}"
            seen[p] = m.member.member_id


async def owners(client: aioredis.Redis, group: str) -> dict[str, str]:
    raw = await client.hgetall(f"ts:group:{{{group}}}:owners")
    return {k.decode(): v.decode() for k, v in raw.items()}


async def test_three_members_share_all_partitions_with_matching_tokens(
    aredis: aioredis.Redis, unique: str
) -> None:
    members = [Driven(aredis, unique, f"m{i}") for i in range(3)]
    await settle(members)
    assert_disjoint(members)
    assert sorted(len(m.held) for m in members) == [4, 4, 4]
    tokens = await owners(aredis, unique)
    for m in members:
        for p in m.held:
            assert tokens[p] == m.member.token
    # Each owner can commit what it owns, and nothing else.
    a, b = members[0], members[1]
    mine = sorted(a.held)[0]
    await a.member.commit(COMMITS, {mine: 7})
    assert int(await aredis.hget(COMMITS, mine)) == 7
    with pytest.raises(FencedError):
        await b.member.commit(COMMITS, {mine: 9})
    assert int(await aredis.hget(COMMITS, mine)) == 7


async def test_join_then_graceful_leave_rebalances(aredis: aioredis.Redis, unique: str) -> None:
    members = [Driven(aredis, unique, f"m{i}") for i in range(2)]
    await settle(members)
    joiner = Driven(aredis, unique, "m2")
    members.append(joiner)
    await settle(members)
    assert len(joiner.held) == 4
    leaver = members.pop(0)
    await leaver.member.leave()
    leaver.held = set()
    await settle(members)
    assert sorted(len(m.held) for m in members) == [6, 6]
    assert_disjoint(members)


async def test_no_handover_until_every_holder_revoked(aredis: aioredis.Redis, unique: str) -> None:
    """A new generation is not taken up while a previous holder is alive and
    has not acknowledged it (the eager protocol's barrier)."""
    a, b = Driven(aredis, unique, "a"), Driven(aredis, unique, "b")
    await settle([a])
    assert len(a.held) == PARTITIONS
    # b joins; a keeps heartbeating but its revoke is slow: poll without acking.
    for _ in range(10):
        await b.step()
        change = await a.member.poll()
        assert not isinstance(change, Assign)
        await asyncio.sleep(INTERVAL / 2)
    assert b.held == set(), "b took partitions while a had not revoked"
    assert set((await owners(aredis, unique)).values()) == {a.member.token}
    await a.member.ack(a.member.generation)
    a.held = set()
    await settle([a, b])
    assert_disjoint([a, b])


async def test_stopped_member_is_fenced_after_session_timeout(
    aredis: aioredis.Redis, unique: str
) -> None:
    members = [Driven(aredis, unique, f"m{i}") for i in range(3)]
    await settle(members)
    stopped = members.pop(1)
    lost = sorted(stopped.held)
    # The others carry on; `stopped` makes no call (SIGSTOP) past its session.
    await asyncio.sleep(SESSION * 1.2)
    await settle(members)
    assert_disjoint(members)
    assert {p for m in members for p in m.held} >= set(lost)
    # Continued: it still believes it owns `lost`; its commit is refused ...
    assert stopped.held == set(lost)
    with pytest.raises(FencedError) as err:
        await stopped.member.commit(COMMITS, {lost[0]: 1000})
    assert err.value.owner is not None and not err.value.owner.endswith(":m1")
    assert await aredis.hget(COMMITS, lost[0]) is None
    # ... and its first heartbeat tells it to drop everything and rejoin.
    await stopped.step()
    assert stopped.events[-1] == "Fenced" and stopped.held == set()
    members.append(stopped)
    await settle(members)
    assert sorted(len(m.held) for m in members) == [4, 4, 4]


async def test_stale_member_is_not_leader_and_a_new_leader_takes_over(
    aredis: aioredis.Redis, unique: str
) -> None:
    members = [Driven(aredis, unique, f"m{i}") for i in range(2)]
    await settle(members)
    leader = next(m for m in members if m.member.leader)
    other = next(m for m in members if m is not leader)
    assert not leader.member.stale()
    await asyncio.sleep(SESSION * 1.2)
    assert leader.member.stale()
    await settle([other])
    assert other.member.leader and len(other.held) == PARTITIONS


async def test_random_schedules_never_hand_a_partition_to_two_live_holders(
    aredis: aioredis.Redis, unique: str
) -> None:
    """Members poll in random order with random stalls (some past the session
    timeout); after each step, the partitions held by members that are not
    stale are disjoint, and each matches the owner token in Redis."""
    rng = random.Random(7)
    members = [Driven(aredis, unique, f"m{i}") for i in range(4)]
    loop = asyncio.get_running_loop()
    paused_until: dict[str, float] = {}
    deadline = loop.time() + 12
    while loop.time() < deadline:
        m = rng.choice(members)
        name = m.member.member_id
        if paused_until.get(name, 0) > loop.time():
            await asyncio.sleep(0.01)
            continue
        await m.step()
        if rng.random() < 0.03:
            paused_until[name] = loop.time() + rng.choice([0.3, SESSION * 1.3])
        live = [x for x in members if not x.member.stale()]
        assert_disjoint(live)
        tokens = await owners(aredis, unique)
        for x in live:
            for p in x.held:
                assert tokens.get(p) == x.member.token, (p, tokens.get(p), x.member.token)
        await asyncio.sleep(0.005)
    paused_until.clear()
    await settle(members)
    assert_disjoint(members)
