"""Sync health of the workers' CRDT state, shown in ``EdgeWorkload.status.state``.

Every ``interval`` seconds the acting replica asks each placed, state-enabled workload's Service for
``GET /state/sync`` (docs/contracts.md) and keeps the answer. Only a change that matters (reachability,
pending updates, failures, peers, a newer sync time) queues the workload, so the status is not
rewritten on every poll. The URL comes from a template, so an operator running outside the cluster can
go through ``kubectl proxy``:
``http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from continuum.api.models import StateSyncStatus
from continuum.controller import metrics
from continuum.controller.keys import WorkloadKey
from continuum.controller.probe import WorkerProbe

Targets = Callable[[], list[tuple[WorkloadKey, int]]]  # placed state-enabled workloads and their port


def parse_sync_report(payload: Any, observed_at: datetime) -> StateSyncStatus:
    """The worker's ``/state/sync`` answer as status; a malformed answer is reported, not raised."""
    if not isinstance(payload, Mapping):
        return StateSyncStatus(
            observed_at=observed_at, reachable=True, message="malformed /state/sync answer"
        )
    last = payload.get("last_sync_time")
    try:
        last_sync = datetime.fromtimestamp(float(last), UTC) if last is not None else None
        return StateSyncStatus(
            observed_at=observed_at,
            reachable=True,
            pending_updates=int(payload.get("pending_updates", 0)),
            last_sync_time=last_sync,
            sync_failures=int(payload.get("sync_failures", 0)),
            peers=int(payload.get("peers", 0)),
            message=str(payload["error"])[:512] if payload.get("error") else None,
        )
    except (TypeError, ValueError, OverflowError) as exc:
        return StateSyncStatus(
            observed_at=observed_at, reachable=True, message=f"malformed /state/sync answer: {exc}"
        )


def significant(status: StateSyncStatus | None) -> tuple[Any, ...] | None:
    """What a status change must touch to be written (not the poll time)."""
    if status is None:
        return None
    return (
        status.reachable,
        status.pending_updates,
        status.last_sync_time,
        status.sync_failures,
        status.peers,
        status.message,
    )


class StateProbe(WorkerProbe[StateSyncStatus]):
    """Polls the workers' ``/state/sync``; results land in ``health``, a change that matters requeues."""

    what = "workers' state"
    counter = metrics.STATE_PROBES

    def url(self, key: WorkloadKey, base: str, *extra: Any) -> str:
        return base + "/state/sync"

    def parse(self, payload: Any, observed_at: datetime) -> StateSyncStatus:
        return parse_sync_report(payload, observed_at)

    def unreachable(self, observed_at: datetime, message: str) -> StateSyncStatus:
        return StateSyncStatus(observed_at=observed_at, reachable=False, message=message)

    def significant(self, status: StateSyncStatus | None) -> tuple[Any, ...] | None:
        return significant(status)
