"""``continuum demo``: the operator on the examples against an embedded API emulator, no cluster needed.

1. start the emulator on 127.0.0.1 and a stand-in kubelet (marks replicas ready on ready nodes);
2. load examples/cluster (nodes, pools), start the real operator (kopf) in-process;
3. apply examples/workloads and show a live table until every workload is settled;
4. mark munich-ipc-1 (the only GPU node of pool munich-line) NotReady and show line-defect-inspection
   moving to the Frankfurt MEC after its grace period, with the Kubernetes Events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from continuum.controller.runner import operator
from continuum.controller.settings import OperatorSettings
from rich.console import Console
from rich.live import Live
from rich.table import Table

from continuum_demo.emulator import EmulatedCluster
from continuum_demo.emulator.kubelet import run_fake_kubelet
from continuum_demo.stages import EmulatorStage, LiveStage, Stage

WORKLOADS = "continuum.dev/v1alpha1/edgeworkloads"
FAILING_NODE = "munich-ipc-1"
MOVING = ("manufacturing", "line-defect-inspection")


@dataclass
class DemoOptions:
    keep_open: bool = False
    grace_seconds: float = 3.0
    examples: Path | None = None
    live: bool = True
    timeout: float = 45.0
    kubeconfig: Path | None = None  # a real control plane with kwok nodes instead of the emulator


def _examples_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / "examples" / "cluster").is_dir():
            return base / "examples"
    raise SystemExit("error: examples/ not found; pass --examples PATH")


def _docs(folder: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            out.extend(doc["items"] if str(doc.get("kind", "")).endswith("List") else [doc])
    return out


def workload_table(cluster: Stage, title: str) -> Table:
    table = Table(title=title, header_style="bold")
    for col in ("NAMESPACE", "NAME", "TIER", "POOL", "LATENCY", "PHASE", "READY", "WHY"):
        table.add_column(col, no_wrap=col != "WHY", overflow="fold", max_width=60 if col == "WHY" else None)
    for obj in cluster.list(WORKLOADS):
        meta, status = obj["metadata"], obj.get("status") or {}
        placement = status.get("placement") or {}
        ready = next((c["status"] for c in status.get("conditions", []) if c["type"] == "Ready"), "-")
        phase = status.get("phase") or "Pending"
        color = {"Placed": "green", "Unschedulable": "red", "Invalid": "red"}.get(phase, "yellow")
        why = status.get("hint") or status.get("message") or ""
        table.add_row(
            meta["namespace"],
            meta["name"],
            placement.get("tier", "-"),
            placement.get("pool", "-"),
            f"{placement['estimatedLatencyMs']:g} ms" if "estimatedLatencyMs" in placement else "-",
            f"[{color}]{phase}[/]",
            ready,
            why,
        )
    return table


def _settled(cluster: Stage) -> bool:
    items = cluster.list(WORKLOADS)
    for obj in items:
        status = obj.get("status") or {}
        if status.get("phase") not in ("Placed", "Unschedulable", "Invalid"):
            return False
        if status.get("phase") == "Placed" and not any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        ):
            return False
    return bool(items)


async def _watch(
    cluster: Stage,
    console: Console,
    title: str,
    done: Callable[[], bool],
    timeout: float,
    live: bool,
    stopped: Callable[[], bool],
) -> bool:
    deadline = time.monotonic() + timeout
    ctx = (
        Live(workload_table(cluster, title), console=console, refresh_per_second=4)
        if live
        else contextlib.nullcontext()
    )
    with ctx as view:
        while time.monotonic() < deadline:
            if view is not None:
                view.update(workload_table(cluster, title))
            if done() or stopped():
                break
            await asyncio.sleep(0.25)
    if not live:
        console.print(workload_table(cluster, title))
    return bool(done())


async def _demo(options: DemoOptions, console: Console) -> int:
    examples = _examples_dir(options.examples)
    if options.kubeconfig is not None:  # a real control plane with kwok nodes (`make cluster`)
        stage = LiveStage(options.kubeconfig)
        stage.install_crds()
        stage.provide_volumes()
        console.print(f"[bold]kube-apiserver[/] at {stage.url}  (kubeconfig: {stage.kubeconfig}; kwok nodes)")
        return await _story(stage, options, console, examples)
    workdir = Path(tempfile.mkdtemp(prefix="continuum-demo-"))
    async with EmulatedCluster(workdir=workdir) as cluster:
        console.print(
            f"[bold]Kubernetes API emulator[/] on {cluster.url}  (kubeconfig: {cluster.kubeconfig})"
        )
        kubelet = asyncio.create_task(run_fake_kubelet(cluster.store, cluster.emulator._lock))
        try:
            return await _story(EmulatorStage(cluster), options, console, examples)
        finally:
            kubelet.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await kubelet


async def _story(cluster: Stage, options: DemoOptions, console: Console, examples: Path) -> int:
    """Load the examples, run the operator, place the workloads, fail the Munich GPU node, show the move."""
    for obj in _docs(examples / "cluster"):
        cluster.apply(obj)
    console.print(
        f"loaded {len(cluster.list('v1/nodes'))} nodes and "
        f"{len(cluster.list('continuum.dev/v1alpha1/edgenodepools'))} EdgeNodePools from {examples / 'cluster'}"
    )
    stop = asyncio.Event()
    closing = asyncio.Event()
    _on_signals(closing.set)
    run = asyncio.create_task(
        operator(
            OperatorSettings(
                metrics_port=0,
                liveness_port=0,
                grace_seconds=options.grace_seconds,
                stabilization_seconds=3600,
                resync_seconds=1.0,
            ),
            str(cluster.kubeconfig),
            stop_flag=stop,
        )
    )

    def stopped() -> bool:
        return run.done() or closing.is_set()

    try:
        workloads = _docs(examples / "workloads")
        for ns in sorted({o["metadata"]["namespace"] for o in workloads}):
            if cluster.get("v1/namespaces", ns) is None:
                cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for obj in workloads:
            cluster.apply(obj)
        console.print(
            f"applied {len(workloads)} EdgeWorkloads from {examples / 'workloads'}; the operator places them:"
        )
        settled = await _watch(
            cluster,
            console,
            "EdgeWorkloads",
            lambda: _settled(cluster),
            options.timeout,
            options.live,
            stopped,
        )
        if stopped():
            return _stopped_early(console)
        if not settled:
            console.print("[red]error:[/] the workloads did not settle in time")
            return 1
        mark = cluster.mark()
        how = cluster.fail_node(FAILING_NODE)
        console.print(
            f"\n[bold yellow]node {FAILING_NODE} is {how}[/] (the only GPU node of pool munich-line); "
            f"grace period {options.grace_seconds:g}s ..."
        )

        def moved() -> bool:
            obj = cluster.get(WORKLOADS, MOVING[1], MOVING[0]) or {}
            status = obj.get("status") or {}
            placement = status.get("placement") or {}
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
            )
            return (
                placement.get("pool") not in (None, "munich-line")
                and ready
                and not status.get("previousPlacement")
            )

        ok = await _watch(
            cluster,
            console,
            "EdgeWorkloads after the node failure",
            moved,
            options.timeout,
            options.live,
            stopped,
        )
        if stopped():
            return _stopped_early(console)
        events = Table(title="Kubernetes Events", header_style="bold")
        for col in ("TYPE", "REASON", "OBJECT", "MESSAGE"):
            events.add_column(col, overflow="fold")
        for event in cluster.events_since(mark):
            involved = event.get("involvedObject") or {}
            events.add_row(
                event.get("type", ""),
                event.get("reason", ""),
                f"{involved.get('kind', '')}/{involved.get('name', '')}",
                event.get("message", ""),
            )
        console.print(events)
        if not ok:
            console.print("[red]error:[/] line-defect-inspection was not re-placed in time")
            return 1
        console.print("[green]line-defect-inspection moved make-before-break and is Ready again.[/]")
        if options.keep_open:
            console.print(
                f"\nThe emulator stays up. Try:\n  kubectl --kubeconfig {cluster.kubeconfig} get nodes -L continuum.dev/pool\n"
                f"  kubectl --kubeconfig {cluster.kubeconfig} get edgeworkloads -A\n"
                "Press Ctrl+C (or send SIGTERM) to stop."
            )
            await _until_signal(run, closing)
            console.print("stopping")
        return 0
    finally:
        _on_signals(None)
        stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(run, 10)


EXIT_INTERRUPTED = 130


def _stopped_early(console: Console) -> int:
    """A signal arrived (ours, or kopf's, which stops only the operator) before the demo finished."""
    console.print("[yellow]interrupted: the demo ends early[/]")
    return EXIT_INTERRUPTED


def _on_signals(handler: Callable[[], None] | None) -> None:
    """Route SIGINT and SIGTERM to ``handler`` (None: back to the defaults). kopf installs its own
    handlers when the operator starts (they stop only the operator); installing ours before that
    covers the start, and again at the end (``--keep-open``) makes a signal end the whole demo."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            if handler is None:
                loop.remove_signal_handler(sig)
            else:
                loop.add_signal_handler(sig, handler)


async def _until_signal(operator_task: asyncio.Task[None], closing: asyncio.Event) -> None:
    """Wait for SIGINT or SIGTERM (or the operator ending)."""
    _on_signals(closing.set)
    waiter = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait({operator_task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


def run_demo(options: DemoOptions) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("kopf", "aiohttp.access", "kmock"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # the demo shows status and Events instead
    console = Console(width=None if sys.stdout.isatty() else 150)
    started = time.monotonic()
    try:
        code = asyncio.run(_demo(options, console))
    except KeyboardInterrupt:
        return 0
    console.print(f"demo finished in {time.monotonic() - started:.1f}s")
    return code


if __name__ == "__main__":
    sys.exit(run_demo(DemoOptions()))
