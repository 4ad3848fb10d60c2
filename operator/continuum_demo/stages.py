"""Where `continuum demo` plays: the embedded emulator, or a real control plane with kwok nodes.

Both answer the few calls the demo makes (apply, get, list, fail a node, Events since a mark) with the same
shapes, so the story in demo.py is told once. The live stage talks to kube-apiserver with the `kubernetes`
client (the operator extra) from a kubeconfig, e.g. the one `make cluster` prints.
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Protocol

import yaml

from continuum_demo.emulator import EmulatedCluster

# kwok renews a fake node's Lease only while it holds it: a Lease held by someone else stops the node's
# heartbeats, and the node lifecycle controller marks the node Unknown after its grace period.
PARTITION_HOLDER = "continuum-demo-partition"


class Stage(Protocol):
    url: str
    kubeconfig: Path

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]: ...
    def get(self, path: str, name: str, namespace: str | None = None) -> dict[str, Any] | None: ...
    def list(self, path: str) -> list[dict[str, Any]]: ...
    def fail_node(self, name: str) -> str: ...
    def restore_node(self, name: str) -> None: ...
    def mark(self) -> Any: ...
    def events_since(self, mark: Any) -> list[dict[str, Any]]: ...


class EmulatorStage:
    """The embedded emulator (no cluster): a node fails by its Ready condition turning False."""

    def __init__(self, cluster: EmulatedCluster) -> None:
        self.cluster = cluster
        self.url, self.kubeconfig = cluster.url, cluster.kubeconfig

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.cluster.apply(obj)

    def get(self, path: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.cluster.get(path, name, namespace)

    def list(self, path: str) -> list[dict[str, Any]]:
        return self.cluster.list(path)

    def fail_node(self, name: str) -> str:
        node = self.cluster.get("v1/nodes", name)
        assert node is not None
        conditions = [c for c in node["status"].get("conditions", []) if c["type"] != "Ready"]
        conditions.append({"type": "Ready", "status": "False", "reason": "NodeStatusUnknown",
                           "message": "Kubelet stopped posting node status (demo)"})
        self.cluster.patch("v1/nodes", name, {"status": {"conditions": conditions}}, status=True)
        return "NotReady"

    def restore_node(self, name: str) -> None:
        """Nothing to undo: the emulator goes away with the demo."""

    def mark(self) -> int:
        return self.cluster.store.last_rv

    def events_since(self, mark: int) -> list[dict[str, Any]]:
        events = [e for e in self.cluster.list("v1/events") if int(e["metadata"]["resourceVersion"]) > mark]
        return sorted(events, key=lambda e: int(e["metadata"]["resourceVersion"]))


def _api_path(path: str, name: str | None = None, namespace: str | None = None) -> str:
    """`group/version/plural` or `v1/plural` (the emulator's addressing) as an API URL path."""
    parts = path.split("/")
    base = "/api/" + parts[0] if len(parts) == 2 else f"/apis/{parts[0]}/{parts[1]}"
    plural = parts[-1]
    ns = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{ns}/{plural}" + (f"/{name}" if name else "")


class ApiRefused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:300]}")
        self.status = status


