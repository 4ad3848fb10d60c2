"""kmock's KubernetesEmulator with an apiserver-like store, served over real HTTP on 127.0.0.1.

:class:`ApiEmulator` keeps everything kmock gives (HTTP server, discovery, request recording, the
error-injection DSL: ``emulator['create apps/v1/deployments'][:1] << kmock.KubernetesError(500, ...)``)
and replaces its object handling with :class:`~continuum_demo.emulator.store.Store`. :class:`EmulatedCluster`
runs it (in the current loop or in a background thread), declares our CRDs, writes a kubeconfig and
offers direct helpers for tests and the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import orjson
import yaml
from kmock._internal import enums, rendering  # kmock 0.8 keeps these in _internal
from kmock._internal.k8s import KubernetesScaffold

from continuum_demo.emulator.store import ApiError, Key, Store, Watch
from continuum_demo.emulator.table import printer_columns, table, wants_table

REQUEST_HISTORY = 12  # kmock re-filters every recorded request on each request (O(history)): keep it short

CUSTOM_RESOURCES: dict[str, kmock.ResourceInfo] = {
    "continuum.dev/v1alpha1/edgenodepools": kmock.ResourceInfo(
        kind="EdgeNodePool",
        singular="edgenodepool",
        namespaced=False,
        shortnames={"enp"},
        categories={"continuum"},
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "patch", "delete", "update"},
    ),
    "continuum.dev/v1alpha1/edgeworkloads": kmock.ResourceInfo(
        kind="EdgeWorkload",
        singular="edgeworkload",
        namespaced=True,
        shortnames={"ew"},
        categories={"continuum"},
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "patch", "delete", "update"},
    ),
    "continuum.dev/v1alpha1/edgeworkloadsets": kmock.ResourceInfo(
        kind="EdgeWorkloadSet",
        singular="edgeworkloadset",
        namespaced=True,
        shortnames={"ews"},
        categories={"continuum"},
        subresources={"status"},
        verbs={"get", "list", "watch", "create", "patch", "delete", "update"},
    ),
    "kopf.dev/v1/clusterkopfpeerings": kmock.ResourceInfo(
        kind="ClusterKopfPeering",
        singular="clusterkopfpeering",
        namespaced=False,
        verbs={"get", "list", "watch", "create", "patch", "delete"},
    ),
    "kopf.dev/v1/kopfpeerings": kmock.ResourceInfo(
        kind="KopfPeering",
        singular="kopfpeering",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "delete"},
    ),
}


def resource_id(resource: Any) -> str:
    group = resource.group or ""
    return (
        f"{group}/{resource.version}/{resource.plural}" if group else f"{resource.version}/{resource.plural}"
    )


class ApiEmulator(kmock.KubernetesEmulator):
    """The emulator with :class:`Store` semantics (see its docstring for each behaviour)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        for name, info in CUSTOM_RESOURCES.items():
            self.resources[name] = info
        self.store = Store(status_resources=self._status_resources())
        self.printer_columns = printer_columns()  # resource id -> the CRD's additionalPrinterColumns
        self._results: dict[int, dict[str, Any]] = {}  # id(request) -> stored object, for the fallbacks
        # kmock renders injected KubernetesErrors with their own status only inside `async with emulator`;
        # outside, they escape to aiohttp as a bare 500. Collect them as that context would.
        self._errors.append([])
        # What kmock itself installed: while nobody added a reaction (error injection, a test's stub), a
        # resource call goes straight to its fallback below instead of through kmock's filters, which cost
        # ~60 % of the emulator's CPU per call (they re-evaluate every criterion of every reaction).
        self._builtin_payloads = list(self._payloads)
        self._direct = {
            enums.action.CREATE: self._serve_create,
            enums.action.UPDATE: self._serve_update,
            enums.action.DELETE: self._serve_delete,
            enums.action.FETCH: self._serve_fetch,
            enums.action.LIST: self._serve_list,
        }
        self._infos: dict[tuple[str | None, str | None, str | None], kmock.ResourceInfo] = {}

    def _status_resources(self) -> set[str]:
        out = set()
        for resource, info in self.resources.items():
            if "status" in info.subresources:
                out.add(resource_id(resource))
        return out

    def _info(self, request: rendering.Request) -> kmock.ResourceInfo | None:
        wanted = request.resource
        if wanted is None:
            return None
        key = (wanted.group, wanted.version, wanted.plural)
        info = self._infos.get(key)
        if info is None:  # unknown ones are looked up again: a resource may be declared later
            info = next((info for resource, info in self.resources.items() if resource == wanted), None)
            if info is not None:
                self._infos[key] = info
        return info

    def _customized(self) -> bool:
        """Whether a reaction was added to (or replaced in) kmock's DSL since it was set up."""
        payloads, builtin = self._payloads, self._builtin_payloads
        return len(payloads) != len(builtin) or any(a is not b for a, b in zip(payloads, builtin, strict=True))

    def _key(self, request: rendering.Request, name: str | None = None) -> Key:
        assert request.resource is not None
        return (resource_id(request.resource), request.namespace, name or request.name or "")

    async def _handle(self, request: rendering.Request) -> Any:
        if len(self._requests) > REQUEST_HISTORY:
            del self._requests[: len(self._requests) - REQUEST_HISTORY // 2]
        if self._errors and len(self._errors[-1]) > REQUEST_HISTORY:
            del self._errors[-1][: REQUEST_HISTORY // 2]
        if request.resource is not None and request.action in (
            enums.action.CREATE,
            enums.action.UPDATE,
            enums.action.DELETE,
        ):
            try:
                async with self._lock:
                    self._results[id(request)] = self._write(request)
            except ApiError as exc:
                return await self._render_error(self._error(request, exc.status, exc.reason, exc.message))
        # The DSL (reactions, injected errors) and then our fallbacks; skip kmock's own object handling.
        try:
            resource = request.resource  # discovery (/apis/GROUP/VERSION) has a resource without a plural
            serve = self._direct.get(request.action) if resource is not None and resource.plural else None
            if serve is not None and not self._customized():
                payload = await serve(request)  # its KubernetesError is rendered as kmock does (RawHandler)
                return aiohttp.web.Response(body=orjson.dumps(payload), content_type="application/json")
            return await KubernetesScaffold._handle(self, request)
        finally:
            self._results.pop(id(request), None)

    @staticmethod
    def _error(request: rendering.Request, status: int, reason: str, message: str) -> kmock.KubernetesError:
        """A Status error with the ``details`` a real apiserver gives (without any, kmock formats a
        traceback into each error answer, several times the cost of the call)."""
        resource = request.resource
        details = {"name": request.name or "", "group": "", "kind": ""}
        if resource is not None:
            details.update(group=resource.group or "", kind=resource.plural or "")
        return kmock.KubernetesError(status, reason, message, details)

    def _write(self, request: rendering.Request) -> dict[str, Any]:
        info = self._info(request)
        if info is None:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource {request.resource}"
            )
        if request.action == enums.action.CREATE:
            data = request.data if isinstance(request.data, dict) else None
            if data is None:
                raise ApiError(400, "BadRequest", "the body must be a JSON object")
            return self.store.create(self._key(request)[0], request.namespace, data, kind=info.kind)
        if request.action == enums.action.UPDATE:
            ctype = request.headers.get("Content-Type", "application/merge-patch+json")
            return self.store.patch(self._key(request), request.data, ctype, request.subresource)
        return self.store.delete(self._key(request))

    # -- fallbacks (kmock calls these when no user reaction matched) --
    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        return self._results.get(id(request), {})

    _serve_update = _serve_create
    _serve_delete = _serve_create

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        obj = self.store.get(self._key(request))
        if obj is None:
            raise self._error(request, 404, "NotFound", f"{request.resource} {request.name!r} not found")
        return self._as_table(request, [obj]) or obj

    def _as_table(self, request: rendering.Request, items: list[dict[str, Any]]) -> dict[str, Any] | None:
        """A Table (server-side printing) when the client asked for one and the resource has columns."""
        columns = self.printer_columns.get(self._key(request)[0])
        accept = next((v for k, v in request.headers.items() if k.lower() == "accept"), None)
        if columns is None or not wants_table(accept):
            return None
        include = request.params.get("includeObject") or "PartialObjectMetadata"
        return table(columns, items, str(self.store.last_rv), include)

    def _list_kind(self, request: rendering.Request) -> tuple[str, str]:
        info = self._info(request)
        assert request.resource is not None
        group = request.resource.group or ""
        api_version = f"{group}/{request.resource.version}" if group else str(request.resource.version)
        return api_version, f"{info.kind if info and info.kind else 'Object'}List"

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        if self._info(request) is None:
            raise self._error(
                request, 404, "NotFound", f"the server could not find the requested resource {request.resource}"
            )
        try:
            items = self.store.select(
                self._key(request)[0],
                request.namespace,
                request.params.get("labelSelector"),
                request.params.get("fieldSelector"),
            )
        except ApiError as exc:
            raise self._error(request, exc.status, exc.reason, exc.message) from None
        api_version, kind = self._list_kind(request)
        printed = self._as_table(request, items)  # Table rows carry whole objects, kind included
        if printed is not None:
            return printed
        # As a real apiserver: the list carries apiVersion/kind, its items do not (clients that key objects by
        # kind must fill them in; the operator once broke on exactly this after a restart on a real cluster).
        items = [{k: v for k, v in item.items() if k not in ("apiVersion", "kind")} for item in items]
        return {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"resourceVersion": str(self.store.last_rv)},
            "items": items,
        }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""
        watch = Watch(
            self._key(request)[0],
            request.namespace,
            request.name,
            request.params.get("labelSelector"),
            request.params.get("fieldSelector"),
        )
        since = request.params.get("resourceVersion")
        async with self._lock:
            if since not in (None, "", "0"):
                try:
                    backlog = list(self.store.events_since(int(since), watch))
                except (ApiError, ValueError) as exc:
                    gone = {
                        "type": "ERROR",
                        "object": {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "code": 410,
                            "reason": "Expired",
                            "message": str(exc),
                        },
                    }
                    backlog = [gone]
            else:
                objs = self.store.select(
                    watch.resource, watch.namespace, watch.label_selector, watch.field_selector
                )
                backlog = [
                    {"type": "ADDED", "object": o}
                    for o in objs
                    if watch.name in (None, o["metadata"]["name"])
                ]
            self.store.watches.add(watch)
        try:  # watch lines encoded here (orjson; kmock would use json.dumps per line and watcher)
            for event in backlog:
                yield orjson.dumps(event) + b"\n"
            while True:
                yield orjson.dumps(await watch.queue.get()) + b"\n"
        finally:
            self.store.watches.discard(watch)

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict):
            if payload.get("groupVersion", "").startswith("/"):
                payload["groupVersion"] = payload["groupVersion"][1:]  # core: "v1", as kubectl expects
            for entry in payload.get("resources", []):
                if "/" in entry.get("name", ""):  # subresources have no short names or categories
                    entry["shortNames"], entry["categories"] = [], []
        return payload


