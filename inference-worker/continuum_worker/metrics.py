"""Prometheus metrics of the worker: Triton's names (so Triton dashboards work) plus our own.

Triton exports its per-model statistics as counters *without* the ``_total`` suffix
(``nv_inference_request_success``, cumulative microseconds in ``nv_inference_request_duration_us``,
...). prometheus-client would append ``_total`` to a counter's name, so those are rendered here with
exactly Triton's names, types and labels (``model``, ``version``) and served before the rest. Each server has its own
registry, so several workers can run in one process (tests, benchmarks).

The request-duration and batch-size histograms (per ``model`` and ``version``) are read from the same
statistics at scrape time by :class:`StatsHistograms`, so a request pays one ``bisect`` and a list
increment for them, and no label lookup or lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric

from continuum_worker.batching import BatchStats
from continuum_worker.stats import BATCH_BUCKETS, REQUEST_BUCKETS, ModelStats, StatsBook

TRITON_COUNTERS = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (batch rows)",
    "nv_inference_exec_count": "Number of model executions performed (batches)",
    "nv_inference_request_duration_us": "Cumulative inference request duration in microseconds",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in microseconds",
    "nv_inference_compute_input_duration_us": "Cumulative compute input duration in microseconds",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in microseconds",
    "nv_inference_compute_output_duration_us": "Cumulative compute output duration in microseconds",
}


def _values(m: ModelStats) -> dict[str, float]:
    st = m.stages
    return {
        "nv_inference_request_success": st["success"].count,
        "nv_inference_request_failure": st["fail"].count,
        "nv_inference_count": m.inference_count,
        "nv_inference_exec_count": m.execution_count,
        "nv_inference_request_duration_us": (st["success"].ns + st["fail"].ns) / 1000,
        "nv_inference_queue_duration_us": st["queue"].ns / 1000,
        "nv_inference_compute_input_duration_us": st["compute_input"].ns / 1000,
        "nv_inference_compute_infer_duration_us": st["compute_infer"].ns / 1000,
        "nv_inference_compute_output_duration_us": st["compute_output"].ns / 1000,
    }


def render_triton(book: StatsBook) -> bytes:
    """Prometheus text format, as Triton writes it, from the statistics extension's numbers."""
    values = {(name, version): _values(m) for (name, version), m in sorted(book.models.items())}
    lines = []
    for metric, doc in TRITON_COUNTERS.items():
        lines.append(f"# HELP {metric} {doc}")
        lines.append(f"# TYPE {metric} counter")
        for (model, version), v in values.items():
            lines.append(f'{metric}{{model="{_escape(model)}",version="{_escape(version)}"}} {v[metric]:.17g}')
    return ("\n".join(lines) + "\n").encode()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


REQUEST_DURATION = "continuum_worker_request_duration_seconds"
BATCH_SIZE = "continuum_worker_batch_size"


class StatsHistograms:
    """A collector exposing the StatsBook's request durations and batch sizes as histograms."""

    def __init__(self, owner: WorkerMetrics) -> None:
        self.owner = owner  # read owner.stats at each scrape: bind_stats may replace the book

    def _families(self) -> tuple[HistogramMetricFamily, HistogramMetricFamily]:
        return (
            HistogramMetricFamily(
                REQUEST_DURATION,
                "Inference request duration in the server (request received to response ready), "
                "successes and failures, seconds",
                labels=["model", "version"],
            ),
            HistogramMetricFamily(
                BATCH_SIZE, "Rows per model execution (dynamic batches and direct calls)", labels=["model", "version"]
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        durations, batches = self._families()
        for (model, version), m in sorted(list(self.owner.stats.models.items())):
            counts, seconds = m.request_histogram()
            durations.add_metric([model, version], _buckets(REQUEST_BUCKETS, counts), seconds)
            counts, rows = m.batch_histogram()
            batches.add_metric([model, version], _buckets(BATCH_BUCKETS, counts), rows)
        yield durations
        yield batches


def _buckets(bounds: tuple[float, ...], cumulative: list[int]) -> list[tuple[str, float]]:
    return [(_le(b), c) for b, c in zip(bounds, cumulative, strict=False)] + [("+Inf", cumulative[-1])]


def _le(bound: float) -> str:
    return repr(float(bound))


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stats = StatsBook()
        self.memory = Gauge(
            "continuum_worker_model_memory_bytes",
            "Memory each loaded model version took (resident growth while loading, at least its files)",
            ["model", "version"],
            registry=self.registry,
        )
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
        self.registry.register(StatsHistograms(self))

    def bind_stats(self, stats: StatsBook) -> None:
        self.stats = stats

    def batch_hook(self, stats: ModelStats) -> Callable[[BatchStats], None]:
        """One dynamic batch executed: an execution of its size, in the statistics."""

        def hook(batch: BatchStats) -> None:
            stats.execution(batch.rows, 0.0, batch.compute_seconds, 0.0)
            self.batch_size.labels(stats.name).set(batch.rows)

        return hook

    def render(self) -> bytes:
        return render_triton(self.stats) + generate_latest(self.registry)
