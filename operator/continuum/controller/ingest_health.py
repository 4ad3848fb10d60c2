"""Consumer lag of streaming workloads, shown in ``EdgeWorkload.status.ingest``.

Like :mod:`continuum.controller.state_health`, every ``interval`` seconds the acting replica asks each
placed workload with ``spec.ingest`` for ``GET /v2/ingest`` (docs/streaming.md): whether its brokers are
connected, the results in its outbox not yet published upstream (records, bytes, age of the oldest) and
the source's lag. Only a change that matters queues the workload: reachability, connection, the
message, and the backlog or lag crossing a power of ten, so a steady stream does not rewrite the status
on every poll.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from continuum.api.models import IngestStatus
from continuum.controller import metrics
from continuum.controller.keys import WorkloadKey
from continuum.controller.probe import WorkerProbe

IngestTargets = Callable[[], list[tuple[WorkloadKey, int]]]  # placed streaming workloads and their port


def ingest_targets(cache: Any) -> IngestTargets:
    """Placed workloads with ``spec.ingest`` and their worker port, read from the operator's cache."""

    def targets() -> list[tuple[WorkloadKey, int]]:
        out = []
        for key, raw in list(cache.workloads.items()):
            spec = cache.spec(raw)
            if spec is not None and spec.ingest is not None and (raw.get("status") or {}).get("placement"):
                out.append((key, spec.worker.port))
        return out

    return targets


def _lag_records(sources: Any) -> int | None:
    values = [s.get("lag_records") for s in sources if isinstance(s, Mapping)]
    known = [int(v) for v in values if v is not None]
    return max(0, sum(known)) if known else None


def _source_lag(sources: Any) -> float | None:
    values = [s.get("source_lag_seconds") for s in sources if isinstance(s, Mapping)]
    known = [float(v) for v in values if v is not None]
    return round(max(0.0, max(known)), 3) if known else None


def parse_ingest_report(payload: Any, observed_at: datetime) -> IngestStatus:
    """The worker's ``/v2/ingest`` answer as status; a malformed answer is reported, not raised."""
    if not isinstance(payload, Mapping):
        return IngestStatus(observed_at=observed_at, reachable=True, message="malformed /v2/ingest answer")
    try:
        sources = payload.get("sources") or []
        if not isinstance(sources, list):
            raise TypeError("sources is not a list")
        down = [str(s.get("uri")) for s in sources if isinstance(s, Mapping) and not s.get("connected")]
        sink = payload.get("sink") if isinstance(payload.get("sink"), Mapping) else {}
        if sink and not sink.get("connected"):
            down.append(str(sink.get("uri")))
        lag = float(payload.get("lag_seconds") or 0.0)
        if not math.isfinite(lag):
            raise ValueError(f"lag_seconds {lag}")
        return IngestStatus(
            observed_at=observed_at,
            reachable=True,
            broker_connected=bool(payload.get("connected")),
            pending_records=int(payload.get("pending_records") or 0),
            pending_bytes=int(payload.get("pending_bytes") or 0),
            lag_seconds=round(max(0.0, lag), 3),
            source_lag_seconds=_source_lag(sources),
            source_lag_records=_lag_records(sources),
            dropped=int(payload.get("dropped") or 0),
            message=f"not connected: {', '.join(down)}"[:512] if down else None,
        )
    except (TypeError, ValueError, OverflowError) as exc:
        return IngestStatus(
            observed_at=observed_at, reachable=True, message=f"malformed /v2/ingest answer: {exc}"[:512]
        )


def _decade(value: float | None) -> int | None:
    """0 for nothing, then 1 + floor(log10): a change of this is a change that matters."""
    if value is None:
        return None
    return 0 if value < 1 else 1 + int(math.log10(value))


def significant(status: IngestStatus | None) -> tuple[Any, ...] | None:
    """What a status change must touch to be written (not the poll time, not every record)."""
    if status is None:
        return None
    return (
        status.reachable,
        status.broker_connected,
        status.message,
        _decade(status.pending_records),
        _decade(status.lag_seconds),
        _decade(status.source_lag_records),
        status.dropped > 0,
    )


class IngestProbe(WorkerProbe[IngestStatus]):
    """Polls the streaming workers' ``/v2/ingest``; results land in ``health``, a change that matters
    requeues the workload."""

    what = "workers' ingest"
    counter = metrics.INGEST_PROBES

    def url(self, key: WorkloadKey, base: str, *extra: Any) -> str:
        return base + "/v2/ingest"

    def parse(self, payload: Any, observed_at: datetime) -> IngestStatus:
        return parse_ingest_report(payload, observed_at)

    def unreachable(self, observed_at: datetime, message: str) -> IngestStatus:
        return IngestStatus(observed_at=observed_at, reachable=False, message=message)

    def significant(self, status: IngestStatus | None) -> tuple[Any, ...] | None:
        return significant(status)