def kubeconfig_for(url: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "continuum-emulator", "cluster": {"server": url}}],
        "users": [{"name": "continuum-emulator", "user": {"token": "emulator"}}],
        "contexts": [
            {
                "name": "continuum-emulator",
                "context": {"cluster": "continuum-emulator", "user": "continuum-emulator"},
            }
        ],
        "current-context": "continuum-emulator",
    }


def _plural_for(api_version: str, kind: str, emulator: ApiEmulator) -> tuple[str, bool]:
    for resource, info in emulator.resources.items():
        group = resource.group or ""
        av = f"{group}/{resource.version}" if group else str(resource.version)
        if av == api_version and info.kind == kind:
            return resource_id(resource), bool(info.namespaced)
    raise KeyError(f"unknown kind {api_version} {kind}")


class EmulatedCluster:
    """Run :class:`ApiEmulator` on 127.0.0.1 (an async context manager, or ``start_in_thread()``)."""

    def __init__(self, workdir: Path | None = None, port: int = 0) -> None:
        self.emulator = ApiEmulator()
        self._port = port
        self._server: kmock.Server | None = None
        self.workdir = workdir
        self.kubeconfig: Path | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    @property
    def store(self) -> Store:
        return self.emulator.store

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.port}"

    async def __aenter__(self) -> EmulatedCluster:
        self.loop = asyncio.get_running_loop()
        self._server = kmock.Server(self.emulator, host="127.0.0.1", port=self._port)
        await self._server.__aenter__()
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.kubeconfig = self.workdir / "kubeconfig.yaml"
            self.kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(self.url)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for watch in list(self.store.watches):
            self.store.watches.discard(watch)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.__aexit__(None, None, None)

    # -- a background thread with its own loop (for subprocess operators and sync tests) --
    def start_in_thread(self, timeout: float = 10.0) -> EmulatedCluster:
        ready = threading.Event()

        async def main() -> None:
            self._stop = asyncio.Event()
            async with self:
                ready.set()
                await self._stop.wait()

        self._thread = threading.Thread(target=lambda: asyncio.run(main()), name="emulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("the API emulator did not start")
        return self

    def start_kubelet(self, interval: float = 0.2) -> None:
        """Run the stand-in kubelet (replica readiness) on the emulator's loop."""
        from continuum_demo.emulator.kubelet import run_fake_kubelet

        assert self.loop is not None
        self.loop.call_soon_threadsafe(
            lambda: self.loop.create_task(run_fake_kubelet(self.store, self.emulator._lock, interval))
        )  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run a store operation on the emulator's loop (thread-safe), under its lock."""
        if self._thread is None or threading.current_thread() is self._thread:
            return fn(*args)

        async def run() -> Any:
            async with self.emulator._lock:
                return fn(*args)

        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    # -- direct object access (no HTTP), for fixtures, the fake kubelet and assertions --
    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create the object, or merge-patch it (spec and status) if it exists."""
        resource, namespaced = _plural_for(obj["apiVersion"], obj["kind"], self.emulator)
        ns = (obj["metadata"].get("namespace") or "default") if namespaced else None

        def op() -> dict[str, Any]:
            key = (resource, ns, obj["metadata"]["name"])
            if key not in self.store.objects:
                created = self.store.create(resource, ns, {k: v for k, v in obj.items() if k != "status"})
                if "status" not in obj:
                    return created
            body = {k: v for k, v in obj.items() if k != "status"}
            self.store.patch(key, copy.deepcopy(body), "application/merge-patch+json")
            if "status" in obj:
                return self.store.patch(
                    key, {"status": obj["status"]}, "application/merge-patch+json", "status"
                )
            return self.store.get(key) or {}

        return self.call(op)

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.call(self.store.get, (resource, namespace, name))

    def list(
        self, resource: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        return self.call(self.store.select, resource, namespace, label_selector)

    def patch(
        self,
        resource: str,
        name: str,
        patch: dict[str, Any],
        namespace: str | None = None,
        status: bool = False,
    ) -> dict[str, Any]:
        return self.call(
            self.store.patch,
            (resource, namespace, name),
            patch,
            "application/merge-patch+json",
            "status" if status else None,
        )

    def delete(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.call(self.store.delete, (resource, namespace, name))
