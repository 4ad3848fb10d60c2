"""What the drift monitor tests share: a settable clock and a reference profile written from a linear model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from continuum_worker.drift import Profile


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def write_reference(tmp_path: Path, rng: np.random.Generator, w: np.ndarray, rows: int = 20_000) -> Path:
    """A reference of input ``x`` (normal, ``w.shape[0]`` features) and output ``y = x @ w``."""
    x = rng.normal(size=(rows, w.shape[0])).astype(np.float32)
    p = Profile("m", "1")
    p.observe({"x": x}, {"y": x @ w}, True)
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(p.flush().to_json()))
    return path