class LiveStage:
    """A real kube-apiserver (kwok nodes: `make cluster`); a node fails by a network partition of its kubelet.
    Plain HTTPS from the kubeconfig (client certificate or token), synchronous like the emulator's calls."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self.kubeconfig, self.url = kubeconfig, cluster["server"].rstrip("/")
        self._tmp = Path(tempfile.mkdtemp(prefix="continuum-demo-tls-"))

        def pem(item: dict[str, Any], key: str) -> str | None:
            if item.get(f"{key}-data"):
                path = self._tmp / key
                path.write_bytes(base64.b64decode(item[f"{key}-data"]))
                return str(path)
            value = item.get(key)
            return str((kubeconfig.parent / value) if value and not Path(value).is_absolute() else value) if value else None

        self._ssl = ssl.create_default_context(cafile=pem(cluster, "certificate-authority"))
        cert = pem(user, "client-certificate")
        if cert:
            self._ssl.load_cert_chain(cert, pem(user, "client-key"))
        self._headers = {"Accept": "application/json"}
        if user.get("token"):
            self._headers["Authorization"] = f"Bearer {user['token']}"

    def provide_volumes(self, count: int = 12, storage_class: str = "local-path") -> None:
        """kwok runs no volume provisioner: a `local-path` class (k3s's, which the examples name) with
        pre-made hostPath volumes, bound when a pod is scheduled, so state-enabled workloads can run."""
        if self.get("storage.k8s.io/v1/storageclasses", storage_class) is not None:
            return
        self._call("POST", "/apis/storage.k8s.io/v1/storageclasses", {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": storage_class},
            "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"})
        for i in range(count):
            self._call("POST", "/api/v1/persistentvolumes", {
                "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"demo-state-{i}"},
                "spec": {"capacity": {"storage": "20Gi"}, "accessModes": ["ReadWriteOnce"],
                         "persistentVolumeReclaimPolicy": "Retain", "storageClassName": storage_class,
                         "hostPath": {"path": f"/tmp/continuum-demo-pv-{i}"}}})

    def install_crds(self) -> None:
        """The generated CRDs, when the cluster does not serve them yet (helm installs them on a real site)."""
        from continuum.api.crd import render_crds

        for text in render_crds().values():
            crd = yaml.safe_load(text)
            if self.get("apiextensions.k8s.io/v1/customresourcedefinitions", crd["metadata"]["name"]) is None:
                self._call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the new resources are served (404, then 429 while the
            try:  # apiserver initialises their storage)
                if self.get("continuum.dev/v1alpha1/edgenodepools", "") is not None:
                    return
            except ApiRefused as exc:
                if exc.status != 429:
                    raise
            time.sleep(0.3)
        raise SystemExit("error: the cluster did not serve the continuum.dev CRDs within 30 s")

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={**self._headers, "Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, context=self._ssl, timeout=30) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise ApiRefused(exc.code, exc.read().decode(errors="replace")) from None

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = obj["apiVersion"] + "/" + obj["kind"].lower() + "s"
        if obj["kind"] == "Node":  # kwok simulates the kubelet of nodes carrying this annotation
            obj = json.loads(json.dumps(obj))
            obj["metadata"].setdefault("annotations", {})["kwok.x-k8s.io/node"] = "fake"
            obj.get("status", {}).pop("conditions", None)
        try:
            return self._call("POST", _api_path(path, None, meta.get("namespace")), obj)
        except ApiRefused as exc:
            if exc.status != 409:
                raise
            patch = {k: v for k, v in obj.items() if k in ("metadata", "spec")}
            return self._call("PATCH", _api_path(path, meta["name"], meta.get("namespace")), patch,
                              "application/merge-patch+json")

    def get(self, path: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            return self._call("GET", _api_path(path, name, namespace))
        except ApiRefused as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, path: str) -> list[dict[str, Any]]:
        return list(self._call("GET", _api_path(path)).get("items") or [])

    def fail_node(self, name: str) -> str:
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        self._call("PATCH", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}",
                   {"spec": {"holderIdentity": PARTITION_HOLDER, "leaseDurationSeconds": 3600, "renewTime": now}},
                   "application/merge-patch+json")
        return "cut off (its kubelet stops heartbeating; the node lifecycle controller marks it Unknown)"

    def restore_node(self, name: str) -> None:
        """End the partition (kwok takes the Lease back at once), so the demo can run again on this cluster."""
        try:
            self._call("DELETE", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")
        except ApiRefused as exc:
            if exc.status != 404:
                raise

    def mark(self) -> float:
        return time.time()

    def events_since(self, mark: float) -> list[dict[str, Any]]:
        from datetime import datetime

        def when(e: dict[str, Any]) -> float:
            stamp = e.get("lastTimestamp") or e.get("eventTime") or e["metadata"]["creationTimestamp"]
            return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()

        events = [e for e in self.list("v1/events") if when(e) >= int(mark)]
        return sorted(events, key=when)
