"""Render the inference worker for a placed workload: plain manifests (dicts), no Kubernetes client.

* a Deployment — or a StatefulSet with a volumeClaimTemplate when ``spec.state.enabled`` — pinned to the
  pool with ``nodeSelector: continuum.dev/pool=<pool>`` and tolerating exactly that pool's taints;
  a StatefulSet is named per pool (:func:`rendered_name`), because its volumes live on the pool's nodes:
  a move creates a new StatefulSet (new volumes, state re-synced) next to the old one;
* a Service in front of it (offload and state-sync targets of other tiers point at it);
* a Secret with the state-sync token when state is enabled (created once, never rotated here).

The worker's settings are the ``CONTINUUM_*`` variables of docs/contracts.md. Moving a Deployment to
another pool changes only its pod template, and the rolling update is make-before-break
(``maxUnavailable: 0``, ``maxSurge: 100%``): the new replicas are Ready before the old ones go. Pods
carry ``continuum.dev/pool``; the Service selects the workload's pods on every pool, so it serves
from both ends while a move drains.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from continuum import __version__
from continuum.api.models import (
    GPU_RESOURCE,
    LABEL_POOL,
    LABEL_WORKLOAD,
    EdgeNodePool,
    EdgeWorkload,
    Placement,
)

DEFAULT_WORKER_IMAGE = f"ghcr.io/continuum-dev/continuum-worker:{__version__}"
STATE_MOUNT = "/var/lib/continuum/state"
MODEL_CACHE = "/var/cache/continuum/models"


@dataclass(frozen=True)
class RenderSettings:
    worker_image: str = DEFAULT_WORKER_IMAGE
    # base URL of the Service serving the same model on another tier, by tier (offload / state sync)
    upstreams: Mapping[str, str] = field(default_factory=dict)
    state_token: str | None = None


def workload_labels(workload: EdgeWorkload) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "continuum-worker",
        "app.kubernetes.io/instance": workload.name,
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/part-of": "continuum",
        "app.kubernetes.io/managed-by": "continuum-operator",
        "app.kubernetes.io/version": workload.spec.model.version[:63],
        LABEL_WORKLOAD: workload.name,
    }


def selector_labels(workload: EdgeWorkload) -> dict[str, str]:
    return {"app.kubernetes.io/instance": workload.name, LABEL_WORKLOAD: workload.name}


def owner_reference(workload: EdgeWorkload) -> dict[str, Any]:
    return {
        "apiVersion": workload.api_version,
        "kind": workload.kind,
        "name": workload.name,
        "uid": workload.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def service_name_for(workload_name: str) -> str:
    """The Service in front of a workload's replicas (offload and state sync go through it)."""
    return workload_name


def service_name(workload: EdgeWorkload) -> str:
    return service_name_for(workload.name)


def service_url(name: str, namespace: str, port: int) -> str:
    return f"http://{name}.{namespace}.svc:{port}"


STATEFULSET_NAME_LIMIT = 52  # pod names get "-<ordinal>" and the controller-revision-hash label 11 more
SERVICE_NAME_LIMIT = 63  # DNS-1035 label


