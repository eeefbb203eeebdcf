"""Which partitions this worker owns: the group membership of the transport.

Responsible for: turning "the topics this worker subscribes to, with their
partition counts" into this worker's assignment, a generation number and a
leader flag. Today there is one member (this worker), so it owns every
partition and is the leader.

The assignment is still computed by Faust's own ``PartitionAssignor``
(``app.assignor``) exactly as the Kafka group coordinator drives it
(``metadata()`` -> ``assign()`` on the leader -> ``on_assignment()`` on each
member), because table recovery reads the assignor's state
(``assigned_actives()``/``assigned_standbys()``, changelog distribution, topic
groups), and ``app.is_leader()`` is "the assignor's leader topic partition is
in my assignment". A multi-worker version replaces :meth:`Membership.members`
(heartbeats in Redis, a leader lease, generations, fencing) and keeps the rest.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from faust.types import TP, AppT

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assignment:
    """The outcome of one rebalance for this worker."""

    partitions: frozenset[TP]
    generation: int
    leader: bool


class _Cluster:
    """The one method of aiokafka's ``ClusterMetadata`` the assignor uses."""

    def __init__(self, topics: Mapping[str, int]) -> None:
        self._topics = topics

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self._topics.get(topic)
        return set(range(n)) if n else None


class Membership:
    """Membership of one worker in its consumer group (single-member for now)."""

    def __init__(self, app: AppT, member_id: str | None = None) -> None:
        self.app = app
        self.member_id = member_id or f"{app.conf.id}-{uuid.uuid4().hex[:12]}"
        self.generation = 0

    def members(self, topics: Mapping[str, int]) -> dict[str, list[str]]:
        """Members of the group and their subscriptions: just us, for now."""
        return {self.member_id: sorted(topics)}

    def assign(self, topics: Mapping[str, int]) -> Assignment:
        """Compute this worker's assignment for ``{topic: partitions}``.

        ``app.client_only`` apps have no group: they read every partition.
        """
        self.generation += 1
        if self.app.client_only:
            return Assignment(
                frozenset(TP(t, p) for t, n in topics.items() for p in range(n)),
                self.generation,
                leader=False,
            )
        assignor: Any = self.app.assignor
        subscriptions = self.members(topics)
        metadata = {
            member: ConsumerProtocolMemberMetadata(
                assignor.version, subs, assignor._metadata.dumps()
            )
            for member, subs in subscriptions.items()
        }
        # This is what the Kafka group leader does ...
        assignments = assignor.assign(_Cluster(topics), metadata)
        mine = assignments[self.member_id]
        # ... and what each member does with its part of the result.
        assignor.on_assignment(mine)
        partitions = frozenset(TP(topic, p) for topic, parts in mine.assignment for p in parts)
        leader_tp: TP = self.app._leader_assignor._leader_tp  # type: ignore[attr-defined]
        return Assignment(partitions, self.generation, leader=leader_tp in partitions)
