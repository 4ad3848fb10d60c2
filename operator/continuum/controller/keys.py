"""The keys the controller's parts agree on: what the work queue carries and what the ledger records.

* :class:`WorkloadKey` — one EdgeWorkload, ``(namespace, name)``; a plain tuple underneath, so it
  indexes the caches directly.
* :class:`WorkloadSetKey` — one EdgeWorkloadSet, ``(namespace, name)``; a frozen dataclass, so it never
  equals the :class:`WorkloadKey` of a workload with the same name in the queue or a cache.
* :class:`Pass` — a pass over many objects: :attr:`Pass.ALL` (queue every workload and the pools)
  and :attr:`Pass.POOLS` (label/taint nodes, write every pool's status).
* :data:`CLAIM_PLACEMENT` / :data:`CLAIM_PREVIOUS` — the two claims a workload can hold in the
  ledger: its placement and, while a move drains, the placement it is leaving.
* :data:`RENDERED` — the pseudo-kind of the Deployments/StatefulSets the operator renders (both are
  cached together, by the workload that owns them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, NamedTuple


class WorkloadKey(NamedTuple):
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class WorkloadSetKey:
    namespace: str
    name: str


class Pass(enum.Enum):
    ALL = "all"
    POOLS = "pools"


QueueKey = WorkloadKey | WorkloadSetKey | Pass

CLAIM_PLACEMENT: Final = ""
CLAIM_PREVIOUS: Final = "#previous"
RENDERED: Final = "Rendered"
