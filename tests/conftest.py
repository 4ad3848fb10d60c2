"""Shared test helpers. Paths are relative to the repository root."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture
def repo_root() -> Path:
    return ROOT
