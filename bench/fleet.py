"""Fleet fan-out on the real control plane: one EdgeWorkloadSet over N sites (`bench/fleet.py --cluster`).

kube-apiserver + controller-manager + scheduler + etcd with kwok nodes (scripts/cluster.py, its own cluster
`continuum-fleet-bench`, every request audited at Metadata level), N sites of one kwok node and one
near-edge EdgeNodePool each, and the operator (`continuum run`, its own process and ServiceAccount token,
so the audit log tells its calls apart). Two bursts in the same run, on the same pools:

* baseline — N EdgeWorkloads written by hand, created with one `kubectl create -f` (what a fleet takes
  without EdgeWorkloadSet);
* set — one EdgeWorkloadSet selecting the N sites' pools; the operator creates the N children.

For each: seconds from the create until every EdgeWorkload exists, is Placed (status written), and has its
worker pod Running on its site's node (the real scheduler binds, kwok runs); API calls by client from the
audit log, with the operator's share; operator CPU seconds.

    .venv/bin/python -m bench.fleet --cluster --sites 1000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.reconcile_cluster import Watch, cluster_script
from bench.report import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
NAME = "continuum-fleet-bench"
SYSTEM_NS = "continuum-system"
SA = "continuum-fleet-bench"
CHAIN = "bench.example.com/chain"
SERVICE_RANGE = "10.96.0.0/16"  # 65,534 ClusterIPs (kwokctl's default range ran out at ~250 workers)

KWOKCTL = """apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  bindAddress: 127.0.0.1
  heartbeatFactor: 1
  nodeLeaseDurationSeconds: 40
  disableQPSLimits: true
"""
AUDIT = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"""
TEMPLATE = {
    "requirements": {
        "latencyBudgetMs": 30,
        "resources": {"cpu": "100m", "memory": "64Mi"},
        "inferenceMs": {"near-edge": 5},
    },
    "tiers": {"allowed": ["near-edge"]},
    "model": {"name": "footfall", "uri": "http://models/footfall/4/model.onnx", "version": "4"},
}


def site(i: int) -> str:
    return f"store-{i:04d}"


def site_objects(count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(count):
        s = site(i)
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": s,
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {"kubernetes.io/hostname": s, "bench.example.com/store": s},
                },
                "status": {
                    "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                    "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                },
            }
        )
        out.append(
            {
                "apiVersion": "continuum.dev/v1alpha1",
                "kind": "EdgeNodePool",
                "metadata": {"name": s, "labels": {CHAIN: "bench"}},
                "spec": {
                    "tier": "near-edge",
                    "site": s,
                    "region": "eu",
                    "nodeSelector": {"matchLabels": {"bench.example.com/store": s}},
                    "network": {"rttMs": {s: 1}},
                },
            }
        )
    return out


def client_of(username: str, agent: str) -> str:
    """Who made a request: the operator by its ServiceAccount, the others by their user agent (kwokctl
    runs the control plane's components with the admin's credentials)."""
    if username == f"system:serviceaccount:{SYSTEM_NS}:{SA}":
        return "operator"
    for prefix in ("kube-scheduler", "kube-controller-manager", "kwok", "kubectl"):
        if agent.startswith(prefix):
            return prefix
    return "kube-apiserver and others"


def audit_calls(logs: Path, since: float, until: float) -> tuple[Counter[str], Counter[str]]:
    """(calls by client, the operator's calls by verb and resource) received between ``since`` and ``until``
    (epoch seconds), from the audit log and the files kube-apiserver rotated it into (a 1,000-site burst
    writes more than one file holds: reading from a byte offset of the live file found nothing)."""
    by_client: Counter[str] = Counter()
    operator: Counter[str] = Counter()
    for path in sorted(logs.glob("audit*.log*")):
        with path.open(errors="replace") as fh:
            for line in fh:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("stage") != "ResponseComplete":
                    continue
                received = event.get("requestReceivedTimestamp") or ""
                try:
                    at = datetime.fromisoformat(received.replace("Z", "+00:00")).timestamp()
                except ValueError:
                    continue
                if not since <= at <= until:
                    continue
                who = client_of(event.get("user", {}).get("username", ""), event.get("userAgent", ""))
                by_client[who] += 1
                if who == "operator":
                    ref = event.get("objectRef") or {}
                    sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
                    operator[f"{event['verb']} {ref.get('resource', '?')}{sub}"] += 1
    return by_client, operator


