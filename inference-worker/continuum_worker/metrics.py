"""Prometheus metrics of the worker: Triton's names (so Triton dashboards work) plus our own.

Triton exports its per-model statistics as counters *without* the ``_total`` suffix
(``nv_inference_request_success``, cumulative microseconds in ``nv_inference_request_duration_us``,
...). prometheus-client would append ``_total`` to a counter's name, so those are rendered here with
exactly Triton's names, types and labels (``model``, ``version``) and served before the rest. Each server has its own
registry, so several workers can run in one process (tests, benchmarks).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from continuum_worker.batching import BatchStats

TRITON_COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (batch rows)",
    "nv_inference_exec_count": "Number of model executions performed (batches)",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in microseconds",
}


class TritonStats:
    """Per (model, version) counters, exposed under Triton's exact metric names."""

    def __init__(self) -> None:
        self.values: dict[str, dict[tuple[str, str], float]] = {
            n: defaultdict(float) for n in TRITON_COUNTERS
        }

    def add(self, name: str, model: str, version: str, value: float = 1.0) -> None:
        self.values[name][(model, version)] += value

    def get(self, name: str, model: str, version: str) -> float:
        return self.values[name].get((model, version), 0.0)

    def render(self) -> bytes:
        """Prometheus text format, as Triton writes it."""
        lines = []
        for name, doc in TRITON_COUNTERS.items():
            lines.append(f"# HELP {name} {doc}")
            lines.append(f"# TYPE {name} counter")
            for (model, version), value in sorted(self.values[name].items()):
                lines.append(f'{name}{{model="{_escape(model)}",version="{_escape(version)}"}} {value:.17g}')
        return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.triton = TritonStats()
        self.backend = Gauge(
            "continuum_worker_backend_info",
            "The backend and device serving each model version (value 1)",
            ["model", "version", "backend", "device"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "continuum_worker_fallbacks_total",
            "Requests answered by the local model because the upstream failed",
            ["model", "reason"],
            registry=self.registry,
        )
        self.upstream_up = Gauge(
            "continuum_worker_upstream_up",
            "1 while the upstream's circuit breaker is closed",
            ["upstream"],
            registry=self.registry,
        )
        self.offloaded = Counter(
            "continuum_worker_offloaded_total",
            "Requests answered by the upstream",
            ["model"],
            registry=self.registry,
        )
        self.batch_size = Gauge(
            "continuum_worker_last_batch_rows",
            "Rows in the last dynamic batch",
            ["model"],
            registry=self.registry,
        )
        self.model_loads = Counter(
            "continuum_worker_model_loads_total",
            "Model versions loaded, by result",
            ["model", "result"],
            registry=self.registry,
        )

    def batch_hook(self, model: str, version: str) -> Callable[[BatchStats], None]:
        def hook(stats: BatchStats) -> None:
            self.triton.add("nv_inference_exec_count", model, version)
            self.triton.add("nv_inference_queue_duration_us", model, version, sum(stats.queue_seconds) * 1e6)
            self.triton.add(
                "nv_inference_compute_infer_duration_us",
                model,
                version,
                stats.compute_seconds * 1e6 * stats.requests,
            )
            self.batch_size.labels(model).set(stats.rows)

        return hook

    def render(self) -> bytes:
        return self.triton.render() + generate_latest(self.registry)
