"""`continuum demo --kubeconfig`: the demo's story told on the real control plane (its own kwok cluster)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cluster.conftest import _binaries_or_skip, cluster_script

pytestmark = pytest.mark.cluster


def test_the_demo_story_runs_on_the_real_control_plane() -> None:
    _binaries_or_skip()
    name = f"continuum-demo-{os.getpid()}"
    kubeconfig = cluster_script.up(name)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "continuum", "demo", "--no-live", "--kubeconfig", str(kubeconfig)],
            capture_output=True, text=True, timeout=300, check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        out = proc.stdout
        assert "kube-apiserver at https://127.0.0.1" in out
        assert "line-defect-inspection moved make-before-break and is Ready again." in out
        # the Events come from the real components too (the scheduler binding the new replica)
        assert "Replaced" in out and "Scheduled" in out
    finally:
        cluster_script.down(name)