def burst(
    kubectl: list[str],
    k: Any,
    namespace: str,
    sites: int,
    objects: list[dict[str, Any]],
    audit: Path,
    operator_pid: int,
    timeout: float,
) -> dict[str, Any]:
    """Create ``objects`` in ``namespace`` and wait for ``sites`` EdgeWorkloads Placed with pods Running."""
    created: dict[str, float] = {}
    placed: dict[str, float] = {}
    running: dict[str, float] = {}
    wrong: list[str] = []
    lock = threading.Lock()

    def on_ew(kind: str, obj: dict[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        with lock:
            created.setdefault(name, now)
            status = obj.get("status") or {}
            if status.get("phase") == "Placed":
                placed.setdefault(name, now)

    def on_pod(kind: str, obj: dict[str, Any], now: float) -> None:
        owner = (obj["metadata"].get("labels") or {}).get("continuum.dev/workload")
        node = obj["spec"].get("nodeName")
        if owner and node and (obj.get("status") or {}).get("phase") == "Running":
            with lock:
                if owner not in running:
                    running[owner] = now
                    if not owner.endswith(node):
                        wrong.append(f"{owner} on {node}")

    k("create", "namespace", namespace)
    watches = [Watch(kubectl, "edgeworkloads", on_ew, namespace), Watch(kubectl, "pods", on_pod, namespace)]
    time.sleep(2)  # the watches' initial lists
    wall0 = time.time()
    cpu0 = cpu_seconds(operator_pid)
    started = time.perf_counter()
    k("create", "-f", "-", input=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}))
    applied = time.perf_counter() - started
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with lock:
            if len(created) >= sites and len(placed) >= sites and len(running) >= sites:
                break
        time.sleep(0.2)
    settled = time.perf_counter() - started
    operator_cpu = cpu_seconds(operator_pid) - cpu0
    time.sleep(2)  # the audit log's last writes
    for w in watches:
        w.close()
    by_client, operator_calls = audit_calls(audit.parent, wall0, wall0 + settled + 1)
    with lock:
        return {
            "applied": applied,
            "complete": len(placed) >= sites and len(running) >= sites,
            "created": max(created.values()) - started if created else None,
            "placed": max(placed.values()) - started if placed else None,
            "running": max(running.values()) - started if running else None,
            "counts": (len(created), len(placed), len(running)),
            "settled": settled,
            "wrong_node": wrong,
            "operator_cpu": operator_cpu,
            "calls": by_client,
            "operator_calls": operator_calls,
        }


