"""Model drift of the workers, shown in ``EdgeWorkload.status.drift`` and the ``Drifting`` condition.

Like :mod:`continuum.controller.state_health`, every ``interval`` seconds the acting replica asks each
placed workload's Service, here ``GET /v2/models/{model}/drift`` (docs/drift.md), keeps the answer,
and queues the workload only when something that matters changed (reachability, drifting, the
window's status, the score moved by at least 0.01), so the status is not rewritten on every poll.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from continuum.api.models import DriftStatus
from continuum.controller import metrics
from continuum.controller.keys import WorkloadKey
from continuum.controller.probe import WorkerProbe

DriftTargets = Callable[[], list[tuple[WorkloadKey, int, str]]]  # placed workloads, port, model name


def parse_drift_report(payload: Any, observed_at: datetime) -> DriftStatus:
    """The worker's drift view as status; a malformed answer is reported, not raised."""
    if not isinstance(payload, Mapping):
        return DriftStatus(observed_at=observed_at, reachable=True, message="malformed drift answer")
    raw_last = payload.get("last")
    last: Mapping[str, Any] = raw_last if isinstance(raw_last, Mapping) else {}
    try:
        score = payload.get("score")
        features = [str(f) for f in (last.get("drifting_features") or [])[:5]]
        outputs = [str(o) for o in (last.get("drifting_outputs") or [])[:5]]
        return DriftStatus(
            observed_at=observed_at,
            reachable=True,
            score=None if score is None else round(float(score), 4),
            drifting=bool(payload.get("drifting")),
            samples=int(last.get("samples") or 0),
            window_status=str(last["status"]) if last.get("status") else None,
            features=features + outputs,
            version=str(payload["version"]) if payload.get("version") is not None else None,
            message=str(payload["reference_error"])[:512] if payload.get("reference_error") else None,
        )
    except (TypeError, ValueError, OverflowError) as exc:
        return DriftStatus(
            observed_at=observed_at, reachable=True, message=f"malformed drift answer: {exc}"[:512]
        )


def significant(status: DriftStatus | None) -> tuple[Any, ...] | None:
    if status is None:
        return None
    score = None if status.score is None else round(status.score, 2)
    return (status.reachable, status.drifting, status.window_status, score, status.message, status.version)


class DriftProbe(WorkerProbe[DriftStatus]):
    """Polls the workers' drift views; results land in ``health``, a change that matters requeues."""

    what = "workers' drift"
    counter = metrics.DRIFT_PROBES

    def url(self, key: WorkloadKey, base: str, *extra: Any) -> str:
        (model,) = extra
        return f"{base}/v2/models/{urllib.parse.quote(model, safe='')}/drift"

    def parse(self, payload: Any, observed_at: datetime) -> DriftStatus:
        return parse_drift_report(payload, observed_at)

    def unreachable(self, observed_at: datetime, message: str) -> DriftStatus:
        return DriftStatus(observed_at=observed_at, reachable=False, message=message)

    def significant(self, status: DriftStatus | None) -> tuple[Any, ...] | None:
        return significant(status)
