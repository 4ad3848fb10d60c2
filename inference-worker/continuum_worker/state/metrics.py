"""Prometheus metrics of the state library, all named ``continuum_state_*``.

Pass the worker's registry to expose them on its ``/metrics``; by default each ``StateMetrics`` gets its
own ``CollectorRegistry`` so several stores in one process (tests, benchmarks) do not collide.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class StateMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.updates = Counter(
            "continuum_state_updates", "CRDT updates written to the store, by origin", ["origin"], registry=r
        )
        self.commits = Counter("continuum_state_commits", "Store transactions committed (fsyncs)", registry=r)
        self.commit_seconds = Histogram(
            "continuum_state_commit_seconds",
            "Duration of one group commit",
            buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0),
            registry=r,
        )
        self.write_errors = Counter("continuum_state_write_errors", "Failed store commits", registry=r)
        self.log_bytes = Gauge("continuum_state_log_bytes", "Bytes of update records in the log", registry=r)
        self.snapshot_bytes = Gauge(
            "continuum_state_snapshot_bytes", "Bytes of the newest snapshot", registry=r
        )
        self.compactions = Counter("continuum_state_compactions", "Compactions written", registry=r)
        self.pending = Gauge(
            "continuum_state_pending_updates", "Updates the upstream has not acknowledged yet", registry=r
        )
        self.last_sync = Gauge(
            "continuum_state_last_sync_timestamp_seconds", "Last successful sync with an upstream", registry=r
        )
        self.sync_failures = Counter("continuum_state_sync_failures", "Failed sync attempts", registry=r)
        self.syncs = Counter(
            "continuum_state_syncs", "Successful sync rounds, by target kind", ["kind"], registry=r
        )
        self.peers = Gauge("continuum_state_peers", "Peers and upstreams configured", registry=r)
        self.sync_bytes = Counter(
            "continuum_state_sync_bytes", "Sync message bytes, by direction", ["direction"], registry=r
        )
        self.rejected = Counter(
            "continuum_state_rejected_messages",
            "Sync or state requests refused, by reason",
            ["reason"],
            registry=r,
        )
        self.recovery_seconds = Gauge(
            "continuum_state_recovery_seconds", "Time the last recovery took", registry=r
        )
        self.recovery_dropped = Gauge(
            "continuum_state_recovery_dropped_records", "Log records cut off by the last recovery", registry=r
        )
        self.raw_result_bytes = Counter(
            "continuum_state_raw_result_bytes",
            "Bytes of inference results recorded into state (what sending every result would cost)",
            registry=r,
        )
        self.bytes_saved = Gauge(
            "continuum_state_bytes_saved", "Raw result bytes minus sync bytes sent upstream", registry=r
        )

    def bind(
        self,
        *,
        log_bytes: Callable[[], float],
        snapshot_bytes: Callable[[], float],
        pending: Callable[[], float],
        bytes_saved: Callable[[], float],
    ) -> None:
        self.log_bytes.set_function(log_bytes)
        self.snapshot_bytes.set_function(snapshot_bytes)
        self.pending.set_function(pending)
        self.bytes_saved.set_function(bytes_saved)