def run(sites: int, timeout: float) -> dict[str, Any]:
    cs = cluster_script()
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    (tmp / "kwokctl.yaml").write_text(KWOKCTL)
    (tmp / "audit.yaml").write_text(AUDIT)
    kubeconfig = cs.up(
        NAME,
        tmp / "kwokctl.yaml",
        "--kube-audit-policy",
        str(tmp / "audit.yaml"),
        # every worker has a ClusterIP Service: 2 x N of them need more than kwokctl's default range
        "--extra-args",
        f"kube-apiserver=service-cluster-ip-range={SERVICE_RANGE}",
    )
    workdir = cs.workdir() / "clusters" / NAME
    kubectl = [str(cs.bin_dir() / "kubectl"), "--kubeconfig", str(kubeconfig)]

    def k(*args: str, input: str | None = None) -> str:
        proc = subprocess.run([*kubectl, *args], input=input, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    operator: subprocess.Popen[bytes] | None = None
    try:
        k("apply", "-f", str(ROOT / "crds"))
        k(
            "wait",
            "--for=condition=Established",
            "crd/edgeworkloads.continuum.dev",
            "crd/edgenodepools.continuum.dev",
            "crd/edgeworkloadsets.continuum.dev",
        )
        # the operator's own identity (cluster-admin here: the chart's RBAC is tested by tests/cluster)
        k("create", "namespace", SYSTEM_NS)
        k("create", "serviceaccount", SA, "-n", SYSTEM_NS)
        k(
            "create",
            "clusterrolebinding",
            SA,
            "--clusterrole=cluster-admin",
            f"--serviceaccount={SYSTEM_NS}:{SA}",
        )
        token = k("create", "token", SA, "-n", SYSTEM_NS, "--duration=2h").strip()
        cluster = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]
        op_kubeconfig = tmp / "operator.kubeconfig"
        op_kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": cluster}],
                    "users": [{"name": "op", "user": {"token": token}}],
                    "contexts": [{"name": "op", "context": {"cluster": "c", "user": "op"}}],
                    "current-context": "op",
                }
            )
        )
        t0 = time.perf_counter()
        k(
            "apply",
            "-f",
            "-",
            input=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": site_objects(sites)}),
        )
        print(
            f"cluster: {sites} kwok nodes and pools applied in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "continuum",
                "run",
                "--metrics-port",
                "0",
                "--liveness-port",
                "0",
                "--resync-seconds",
                "120",
            ],
            env={**os.environ, "KUBECONFIG": str(op_kubeconfig), "POD_ID": "fleet-bench"},
            stdout=(tmp / "operator.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while "continuum.dev/pool" not in k(
            "get", "node", site(sites - 1), "-o", "jsonpath={.metadata.labels}"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the operator did not label the pools' nodes within 300 s")
            time.sleep(0.5)
        audit = workdir / "logs" / "audit.log"
        plain = [
            {
                "apiVersion": "continuum.dev/v1alpha1",
                "kind": "EdgeWorkload",
                "metadata": {"name": f"footfall-{site(i)}", "namespace": "by-hand"},
                "spec": {**json.loads(json.dumps(TEMPLATE)), "source": {"site": site(i)}},
            }
            for i in range(sites)
        ]
        baseline = burst(kubectl, k, "by-hand", sites, plain, audit, operator.pid, timeout)
        the_set = {
            "apiVersion": "continuum.dev/v1alpha1",
            "kind": "EdgeWorkloadSet",
            "metadata": {"name": "footfall", "namespace": "by-set"},
            "spec": {"sites": {"poolSelector": {"matchLabels": {CHAIN: "bench"}}}, "template": TEMPLATE},
        }
        fleet = burst(kubectl, k, "by-set", sites, [the_set], audit, operator.pid, timeout)
        status = json.loads(k("get", "ews", "footfall", "-n", "by-set", "-o", "json")).get("status") or {}
        fleet["set_status"] = {key: status.get(key) for key in ("sites", "placed", "unschedulable", "ready")}
        fleet["log"] = str(tmp / "operator.log")
        return {"sites": sites, "baseline": baseline, "set": fleet}
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
        cs.down(NAME)


def report(result: dict[str, Any]) -> str:
    n = result["sites"]
    base, fleet = result["baseline"], result["set"]
    lines = [
        f"### Fleet fan-out: {n} sites on the real control plane",
        "",
        "| | N EdgeWorkloads by `kubectl create` (baseline) | one EdgeWorkloadSet | set / baseline |",
        "|---|---|---|---|",
    ]
    for label, key in (
        ("all EdgeWorkloads exist (s)", "created"),
        ("all Placed (s)", "placed"),
        ("all worker pods Running (s)", "running"),
    ):
        b, f = base[key], fleet[key]
        ratio = f"{f / b:.2f}" if b and f else "-"
        lines.append(
            f"| {label} | {b:.1f} | {f:.1f} | {ratio} |" if b and f else f"| {label} | {b} | {f} | - |"
        )
    b_op, f_op = base["calls"]["operator"], fleet["calls"]["operator"]
    b_all, f_all = sum(base["calls"].values()), sum(fleet["calls"].values())
    lines.append(
        f"| operator API calls (per site) | {b_op} ({b_op / n:.2f}) | {f_op} ({f_op / n:.2f}) | "
        f"{f_op / b_op:.2f} |"
        if b_op
        else f"| operator API calls | {b_op} | {f_op} | - |"
    )
    if not (b_all and f_all):  # the audit log held nothing for a burst (rotated?): say so, divide nothing
        lines.append(f"| all API calls in the window | {b_all} | {f_all} | - |")
    else:
        lines.append(f"| all API calls in the window | {b_all} | {f_all} | {f_all / b_all:.2f} |")
        lines.append(f"| operator's share of the calls | {b_op / b_all:.1%} | {f_op / f_all:.1%} | |")
    lines.append(
        f"| operator CPU (s) | {base['operator_cpu']:.1f} | {fleet['operator_cpu']:.1f} | "
        f"{fleet['operator_cpu'] / max(base['operator_cpu'], 1e-9):.2f} |"
    )
    lines += [
        "",
        "API calls by client (set burst): " + ", ".join(f"{c} {v}" for c, v in fleet["calls"].most_common()),
        "",
        "The operator's calls (set burst): "
        + ", ".join(f"{c} {v}" for c, v in fleet["operator_calls"].most_common()),
        "",
        "The operator's calls (baseline): "
        + ", ".join(f"{c} {v}" for c, v in base["operator_calls"].most_common()),
        "",
        f"complete: baseline {base['complete']} {base['counts']}, set {fleet['complete']} {fleet['counts']}; "
        f"pods on a wrong node: {len(base['wrong_node']) + len(fleet['wrong_node'])}; "
        f"set status {fleet['set_status']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cluster",
        action="store_true",
        required=True,
        help="run on the real control plane (scripts/cluster.py); the only mode",
    )
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds each burst may take")
    parser.add_argument("--json", type=Path, help="also write the raw measurements here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the operator and the cluster (finally)
    result = run(args.sites, args.timeout)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=dict))
    print(report(result))
    return 0 if result["baseline"]["complete"] and result["set"]["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
