"""Edge filtering of streamed results (pure): with ``--ingest-filter events`` a result goes upstream only
as an *event* when a row's top score is above ``--event-threshold`` (the same rule as the state's
``record_inference``: scores that already look like probabilities as they are, else a softmax), and
every result is counted into a periodic *summary* (rows and argmax class counts per model/output).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAX_EVENTS_PER_MESSAGE = 64


def probabilities(rows: np.ndarray) -> np.ndarray:
    if rows.shape[1] == 1 or (rows.min() >= 0.0 and rows.max() <= 1.0):
        return rows
    shifted = rows - rows.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def events_of(
    model: str, msg_id: str | None, outputs: dict[str, np.ndarray], threshold: float, batched: bool
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(events, class counts ``"model/output/class/N"`` plus ``"model/rows"``) of one result."""
    events: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    rows_total = 0
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.dtype.kind != "f" or array.size == 0:
            continue
        rows = array.reshape(array.shape[0], -1) if batched and array.ndim > 1 else array.reshape(1, -1)
        rows_total = max(rows_total, rows.shape[0])
        scores = probabilities(rows.astype(np.float64, copy=False))
        classes = scores.argmax(axis=1)
        top = scores[np.arange(len(classes)), classes]
        for cls, n in zip(*np.unique(classes, return_counts=True), strict=True):
            key = f"{model}/{name}/class/{int(cls)}"
            counts[key] = counts.get(key, 0) + int(n)
        for row in np.nonzero(top > threshold)[0][: MAX_EVENTS_PER_MESSAGE - len(events)]:
            score = float(top[row])
            if math.isfinite(score):
                events.append({"id": msg_id, "model": model, "output": name, "row": int(row),
                               "class": int(classes[row]), "score": round(score, 6)})  # fmt: skip
    if rows_total:
        counts[f"{model}/rows"] = rows_total
    return events, counts


@dataclass
class Summary:
    """Counts since ``since`` (unix seconds); saved with every outbox commit so a crash loses none."""

    since: float = field(default_factory=time.time)
    messages: int = 0
    events: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, counts: dict[str, int], events: int) -> None:
        self.messages += 1
        self.events += events
        for k, n in counts.items():
            self.counts[k] = self.counts.get(k, 0) + n

    def dumps(self) -> str:
        return json.dumps({"since": self.since, "messages": self.messages, "events": self.events,
                           "counts": self.counts}, sort_keys=True)  # fmt: skip

    @classmethod
    def loads(cls, text: str | None) -> Summary:
        if not text:
            return cls()
        doc = json.loads(text)
        return cls(float(doc["since"]), int(doc["messages"]), int(doc["events"]),
                   {str(k): int(v) for k, v in doc["counts"].items()})  # fmt: skip

    def close(self, now: float) -> bytes:
        """The summary message for the window [since, now)."""
        return json.dumps({"kind": "summary", "from": self.since, "to": now, "messages": self.messages,
                           "events": self.events, "counts": self.counts}, sort_keys=True).encode()  # fmt: skip
