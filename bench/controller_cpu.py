"""The operator's own work per workload, in-process and without a network: the controller (watch events in,
reconcile, decision, rendering, status, Events) against an in-memory API that answers at once.

    .venv/bin/python bench/controller_cpu.py [--workloads N] [--pools P] [--gap-ms G] [--profile FILE]

What it counts is what the operator process does for a workload apart from its sockets: JSON encoding of
the requests and decoding of the answers and watch events, the cache, the claims ledger, the decision,
the manifests, the status, the Events. The in-memory server's own work (storing, merging, encoding its
answers and watch lines) is measured separately and subtracted. ``--gap-ms`` makes each workload wait
that long before it is reconciled (the event loop sleeps meanwhile), as in a burst that queues behind a
slower API server: on this machine the same code costs about twice as much after 15 ms of sleep as back
to back (caches and TLBs are cold again). That was most of the gap between this figure and the
operator's CPU in bench/reconcile.py while the emulator answered slowly (2.0–3.1 ms per workload there
when each call cost the emulator 3.6 ms of CPU; 1.2–1.4 ms once it cost 0.4 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from continuum_demo.emulator.store import merge_patch

from bench.reconcile import cluster_objects, workload

PLURALS = {"Node": "api/v1/nodes", "EdgeNodePool": "apis/continuum.dev/v1alpha1/edgenodepools"}


class Server:
    """Objects by path; creates and merge-patches; the watch lines of what changed. Its own CPU time is
    kept in :attr:`cpu` (the bench subtracts it)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 1000
        self.cpu = 0.0
        self.calls: dict[tuple[str, str], int] = {}

    def handle(self, method: str, path: str, payload: bytes | None) -> tuple[bytes, tuple[str, bytes] | None]:
        """(answer body, (watched kind, watch line) or None)."""
        started = time.thread_time()
        body = orjson.loads(payload) if payload else None
        parts = path.strip("/").split("/")
        if parts[-1] == "status":
            parts = parts[:-1]
        self.version += 1
        plural = parts[-1] if method == "POST" else parts[-2]
        self.calls[(method, plural)] = self.calls.get((method, plural), 0) + 1
        if method == "POST":
            assert body is not None
            meta = {**body["metadata"], "resourceVersion": str(self.version), "uid": f"u{self.version}"}
            obj = {**body, "metadata": {**meta, "generation": 1}}
            self.objects["/".join([*parts, meta["name"]])] = obj
            event = "ADDED"
        elif method == "PATCH":
            key = "/".join(parts)
            obj = merge_patch(self.objects[key], body or {})
            obj["metadata"] = {**obj["metadata"], "resourceVersion": str(self.version)}
            self.objects[key] = obj
            event = "MODIFIED"
        else:
            obj, event = {}, ""
        kind = {"deployments": "Rendered", "edgeworkloads": "EdgeWorkload"}.get(plural)
        line = (kind, orjson.dumps({"type": event, "object": obj})) if kind and event else None
        answer = orjson.dumps(obj)
        self.cpu += time.thread_time() - started
        return answer, line


def run(
    n_workloads: int = 1000, n_pools: int = 100, gap: float = 0.0, profile: Path | None = None
) -> dict[str, Any]:
    """CPU seconds per workload the controller spends (the server's subtracted), and what was called."""
    from continuum.controller.events import EventPoster
    from continuum.controller.kube import KubeApi
    from continuum.controller.manager import Controller
    from continuum.controller.runner import GC_THRESHOLDS
    from continuum.controller.settings import OperatorSettings
    from continuum.controller.watch import KINDS, Stream

    server = Server()

    class Api(KubeApi):
        """The operator's KubeApi with the wire replaced: the body encoded as it would be sent, the answer
        decoded as it would be received, the watch line of the change delivered to its stream."""

        def __init__(self) -> None:
            super().__init__("http://in-memory")

        async def request(  # type: ignore[override]
            self,
            method: str,
            path: str,
            body: Any = None,
            params: Any = None,
            content_type: str = "",
            decode: bool = True,
        ) -> dict[str, Any]:
            payload = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS) if body is not None else None
            answer, line = server.handle(method, path, payload)
            if line is not None:
                stream = streams[line[0]]
                asyncio.get_running_loop().call_soon(lambda: stream.event(orjson.loads(line[1]), "0"))
            if not decode:
                return {}
            data = orjson.loads(answer)
            return data if isinstance(data, dict) else {}

    poster = EventPoster()
    controller = Controller(OperatorSettings(), post_event=poster)
    api = Api()
    controller.api = poster.api = api
    cache = controller.cache
    streams = {
        "Rendered": Stream(KINDS[3], None, cache, controller.observe, lambda: None),
        "EdgeWorkload": Stream(KINDS[5], None, cache, controller.observe, lambda: None),
    }
    queue = controller.queue

    async def drain() -> None:
        while len(queue) or queue._timers:
            if not len(queue):
                await asyncio.sleep(0.005)
                continue
            key = await queue.get()
            if gap:
                await asyncio.sleep(gap)
            try:
                await controller.process(key)
            finally:
                queue.done(key)
        while not poster._queue.empty():
            await poster._post(poster._queue.get_nowait())

    async def main() -> dict[str, Any]:
        for i, obj in enumerate(cluster_objects(n_pools)):
            meta = {**obj["metadata"], "resourceVersion": str(i + 1), "uid": f"x{i}", "generation": 1}
            obj = {**obj, "metadata": meta}
            server.objects[f"{PLURALS[obj['kind']]}/{meta['name']}"] = obj
            controller.observe(obj["kind"], "ADDED", obj)
        cache.primed.set()
        await drain()  # the pools' nodes labelled, their statuses written
        lines = []
        for i in range(n_workloads):
            obj = workload(i)
            server.version += 1
            obj["metadata"].update(resourceVersion=str(server.version), uid=f"w{i}", generation=1)
            meta = obj["metadata"]
            server.objects[
                f"apis/continuum.dev/v1alpha1/namespaces/{meta['namespace']}/edgeworkloads/{meta['name']}"
            ] = obj
            lines.append(orjson.dumps({"type": "ADDED", "object": obj}))
        server.calls.clear()
        gc.collect()
        gc.freeze()  # as `continuum run` does once its caches are primed
        gc.set_threshold(*GC_THRESHOLDS)
        server.cpu = 0.0
        profiler = cProfile.Profile() if profile else None
        started = time.process_time()
        if profiler:
            profiler.enable()
        for raw in lines:
            streams["EdgeWorkload"].event(orjson.loads(raw), "0")
        await drain()
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)
        total = time.process_time() - started
        return {
            "cpu": (total - server.cpu) / n_workloads,
            "server_cpu": server.cpu / n_workloads,
            "calls": dict(server.calls),
        }

    return asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workloads", type=int, default=1000)
    parser.add_argument("--pools", type=int, default=100)
    parser.add_argument("--gap-ms", type=float, default=0.0)
    parser.add_argument("--profile", type=Path)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    out = run(args.workloads, args.pools, args.gap_ms / 1000, args.profile)
    if args.json:
        print(orjson.dumps({"cpu": out["cpu"], "server_cpu": out["server_cpu"]}).decode())
        return 0
    calls = ", ".join(f"{m.lower()} {p}: {v}" for (m, p), v in sorted(out["calls"].items()))
    print(
        f"{args.workloads:,} workloads x {args.pools} pools, {args.gap_ms:g} ms between workloads: "
        f"{out['cpu'] * 1000:.3f} ms CPU per workload in the controller "
        f"(the in-memory server's own {out['server_cpu'] * 1000:.3f} ms subtracted); {calls}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
