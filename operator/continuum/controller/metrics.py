"""Prometheus metrics of the operator (served at /metrics on --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PLACEMENTS = Counter(
    "continuum_placements_total", "Placement decisions written to status", ["tier", "result"]
)
RECONCILE_SECONDS = Histogram(
    "continuum_reconcile_duration_seconds",
    "Time to reconcile one object",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
UNSCHEDULABLE = Gauge("continuum_unschedulable_workloads", "EdgeWorkloads no pool can host")
INVALID = Gauge("continuum_invalid_objects", "EdgeWorkloads and EdgeNodePools with an invalid spec", ["kind"])
REPLACEMENTS = Counter("continuum_replacements_total", "Workloads moved to another pool", ["reason"])
POOL_UTILIZATION = Gauge(
    "continuum_pool_utilization_ratio",
    "Requested by Continuum workloads / allocatable",
    ["pool", "tier", "resource"],
)
POOL_NODES = Gauge("continuum_pool_nodes", "Member nodes of a pool", ["pool", "state"])
API_ERRORS = Counter("continuum_api_errors_total", "Kubernetes API errors seen (retried)", ["status"])
ACTING = Gauge(
    "continuum_operator_acting",
    "1 while this replica reconciles, 0 while it stands by for a higher-priority peer (kopf peering)",
)
WATCH_EVENTS = Counter(
    "continuum_watch_events_total",
    "Watch events read, by kind and how: observed, or own-echo (repeats the answer to the operator's own "
    "write, already cached: skipped undecoded)",
    ["kind", "handled"],
)
QUEUE_DEPTH = Gauge("continuum_work_queue_depth", "Keys waiting to be reconciled (queued or delayed)")
EVENTS_DROPPED = Counter("continuum_events_dropped_total", "Kubernetes Events given up on after retries")
STATE_PROBES = Counter(
    "continuum_state_probes_total", "Asks of workers' /state/sync, by result", ["result"]
)
INGEST_PROBES = Counter("continuum_ingest_probes_total", "Asks of workers' /v2/ingest, by result", ["result"])
DRIFT_PROBES = Counter(
    "continuum_drift_probes_total", "Asks of workers' /v2/models/{m}/drift, by result", ["result"]
)
