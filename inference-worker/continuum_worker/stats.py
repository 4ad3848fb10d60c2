"""Per model version statistics, as Triton keeps them: one set of numbers behind both the statistics
extension (``GET /v2/models/{m}/stats``, gRPC ``ModelStatistics``), the Prometheus ``nv_*`` metrics and
the request-duration and batch-size histograms (``continuum_worker_request_duration_seconds``,
``continuum_worker_batch_size``)."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

# Upper bounds (Prometheus ``le``) of the request-duration histogram, seconds: 100 µs to 10 s
REQUEST_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Upper bounds of the batch-size histogram, rows per model execution
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchStat:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    name: str
    version: str
    last_inference: int = 0  # ms since the epoch
    inference_count: int = 0  # batch rows
    execution_count: int = 0  # model executions (batches)
    stages: dict[str, Duration] = field(default_factory=lambda: {s: Duration() for s in STAGES})
    batches: dict[int, BatchStat] = field(default_factory=lambda: defaultdict(BatchStat))
    memory_bytes: int = 0
    # requests (successes and failures) per REQUEST_BUCKETS bound, the last one past 10 s (+Inf)
    request_buckets: list[int] = field(default_factory=lambda: [0] * (len(REQUEST_BUCKETS) + 1))

    def success(
        self, rows: int, total: float, queue: float, compute_input: float, compute_infer: float, compute_output: float
    ) -> None:
        s = self.stages
        s["success"].add(total)
        s["queue"].add(queue)
        s["compute_input"].add(compute_input)
        s["compute_infer"].add(compute_infer)
        s["compute_output"].add(compute_output)
        self.request_buckets[bisect_left(REQUEST_BUCKETS, total)] += 1
        self.inference_count += rows
        self.last_inference = int(time.time() * 1000)

    def failure(self, total: float) -> None:
        self.stages["fail"].add(total)
        self.request_buckets[bisect_left(REQUEST_BUCKETS, total)] += 1
        self.last_inference = int(time.time() * 1000)

    def execution(self, batch_size: int, compute_input: float, compute_infer: float, compute_output: float) -> None:
        self.execution_count += 1
        b = self.batches[batch_size]
        b.compute_input.add(compute_input)
        b.compute_infer.add(compute_infer)
        b.compute_output.add(compute_output)

    def request_histogram(self) -> tuple[list[int], float]:
        """Cumulative request counts per REQUEST_BUCKETS bound then +Inf, and the seconds they took
        (successes and failures: the numbers behind ``nv_inference_request_duration_us``)."""
        return _cumulative(self.request_buckets), (self.stages["success"].ns + self.stages["fail"].ns) / 1e9

    def batch_histogram(self) -> tuple[list[int], int]:
        """Cumulative model executions per BATCH_BUCKETS bound then +Inf, and the rows they ran
        (from ``batch_stats``: each execution is counted once there, by its size)."""
        counts = [0] * (len(BATCH_BUCKETS) + 1)
        rows = 0
        for size, b in list(self.batches.items()):
            n = b.compute_infer.count
            counts[bisect_left(BATCH_BUCKETS, size)] += n
            rows += size * n
        return _cumulative(counts), rows

    def json(self) -> dict[str, Any]:
        """Triton's ``model_stats`` entry."""
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: v.json() for k, v in self.stages.items()},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": b.compute_input.json(),
                    "compute_infer": b.compute_infer.json(),
                    "compute_output": b.compute_output.json(),
                }
                for size, b in sorted(self.batches.items())
            ],
            "memory_usage": [{"type": "CPU", "id": 0, "byte_size": self.memory_bytes}] if self.memory_bytes else [],
        }


class StatsBook:
    """Every model version's statistics (kept after an unload, as Triton's counters are)."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str], ModelStats] = {}

    def of(self, name: str, version: str) -> ModelStats:
        key = (name, version)
        stats = self.models.get(key)
        if stats is None:
            stats = self.models[key] = ModelStats(name, version)
        return stats


def _cumulative(counts: list[int]) -> list[int]:
    total, out = 0, []
    for n in counts:
        total += n
        out.append(total)
    return out
