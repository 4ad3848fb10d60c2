"""`continuum demo --keep-open`: kubectl sees the printer columns, and SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_keep_open_serves_kubectl_and_stops_on_sigterm(tmp_path: Path):
    out = tmp_path / "demo.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "continuum", "demo", "--keep-open", "--no-live", "--grace-seconds", "1"],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "200"},
        )
    try:
        deadline = time.monotonic() + 120
        while "stays up" not in out.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, out.read_text()
            time.sleep(0.25)
        text = out.read_text()
        assert "stays up" in text, text
        if shutil.which("kubectl"):
            kubeconfig = re.search(r"--kubeconfig (\S+)", text)
            assert kubeconfig is not None
            got = subprocess.run(
                ["kubectl", "--kubeconfig", kubeconfig[1], "get", "ew", "-A"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
            assert got.split("\n")[0].split()[:6] == ["NAMESPACE", "NAME", "TIER", "POOL", "LATENCY", "PHASE"]
            assert re.search(r"line-defect-inspection\s+regional-mec\s+mec-frankfurt\s+\S+\s+Placed", got), (
                got
            )
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, out.read_text()
        assert time.monotonic() - started < 15
        assert "stopping" in out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            pytest.fail("the demo did not stop on SIGTERM:\n" + out.read_text())


def test_demo_without_the_demo_extra_names_the_pip_command():
    """Without kmock (the demo extra), `continuum demo` says what to install instead of a traceback."""
    code = (
        "import sys; sys.modules['kmock'] = None\n"  # what an install without the demo extra looks like
        "from continuum.cli import main\n"
        "sys.exit(main(['demo', '--no-live']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'continuum[demo]'" in proc.stderr and "Traceback" not in proc.stderr


def test_sigterm_while_the_demo_runs_ends_it_early(tmp_path: Path):
    """kopf takes the signal and stops the operator; the demo notices and exits 130 instead of waiting
    out its timeouts."""
    out = tmp_path / "demo.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "continuum", "demo", "--no-live"],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "applied" not in out.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, out.read_text()
            time.sleep(0.1)
        assert "applied" in out.read_text(), out.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 130, out.read_text()
        assert "the demo ends early" in out.read_text()  # not killed by the default action
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
