"""A first placement writes its status alongside the creates of its objects (one round trip, not two), and
the status ends as the creates answered: refused (ApplyFailed), or an object that was there already."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import yaml
from continuum.controller.keys import CLAIM_PLACEMENT, WorkloadKey
from continuum.controller.kube import ApiError, KubeApi
from continuum.controller.manager import Controller
from continuum.controller.settings import OperatorSettings
from continuum_demo.emulator.store import merge_patch

from tests.conftest import EXAMPLES

KEY = WorkloadKey("analytics", "fleet-analytics")
DEPLOYMENTS = "/apis/apps/v1/namespaces/analytics/deployments"
STATUS = "/apis/continuum.dev/v1alpha1/namespaces/analytics/edgeworkloads/fleet-analytics/status"


def _cluster() -> list[dict[str, Any]]:
    out = []
    for name in ("nodes.yaml", "pools.yaml"):
        for doc in yaml.safe_load_all((EXAMPLES / "cluster" / name).read_text()):
            out.extend(doc["items"] if doc and doc.get("kind") == "List" else [doc] if doc else [])
    return out


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class Api(KubeApi):
    """Answers at once, echoing what it is sent; a Deployment's create is answered by ``create``, its patch
    (after a 409) by ``patch``."""

    def __init__(self, workload: dict[str, Any], create: Handler, patch: Handler | None = None):
        super().__init__("http://in-memory")
        self.workload = copy.deepcopy(workload)  # the server's copy, not the cache's
        self.create = create
        self.patch_deployment = patch
        self.version = 100
        self.calls: list[tuple[str, str, Any]] = []
        self.status_sent = asyncio.Event()

    async def request(  # type: ignore[override]
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Any = None,
        content_type: str = "",
        decode: bool = True,
    ) -> dict[str, Any]:
        self.calls.append((method, path, copy.deepcopy(body)))
        self.version += 1
        if path == STATUS:
            self.status_sent.set()
            merged = merge_patch(self.workload, body)
            self.workload = {
                **merged,
                "metadata": {**merged["metadata"], "resourceVersion": str(self.version)},
            }
            return copy.deepcopy(self.workload)
        if method == "POST" and path == DEPLOYMENTS:
            return await self.create(body)
        if method == "PATCH" and path.startswith(DEPLOYMENTS + "/") and self.patch_deployment is not None:
            return await self.patch_deployment(body)
        meta = {**(body or {}).get("metadata", {}), "resourceVersion": str(self.version)}
        return {**(body or {}), "metadata": meta} if decode else {}

    def status_writes(self) -> list[dict[str, Any]]:
        return [body["status"] for method, path, body in self.calls if path == STATUS]


def created(body: dict[str, Any], **status: int) -> dict[str, Any]:
    return {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": "50", "generation": 1},
        "status": status,
    }


async def _reconcile_new(
    create: Callable[[Api, dict[str, Any]], Awaitable[dict[str, Any]]], patch: Handler | None = None
):
    events: list[tuple[str, str]] = []
    controller = Controller(
        OperatorSettings(), post_event=lambda body, type_, reason, message: events.append((reason, message))
    )
    for i, obj in enumerate(_cluster()):
        obj["metadata"].update(resourceVersion=str(i + 1), uid=f"x{i}", generation=1)
        controller.observe(obj["kind"], "ADDED", obj, enqueue=False)
    workload = yaml.safe_load((EXAMPLES / "workloads" / "fleet-analytics.yaml").read_text())
    workload["metadata"].update(resourceVersion="10", uid="w1", generation=1)
    api = Api(workload, lambda body: create(api, body), patch)
    controller.api = api
    controller.observe("EdgeWorkload", "ADDED", workload, enqueue=False)
    controller.cache.primed.set()
    outcome: BaseException | None = None
    try:
        await asyncio.wait_for(controller.process(KEY), 5)
    except ApiError as exc:
        outcome = exc
    return controller, api, events, outcome


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


async def test_the_status_is_written_while_the_objects_are_created():
    async def create(api: Api, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.wait_for(api.status_sent.wait(), 2)  # sequential writes would time out here
        return created(body)

    controller, api, events, outcome = await _reconcile_new(create)
    assert outcome is None
    (status,) = api.status_writes()  # once: the creates answered as expected
    assert status["phase"] == "Placed" and status["placement"]["pool"] == "cloud-virginia"
    assert status["readyReplicas"] == 0 and _ready(status)["reason"] == "ReplicasNotReady"
    assert [reason for reason, _ in events] == ["Placed"]
    assert controller.ledger.claims(KEY)[CLAIM_PLACEMENT].pool == "cloud-virginia"


async def test_a_refused_create_ends_in_applyfailed_and_is_not_written_early_again():
    async def create(api: Api, body: dict[str, Any]) -> dict[str, Any]:
        raise ApiError(422, "Invalid", "spec.template.spec.containers[0].image: Required value")

    controller, api, events, outcome = await _reconcile_new(create)
    assert isinstance(outcome, ApiError) and outcome.status == 422
    early, final = api.status_writes()
    assert _ready(early)["reason"] == "ReplicasNotReady"
    assert _ready(final)["reason"] == "ApplyFailed" and "422 Invalid" in _ready(final)["message"]
    assert final["phase"] == "Placed"
    assert "ApplyFailed" in {reason for reason, _ in events}
    # the retry (the refusal on record): no early write, and nothing to write while it is still refused
    controller.observe("EdgeWorkload", "MODIFIED", api.workload, enqueue=False)
    with pytest.raises(ApiError):
        await controller.process(KEY)
    assert len(api.status_writes()) == 2
    assert _ready(api.workload["status"])["reason"] == "ApplyFailed"


async def test_an_object_that_existed_already_gives_its_readiness():
    async def create(api: Api, body: dict[str, Any]) -> dict[str, Any]:
        raise ApiError(409, "AlreadyExists", "deployments.apps exists")

    async def patch(body: dict[str, Any]) -> dict[str, Any]:  # apply's patch after the 409: it runs already
        n = body["spec"]["replicas"]
        ran = {"observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n}
        return created({**body, "apiVersion": "apps/v1", "kind": "Deployment"}, **ran)

    _, api, _, outcome = await _reconcile_new(create, patch)
    assert outcome is None
    early, final = api.status_writes()
    assert early["readyReplicas"] == 0
    replicas = api.workload["spec"]["replicas"]
    assert final["readyReplicas"] == replicas and _ready(final)["status"] == "True"
    assert api.workload["status"]["readyReplicas"] == replicas
