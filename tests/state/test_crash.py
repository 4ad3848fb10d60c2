"""A writer subprocess is SIGKILLed again and again; no update it acknowledged is ever lost."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from continuum_worker.state.doc import StateDoc
from continuum_worker.state.store import Store

WRITER = Path(__file__).with_name("writer_proc.py")


def _recover(state_dir: Path) -> tuple[StateDoc, Store]:
    doc = StateDoc(retention=1_000_000)
    store = Store(state_dir)
    store.open(doc.load)
    return doc, store


def _run_and_kill(state_dir: Path, start_id: int, mode: str, runtime: float) -> tuple[list[int], bool]:
    """Start the writer, read its acks for ``runtime`` seconds, SIGKILL it; returns the acked ids."""
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(state_dir), str(start_id), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    acked: list[int] = []
    compacted = False
    buffer = b""
    deadline = None
    try:
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 0.01)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line == b"ready":
                        deadline = time.monotonic() + runtime
                    elif line.startswith(b"ack "):
                        acked.append(int(line[4:]))
                    elif line == b"compacted":
                        compacted = True
            if deadline is not None and time.monotonic() >= deadline:
                break
            if proc.poll() is not None and not ready:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        err = proc.stderr.read()
        proc.wait()
    # acks printed before the kill but read afterwards count too: they were durable when printed
    for line in (buffer + rest).split(b"\n"):
        if line.startswith(b"ack "):
            acked.append(int(line[4:]))
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    return acked, compacted


@pytest.mark.parametrize("mode", ["single", "group", "compact"])
def test_sigkill_loop_loses_no_acknowledged_update(tmp_path: Path, mode: str) -> None:
    rng = random.Random(mode)
    all_acked: set[int] = set()
    next_id = 0
    compactions_seen = False
    for _ in range(6):
        acked, compacted = _run_and_kill(tmp_path, next_id, mode, runtime=rng.uniform(0.05, 0.35))
        compactions_seen |= compacted
        all_acked.update(acked)
        doc, store = _recover(tmp_path)
        try:
            present = {e["event"]["id"] for e in doc.events("acks")}
            lost = all_acked - present
            assert not lost, f"acknowledged but lost after SIGKILL: {sorted(lost)[:20]}"
            assert doc.counter("writes")["value"] == len(present)
            assert store.recovery.dropped == 0, store.recovery.damage
            next_id = max(present | all_acked, default=-1) + 1
        finally:
            store.close()
    assert len(all_acked) > 20
    if mode == "compact":
        assert compactions_seen
