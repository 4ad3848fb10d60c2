"""Dynamic batching, as Triton's dynamic batcher: queue requests, run them as one batch, split back.

A batch closes when it holds ``max_batch_size`` rows or when its first request has waited
``max_queue_delay_us`` — or at once while no batch is computing, so a lone request pays no delay
(under load, the requests that arrive while a batch computes form the next one). Requests are grouped
by the shape of their non-batch dimensions and dtype (only identical ones can be concatenated).
Slow models run in the executor, and the next batch fills while one computes; fast ones (compute
below ``inline_below_seconds``) run in the event loop, batching the requests that arrived together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

InferFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def timed(infer: InferFn, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """``infer(inputs)`` and its wall time, measured where it runs. In an executor thread this leaves out
    the hop back to the event loop and the loop's queue: counted in, a fast model that once went to the
    executor (one inline run stretched by preemption) stayed there while the loop was busy, since the
    round trip alone passes the inline threshold under load."""
    started = time.perf_counter()
    outputs = infer(inputs)
    return outputs, time.perf_counter() - started


@dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float = field(default_factory=time.perf_counter)
    queue_seconds: float = 0.0  # set when its batch is delivered
    compute_seconds: float = 0.0


@dataclass
class BatchStats:
    """Per-batch timings handed to the ``on_batch`` callback (for metrics)."""

    requests: int
    rows: int
    queue_seconds: list[float]
    compute_seconds: float


class DynamicBatcher:
    def __init__(
        self,
        infer: InferFn,
        max_batch_size: int,
        max_queue_delay_us: int,
        executor: Executor | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
        inline_below_seconds: float = 0.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.delay = max_queue_delay_us / 1e6
        self.executor = executor
        self.on_batch = on_batch
        self._groups: dict[Any, list[_Pending]] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._running = 0
        # batches faster than this run in the event loop: a thread hop would cost more than the model
        self.inline_below = inline_below_seconds
        self.compute_ema = 0.0
        self._flush_scheduled = False

    @staticmethod
    def _signature(inputs: dict[str, np.ndarray]) -> Any:
        return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))

    async def submit(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Queue one request (its arrays carry the batch dimension first); its own rows come back."""
        return (await self.submit_timed(inputs))[0]

    async def submit_timed(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, float]:
        """:meth:`submit`, with the seconds this request queued and its batch computed."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        rows = {v.shape[0] if v.ndim else -1 for v in inputs.values()}
        if len(rows) != 1 or -1 in rows:
            raise ValueError("every input needs the same batch dimension (the first)")
        (n,) = rows
        if n > self.max_batch_size:
            raise ValueError(f"batch of {n} rows exceeds max_batch_size {self.max_batch_size}")
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, n, loop.create_future())
        self._groups.setdefault(self._signature(inputs), []).append(pending)
        return await self._enqueue(pending, loop)

    async def _enqueue(
        self, pending: _Pending, loop: asyncio.AbstractEventLoop
    ) -> tuple[dict[str, np.ndarray], float, float]:
        if not self._running and self.compute_ema and self.compute_ema < self.inline_below:
            # A fast model runs in the event loop: every request that reaches the batcher in this loop
            # iteration joins one batch, run on the next iteration (no task, no thread hop).
            if not self._flush_scheduled:
                self._flush_scheduled = True
                loop.call_soon(self._flush)
        else:
            if self._task is None:
                self._task = loop.create_task(self._loop())
            self._wakeup.set()
        outputs = await pending.future
        return outputs, pending.queue_seconds, pending.compute_seconds

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._groups:
            key = next(iter(self._groups))
            group = self._groups[key]
            batch = self._take(group)
            if not group:
                self._groups.pop(key, None)
            if not batch:
                continue
            started = time.perf_counter()
            try:
                outputs = self.infer(self._merge(batch))
            except Exception as exc:
                self._fail(batch, exc)
                continue
            self._deliver(batch, outputs, started)

    def _take(self, group: list[_Pending]) -> list[_Pending]:
        taken, rows = [], 0
        while group and rows + group[0].rows <= self.max_batch_size:
            item = group.pop(0)
            taken.append(item)
            rows += item.rows
        return taken

    async def _loop(self) -> None:
        while not (self._closed and not self._groups):
            if not self._groups:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # the oldest group goes first; wait until it is full or its first request waited long enough
            key = min(self._groups, key=lambda k: self._groups[k][0].enqueued)
            group = self._groups[key]
            deadline = group[0].enqueued + self.delay
            # Adaptive: while the model is idle, a request goes at once (no added latency at low load);
            # while a batch computes, the next one fills up to the size or the delay.
            while sum(p.rows for p in group) < self.max_batch_size and not self._closed and self._running:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take(group)
            if not group:
                self._groups.pop(key, None)  # (a flush may have emptied it meanwhile)
            if not batch:
                continue
            self._running += 1
            asyncio.get_running_loop().create_task(self._run(batch))
            # at most two batches at once: one computing, one being handed back
            while self._running >= 2:
                await asyncio.sleep(0)
                if self._running >= 2:
                    self._wakeup.clear()
                    await self._wakeup.wait()

    @staticmethod
    def _merge(batch: list[_Pending]) -> dict[str, np.ndarray]:
        if len(batch) == 1:
            return batch[0].inputs
        return {k: np.concatenate([p.inputs[k] for p in batch]) for k in batch[0].inputs}

    def _deliver(
        self, batch: list[_Pending], outputs: dict[str, np.ndarray], started: float, own: float | None = None
    ) -> None:
        """``own``: the model's time measured in the executor thread (what the inline decision weighs)."""
        compute = time.perf_counter() - started
        sample = compute if own is None else own
        self.compute_ema = sample if not self.compute_ema else 0.9 * self.compute_ema + 0.1 * sample
        offset = 0
        for p in batch:
            p.queue_seconds, p.compute_seconds = started - p.enqueued, compute
            if not p.future.done():
                p.future.set_result({k: v[offset : offset + p.rows] for k, v in outputs.items()})
            offset += p.rows
        if self.on_batch is not None:
            self.on_batch(BatchStats(len(batch), offset, [started - p.enqueued for p in batch], compute))

    @staticmethod
    def _fail(batch: list[_Pending], exc: BaseException) -> None:
        """The whole batch fails together: each request gets the error."""
        for p in batch:
            if not p.future.done():
                p.future.set_exception(exc)

    async def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            merged = self._merge(batch)
            own = None
            if self.compute_ema and self.compute_ema < self.inline_below:
                outputs = self.infer(merged)
            else:
                loop = asyncio.get_running_loop()
                outputs, own = await loop.run_in_executor(self.executor, timed, self.infer, merged)
            self._deliver(batch, outputs, started, own)
        except Exception as exc:
            self._fail(batch, exc)
        finally:
            self._running -= 1
            self._wakeup.set()

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        while self._running:
            await asyncio.sleep(0.001)