def _shorten(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-.')}-{digest}"


def peer_service_name(workload: EdgeWorkload) -> str:
    """The headless Service that gives each StatefulSet pod a DNS name (state sync between replicas)."""
    return _shorten(f"{workload.name}-peers", SERVICE_NAME_LIMIT)


def peer_urls(workload: EdgeWorkload, pool: str) -> list[str]:
    """Base URLs of every replica of the workload on ``pool`` (each worker skips its own)."""
    sts, svc, ns = rendered_name(workload, pool), peer_service_name(workload), workload.namespace
    port = workload.spec.worker.port
    return [f"http://{sts}-{i}.{svc}.{ns}.svc:{port}" for i in range(workload.spec.replicas)]


def rendered_name(workload: EdgeWorkload, pool: str) -> str:
    """Name of the Deployment (the workload's name) or StatefulSet (``<workload>-<pool>``) on ``pool``."""
    if not workload.spec.state.enabled:
        return workload.name
    return _shorten(f"{workload.name}-{pool}", STATEFULSET_NAME_LIMIT)


def readiness(obj: Mapping[str, Any] | None, replicas: int) -> tuple[int, bool]:
    """(ready replicas, rollout complete) of a rendered Deployment/StatefulSet as the server reports it: every
    replica updated and ready, no old replica left."""
    if not obj:
        return 0, False
    status = obj.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    generation = int((obj.get("metadata") or {}).get("generation") or 0)
    done = (
        int(status.get("observedGeneration") or 0) >= generation
        and updated >= replicas
        and ready >= replicas
        and int(status.get("replicas") or 0) <= updated
    )
    return ready, done


def secret_name_for(workload_name: str) -> str:
    return f"{workload_name}-state-token"


def secret_name(workload: EdgeWorkload) -> str:
    return secret_name_for(workload.name)


def ingest_env(workload: EdgeWorkload) -> dict[str, str]:
    """``spec.ingest`` as the worker's variables (docs/streaming.md). With several replicas each topic is an
    MQTT 5 shared subscription (``$share/<workload>/<topic>``): each message goes to one replica."""
    ingest = workload.spec.ingest
    assert ingest is not None
    options: dict[str, str] = {"decoder": ingest.decoder} if ingest.decoder != "v2" else {}
    if ingest.dtype:
        options["dtype"] = ingest.dtype
    if ingest.shape:
        options["shape"] = ",".join(str(d) for d in ingest.shape)
    if ingest.input:
        options["input"] = ingest.input
    query = ("?" + "&".join(f"{k}={v}" for k, v in options.items())) if options else ""
    share = f"$share/{workload.name}/" if workload.spec.replicas > 1 else ""
    return {
        "CONTINUUM_INGEST": " ".join(f"{ingest.broker}/{share}{topic}{query}" for topic in ingest.topics),
        "CONTINUUM_PUBLISH": f"{ingest.publish_broker or ingest.broker}/{ingest.publish_topic}",
        "CONTINUUM_INGEST_FILTER": ingest.filter,
        "CONTINUUM_EVENT_THRESHOLD": str(ingest.event_threshold),
        "CONTINUUM_INGEST_PUBLISH_AFTER": ingest.publish_after,
    }


def _env(workload: EdgeWorkload, pool: str, settings: RenderSettings) -> list[dict[str, Any]]:
    spec = workload.spec
    worker = spec.worker
    values: dict[str, str | None] = {
        "CONTINUUM_MODEL_NAME": spec.model.name,
        "CONTINUUM_MODEL_URI": spec.model.uri,
        "CONTINUUM_MODEL_VERSION": spec.model.version,
        "CONTINUUM_MODEL_SHA256": spec.model.sha256,
        "CONTINUUM_BACKENDS": ";".join(worker.backends) if worker.backends else None,
        "CONTINUUM_PORT": str(worker.port),
        "CONTINUUM_MAX_BATCH_SIZE": str(worker.max_batch_size),
        "CONTINUUM_MAX_QUEUE_DELAY_US": str(worker.max_queue_delay_us),
        "CONTINUUM_MODEL_CACHE_DIR": MODEL_CACHE,
    }
    if spec.offload is not None:
        values["CONTINUUM_UPSTREAM"] = settings.upstreams.get(spec.offload.tier.value)
        values["CONTINUUM_UPSTREAM_TIMEOUT_MS"] = str(spec.offload.timeout_ms)
        values["CONTINUUM_FALLBACK_MODEL_URI"] = spec.offload.fallback_model_uri
    if spec.state.enabled:
        values["CONTINUUM_STATE_DIR"] = STATE_MOUNT
        values["CONTINUUM_STATE_RETENTION"] = str(spec.state.retention)
        if spec.state.sync_to is not None:
            values["CONTINUUM_SYNC_TO"] = settings.upstreams.get(spec.state.sync_to.value)
        if spec.replicas > 1:
            values["CONTINUUM_SYNC_PEERS"] = ",".join(peer_urls(workload, pool))
    if spec.ingest is not None:
        values.update(ingest_env(workload))
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items() if v is not None]
    if spec.state.enabled:
        env.append(
            {
                "name": "CONTINUUM_STATE_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": secret_name(workload), "key": "token"}},
            }
        )
        env.append(
            {"name": "CONTINUUM_REPLICA_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        )
    env.extend({"name": e.name, "value": e.value} for e in worker.env)
    return env


def _resources(workload: EdgeWorkload) -> dict[str, Any]:
    res = workload.spec.requirements.resources
    requests: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, str] = dict(workload.spec.worker.limits or {})
    if res.gpu:
        requests[GPU_RESOURCE] = str(res.gpu)
        limits[GPU_RESOURCE] = str(res.gpu)  # extended resources need limits == requests
    out: dict[str, Any] = {"requests": requests}
    if limits:
        out["limits"] = limits
    return out


def _pod_template(workload: EdgeWorkload, pool: EdgeNodePool, settings: RenderSettings) -> dict[str, Any]:
    spec = workload.spec
    port = spec.worker.port
    probe = {
        "httpGet": {"path": "/v2/health/live", "port": "http"},
        "periodSeconds": 10,
        "failureThreshold": 3,
    }
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.worker.image or settings.worker_image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["serve"],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": _env(workload, pool.name, settings),
        "resources": _resources(workload),
        "startupProbe": {**probe, "failureThreshold": 60, "periodSeconds": 2},
        "livenessProbe": probe,
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "model-cache", "mountPath": MODEL_CACHE},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    if spec.state.enabled:
        container["volumeMounts"].append({"name": "state", "mountPath": STATE_MOUNT})
    return {
        "metadata": {
            "labels": {**workload_labels(workload), LABEL_POOL: pool.name},
            "annotations": {"continuum.dev/pool": pool.name, "continuum.dev/tier": pool.spec.tier.value},
        },
        "spec": {
            "nodeSelector": {LABEL_POOL: pool.name},
            "tolerations": [t.toleration() for t in pool.spec.effective_taints],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
            "terminationGracePeriodSeconds": 30,
            "containers": [container],
            "volumes": [{"name": "model-cache", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
        },
    }


def render_workload_object(
    workload: EdgeWorkload, placement: Placement, pool: EdgeNodePool, settings: RenderSettings
) -> dict[str, Any]:
    """The Deployment (stateless) or StatefulSet (state enabled) for the workload on ``pool``."""
    spec = workload.spec
    meta = {
        "name": rendered_name(workload, pool.name),
        "namespace": workload.namespace,
        "labels": {**workload_labels(workload), LABEL_POOL: pool.name},
        "annotations": {
            "continuum.dev/pool": placement.pool,
            "continuum.dev/tier": placement.tier.value,
            "continuum.dev/estimated-latency-ms": f"{placement.estimated_latency_ms:g}",
        },
        "ownerReferences": [owner_reference(workload)],
    }
    template = _pod_template(workload, pool, settings)
    if not spec.state.enabled:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": spec.replicas,
                "selector": {"matchLabels": selector_labels(workload)},
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "100%"},
                },
                "template": template,
            },
        }
    claim = {
        "metadata": {"name": "state", "labels": selector_labels(workload)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": spec.state.storage_class_name,
            "resources": {"requests": {"storage": spec.state.size}},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta,
        "spec": {
            "replicas": spec.replicas,
            "serviceName": peer_service_name(workload),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {**selector_labels(workload), LABEL_POOL: pool.name}},
            "updateStrategy": {"type": "RollingUpdate"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "template": template,
            "volumeClaimTemplates": [claim],
        },
    }


def render_service(workload: EdgeWorkload) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(workload),
            "namespace": workload.namespace,
            "labels": workload_labels(workload),
            "ownerReferences": [owner_reference(workload)],
        },
        "spec": {
            "selector": selector_labels(workload),
            "ports": [
                {"name": "http", "port": workload.spec.worker.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def render_peer_service(workload: EdgeWorkload) -> dict[str, Any]:
    """Headless, and publishing not-ready pods: replicas sync state before they are Ready."""
    service = render_service(workload)
    service["metadata"]["name"] = peer_service_name(workload)
    service["spec"]["clusterIP"] = "None"
    service["spec"]["publishNotReadyAddresses"] = True
    return service


def render_state_secret(workload: EdgeWorkload, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(workload),
            "namespace": workload.namespace,
            "labels": workload_labels(workload),
            "ownerReferences": [owner_reference(workload)],
        },
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }


def render_worker_manifests(
    workload: EdgeWorkload, placement: Placement, pool: EdgeNodePool, settings: RenderSettings
) -> list[dict[str, Any]]:
    """Everything the workload needs on its pool, in apply order."""
    objects = []
    if workload.spec.state.enabled and settings.state_token is not None:
        objects.append(render_state_secret(workload, settings.state_token))
    objects.append(render_service(workload))
    if workload.spec.state.enabled:
        objects.append(render_peer_service(workload))
    objects.append(render_workload_object(workload, placement, pool, settings))
    return objects
