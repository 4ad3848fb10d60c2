"""The reconcile benchmark on the real control plane (`bench/reconcile.py --cluster`).

kube-apiserver + controller-manager + scheduler + etcd with kwok nodes (scripts/cluster.py, its own cluster
`continuum-bench`, every request audited), P pools of 10 kwok nodes each, the operator (`continuum run`,
its own process, a ServiceAccount token of its own so the audit log tells its calls apart), and W
EdgeWorkloads created in one burst (32 concurrent creates, as the emulator bench's client). Timestamps: the
create answered by the apiserver, then from watches opened before the burst: its Deployment ADDED, its status
written, and every replica Running on a node of the chosen pool (the real scheduler binds, kwok runs).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.report import cpu_seconds, free_port

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
NAME = "continuum-bench"
NAMESPACE = "continuum-system"
SA = "continuum-bench"


def cluster_script() -> Any:
    spec = importlib.util.spec_from_file_location("continuum_cluster_script", ROOT / "scripts" / "cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Watch:
    """`kubectl get --watch` of one resource (all namespaces, or one); calls `on(event_type, obj, t)` for each event. kubectl is started
    again if it exits (an apiserver under load may end a watch); the re-list repeats ADDED events, which the
    callers ignore for what they already saw."""

    def __init__(self, kubectl: list[str], resource: str, on: Any, namespace: str | None = None) -> None:
        scope = ["-n", namespace] if namespace else ["-A"]
        self.cmd = [*kubectl, "get", resource, *scope, "--watch", "--output-watch-events", "-o", "json"]
        self.closed = False
        self.proc: subprocess.Popen[str] | None = None
        self.thread = threading.Thread(target=self._read, args=(on,), daemon=True)
        self.thread.start()

    def _read(self, on: Any) -> None:
        while not self.closed:
            self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            assert self.proc.stdout
            for line in self.proc.stdout:
                now = time.perf_counter()
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                obj = event.get("object") or {}
                # not ERROR (a Status) or BOOKMARK, and only namespaced objects (all of ours are)
                if event.get("type") in ("ADDED", "MODIFIED", "DELETED") and obj.get("metadata", {}).get("namespace"):
                    on(event["type"], obj, now)
            self.proc.wait()
            time.sleep(0.2)

    def close(self) -> None:
        self.closed = True
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def component_cpu(workdir: Path) -> dict[str, float]:
    """CPU seconds of each control-plane process of the cluster (from /proc, matched by its binary path)."""
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        if cmd.startswith(str(workdir)):
            out[Path(cmd).name] = out.get(Path(cmd).name, 0.0) + cpu_seconds(int(proc.name))
    return out


async def post_all(kubeconfig: Path, objs: list[dict[str, Any]], concurrency: int = 32) -> dict[str, float]:
    """Create the objects 32 at a time as the admin (the emulator bench's client does the same), so the operator
    meets a real backlog (kubectl would send them one by one); returns when each create was answered."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]

    def path(value: str) -> str:
        return str(value if Path(value).is_absolute() else kubeconfig.parent / value)

    ctx = ssl.create_default_context(cafile=path(cluster["certificate-authority"]))
    ctx.load_cert_chain(path(user["client-certificate"]), path(user["client-key"]))
    sem = asyncio.Semaphore(concurrency)
    created: dict[str, float] = {}
    async with aiohttp.ClientSession(cluster["server"], connector=aiohttp.TCPConnector(ssl=ctx)) as session:

        async def post(obj: dict[str, Any]) -> None:
            api = obj["apiVersion"]
            base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
            ns = obj["metadata"].get("namespace")
            url = f"{base}{f'/namespaces/{ns}' if ns else ''}/{obj['kind'].lower()}s"
            async with sem, session.post(url, json=obj) as resp:
                if resp.status >= 300:
                    raise RuntimeError(f"create {url} {obj['metadata']['name']}: {resp.status} {await resp.text()}")
                created[f"{ns}/{obj['metadata']['name']}"] = time.perf_counter()

        await asyncio.gather(*(post(o) for o in objs))
    return created


def run(workloads: int, pools: int, nodes_per_pool: int, objects: Any, workload: Any, console: Any) -> dict[str, Any]:
    """Returns the measurements (seconds, counts) of one burst on the real control plane."""
    cs = cluster_script()
    kubeconfig = cs.up(NAME, HERE / "cluster" / "kwokctl.yaml",
                       "--kube-audit-policy", str(HERE / "cluster" / "audit-policy.yaml"))
    workdir = cs.workdir() / "clusters" / NAME
    kubectl = [str(cs.bin_dir() / "kubectl"), "--kubeconfig", str(kubeconfig)]

    def k(*args: str, input: str | None = None) -> str:
        proc = subprocess.run([*kubectl, *args], input=input, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    operator: subprocess.Popen[bytes] | None = None
    watches: list[Watch] = []
    try:
        k("apply", "-f", str(ROOT / "crds"))
        k("wait", "--for=condition=Established", "crd/edgeworkloads.continuum.dev", "crd/edgenodepools.continuum.dev")
        # the operator's own identity (cluster-admin here: the RBAC itself is tested by tests/cluster)
        k("create", "namespace", NAMESPACE)
        k("create", "serviceaccount", SA, "-n", NAMESPACE)
        k("create", "clusterrolebinding", SA, "--clusterrole=cluster-admin", f"--serviceaccount={NAMESPACE}:{SA}")
        token = k("create", "token", SA, "-n", NAMESPACE, "--duration=2h").strip()
        admin = yaml.safe_load(kubeconfig.read_text())
        cluster = admin["clusters"][0]["cluster"]
        op_kubeconfig = Path(tempfile.mkdtemp()) / "operator.kubeconfig"
        op_log = op_kubeconfig.with_name("operator.log")
        op_kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "op", "user": {"token": token}}],
            "contexts": [{"name": "op", "context": {"cluster": "c", "user": "op"}}], "current-context": "op",
        }))
        objs = objects(pools, nodes_per_pool)
        for obj in objs:
            if obj["kind"] == "Node":
                obj["metadata"].setdefault("annotations", {})["kwok.x-k8s.io/node"] = "fake"
                obj["status"].pop("conditions", None)
                obj["status"]["allocatable"]["pods"] = "110"
                obj["status"]["capacity"] = dict(obj["status"]["allocatable"])
        t0 = time.perf_counter()
        asyncio.run(post_all(kubeconfig, [
            *objs, *({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{i}"}} for i in range(10))]))
        console.print(f"cluster: {len(objs)} nodes and pools applied in {time.perf_counter() - t0:.1f} s")
        node_pool = {o["metadata"]["name"]: o["metadata"]["labels"]["bench/pool"] for o in objs if o["kind"] == "Node"}
        from bench.reconcile import reconciles, watch_events

        metrics_port = free_port()
        operator = subprocess.Popen(
            [sys.executable, "-m", "continuum", "run", "--metrics-port", str(metrics_port), "--liveness-port", "0",
             "--resync-seconds", "120"],
            env={**os.environ, "KUBECONFIG": str(op_kubeconfig), "POD_ID": "bench"},
            stdout=op_log.open("wb"), stderr=subprocess.STDOUT,
        )
        last = f"pool-{pools - 1:03d}-n{nodes_per_pool - 1}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if "continuum.dev/pool" in k("get", "node", last, "-o", "jsonpath={.metadata.labels}"):
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the operator did not label the pools' nodes within 180 s; its log: {op_log}\n"
                               + op_log.read_text(errors="replace")[-3000:])

        created: dict[str, float] = {}
        deployed: dict[str, float] = {}
        statused: dict[str, float] = {}
        placed_pool: dict[str, str] = {}
        running: dict[str, float] = {}
        replicas_running: dict[str, set[str]] = {}
        wrong_pool: list[str] = []
        lock = threading.Lock()

        def on_ew(kind: str, obj: dict[str, Any], now: float) -> None:
            key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            with lock:
                status = obj.get("status") or {}
                if status.get("phase"):
                    statused.setdefault(key, now)
                if (status.get("placement") or {}).get("pool"):
                    placed_pool[key] = status["placement"]["pool"]

        def on_deploy(kind: str, obj: dict[str, Any], now: float) -> None:
            owner = (obj["metadata"].get("labels") or {}).get("continuum.dev/workload")
            if owner and kind == "ADDED":
                with lock:
                    deployed.setdefault(f"{obj['metadata']['namespace']}/{owner}", now)

        def on_pod(kind: str, obj: dict[str, Any], now: float) -> None:
            owner = (obj["metadata"].get("labels") or {}).get("continuum.dev/workload")
            node = obj["spec"].get("nodeName")
            if not owner or not node or (obj.get("status") or {}).get("phase") != "Running":
                return
            key = f"{obj['metadata']['namespace']}/{owner}"
            with lock:
                want = (obj["spec"].get("nodeSelector") or {}).get("continuum.dev/pool")
                if node_pool.get(node) != want:
                    wrong_pool.append(f"{obj['metadata']['name']} on {node}")
                replicas_running.setdefault(key, set()).add(obj["metadata"]["name"])
                running.setdefault(key, now)

        watches = [Watch(kubectl, "edgeworkloads", on_ew), Watch(kubectl, "deployments", on_deploy),
                   Watch(kubectl, "pods", on_pod)]
        time.sleep(2)  # the watches' initial lists
        audit = workdir / "logs" / "audit.log"
        audit_offset = audit.stat().st_size if audit.exists() else 0
        cpu0, comp0 = cpu_seconds(operator.pid), component_cpu(workdir)
        reconciled0, watched0 = reconciles(metrics_port), watch_events(metrics_port)
        started = time.perf_counter()
        accepted = asyncio.run(post_all(kubeconfig, [workload(i) for i in range(workloads)]))
        with lock:
            created.update(accepted)  # the apiserver answered the create: the clock starts there
        applied = time.perf_counter() - started
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with lock:
                done = len(deployed) >= workloads and len(statused) >= workloads and len(running) >= workloads
            if done:
                break
            time.sleep(0.2)
        settled = time.perf_counter() - started
        operator_cpu = cpu_seconds(operator.pid) - cpu0
        reconciled = reconciles(metrics_port) - reconciled0
        watched = watch_events(metrics_port) - watched0
        comp1 = component_cpu(workdir)
        time.sleep(1)
        calls: Counter[str] = Counter()
        user = f"system:serviceaccount:{NAMESPACE}:{SA}"
        with audit.open() as fh:
            fh.seek(audit_offset)
            for line in fh:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("user", {}).get("username") != user or event.get("stage") != "ResponseComplete":
                    continue
                ref = event.get("objectRef") or {}
                sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
                calls[f"{event['verb']} {ref.get('resource', '?')}{sub}"] += 1
        with lock:
            to_deploy = [deployed[x] - created[x] for x in deployed if x in created]
            to_running = [running[x] - created[x] for x in running if x in created]
            return {
                "applied": applied,
                "settled": settled,
                "complete": len(deployed) >= workloads and len(running) >= workloads,
                "to_deploy": to_deploy,
                "to_running": to_running,
                "wrong_pool": list(wrong_pool),
                "operator_cpu": operator_cpu,
                "reconciles": reconciled,
                "watched": watched,
                "components_cpu": {n: comp1.get(n, 0.0) - comp0.get(n, 0.0) for n in comp1},
                "calls": calls,
                "p50": statistics.median(to_deploy) if to_deploy else None,
            }
    finally:
        for w in watches:
            w.close()
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
        cs.down(NAME)
