"""Create the kopf peering object(s) the operator replicas meet in, then exit (an init container).

kopf patches its peering object but never creates it, and an operator started with a peering name
whose object is missing stays paused. The chart cannot ship the object as a plain manifest: it is a
custom resource of a CRD the same release installs, which Helm cannot map before the CRD exists.
So every operator pod creates it first, idempotently (409 AlreadyExists is success), and waits while
the kopf.dev CRDs are not served yet (404).

Environment: CONTINUUM_PEERING (the name, required), CONTINUUM_NAMESPACES (comma-separated; empty:
one ClusterKopfPeering, else one KopfPeering per namespace), PEERING_INIT_TIMEOUT (seconds, 120).
Runs with the operator image's ``kubernetes`` client: in-cluster config, else $KUBECONFIG.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP, VERSION = "kopf.dev", "v1"


def peering_objects(name: str, namespaces: list[str]) -> list[dict[str, Any]]:
    if not namespaces:
        return [
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
        ]
    return [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "KopfPeering",
            "metadata": {"name": name, "namespace": ns},
        }
        for ns in namespaces
    ]


def create(api: client.CustomObjectsApi, obj: dict[str, Any]) -> bool:
    """True when the object exists now; False when its CRD is not served yet (retry)."""
    meta = obj["metadata"]
    try:
        if "namespace" in meta:
            api.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], "kopfpeerings", obj)
        else:
            api.create_cluster_custom_object(GROUP, VERSION, "clusterkopfpeerings", obj)
    except ApiException as exc:
        if exc.status == 409:
            return True
        if exc.status == 404:
            return False
        raise
    where = f" in namespace {meta['namespace']}" if "namespace" in meta else ""
    print(f"created {obj['kind']} {meta['name']}{where}", flush=True)
    return True


def main() -> int:
    name = os.environ.get("CONTINUUM_PEERING", "").strip()
    if not name:
        print("peering-init: CONTINUUM_PEERING is not set", file=sys.stderr)
        return 1
    namespaces = [n.strip() for n in os.environ.get("CONTINUUM_NAMESPACES", "").split(",") if n.strip()]
    timeout = float(os.environ.get("PEERING_INIT_TIMEOUT", "120"))
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    pending = peering_objects(name, namespaces)
    deadline = time.monotonic() + timeout
    while True:
        try:
            pending = [obj for obj in pending if not create(api, obj)]
        except ApiException as exc:
            print(f"peering-init: {exc.status} {exc.reason}: {exc.body}", file=sys.stderr)
            return 1
        if not pending:
            return 0
        if time.monotonic() > deadline:
            kinds = ", ".join(sorted({obj["kind"] for obj in pending}))
            print(
                f"peering-init: the {GROUP} CRDs ({kinds}) are not served after {timeout:g}s", file=sys.stderr
            )
            return 1
        time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main())
