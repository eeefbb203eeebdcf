"""Which partitions this worker owns: Faust's assignor over the group protocol.

Responsible for: what a worker puts into the group (its subscriptions with
partition counts and Faust's assignor metadata, ``assignor._metadata.dumps()``,
which carries the worker's URL for standbys and its previous assignment for
stickiness), what the leader computes from all members' metadata (Faust's
own ``PartitionAssignor.assign()``: co-partitioned topics together, standby
replicas, changelog distribution), and what a member does with its part
(``assignor.on_assignment()``, which table recovery and ``app.is_leader()``
read). This is the Kafka group coordinator's flow (metadata -> assign on the
leader -> on_assignment on each member); the moving parts in Redis are in
:mod:`.group`.

Owner tokens go to the *active* partitions a member alone holds. Standby
partitions are read only; a global table's changelog partitions are active
on every member, so nobody gets their token (their writes are not fenced).
"""

from __future__ import annotations

import base64
import logging
import uuid
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from faust.assignor.client_assignment import ClientMetadata
from faust.types import TP, AppT

from .group import MemberAssignment

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


def tp_field(tp: TP) -> str:
    """``<topic>:<partition>``: the field of a partition in commits and owners."""
    return f"{tp.topic}:{tp.partition}"


class Membership:
    """Faust's side of this worker's group membership."""

    def __init__(self, app: AppT, member_id: str | None = None) -> None:
        self.app = app
        self.member_id = member_id or f"{app.conf.id}-{uuid.uuid4().hex[:12]}".replace(" ", "_")
        self.topics: dict[str, int] = {}
        self.generation = 0

    @property
    def _assignor(self) -> Any:
        return self.app.assignor

    def metadata(self) -> bytes:
        """What this member tells the leader: subscriptions and assignor metadata."""
        assignor = self._assignor
        return orjson.dumps(
            {
                "topics": self.topics,
                "version": assignor.version,
                "user_data": base64.b64encode(assignor._metadata.dumps()).decode(),
            }
        )

    def compute(self, metas: Mapping[str, bytes]) -> dict[str, MemberAssignment]:
        """The leader's job: every member's assignment from their metadata."""
        assignor = self._assignor
        topics: dict[str, int] = {}
        metadata = {}
        for member, raw in metas.items():
            meta = orjson.loads(raw)
            for topic, n in meta["topics"].items():
                topics[topic] = max(int(n), topics.get(topic, 0))
            metadata[member] = ConsumerProtocolMemberMetadata(
                meta["version"], sorted(meta["topics"]), base64.b64decode(meta["user_data"])
            )
        assignments = assignor.assign(_Cluster(topics), metadata)
        actives: dict[str, set[str]] = {}
        for member, protocol in assignments.items():
            client = ClientMetadata.loads(zlib.decompress(protocol.user_data))
            actives[member] = {
                f"{topic}:{p}" for topic, parts in client.assignment.actives.items() for p in parts
            }
        shared = Counter(f for fields in actives.values() for f in fields)
        return {
            member: (protocol.encode(), sorted(f for f in actives[member] if shared[f] == 1))
            for member, protocol in assignments.items()
        }

    def apply(self, generation: int, payload: bytes) -> Assignment:
        """Take up this member's part of ``generation`` (``on_assignment``)."""
        mine = ConsumerProtocolMemberAssignment.decode(payload)
        self._assignor.on_assignment(mine)
        self.generation = generation
        partitions = frozenset(TP(topic, p) for topic, parts in mine.assignment for p in parts)
        leader_tp: TP = self.app._leader_assignor._leader_tp  # type: ignore[attr-defined]
        return Assignment(partitions, generation, leader=leader_tp in partitions)

    def assign_all(self, topics: Mapping[str, int]) -> Assignment:
        """``app.client_only`` apps have no group: they read every partition."""
        self.generation += 1
        return Assignment(
            frozenset(TP(t, p) for t, n in topics.items() for p in range(n)),
            self.generation,
            leader=False,
        )
