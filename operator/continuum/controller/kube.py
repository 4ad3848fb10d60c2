"""A thin async Kubernetes client (:mod:`continuum.controller.http` for requests, aiohttp for watch
streams), authenticated with kopf's own login.

Why not the ``kubernetes`` package: it is synchronous (a thread per call inside an asyncio operator),
and it deserializes into typed models that reject objects it does not expect. kopf already resolves
credentials (kubeconfig, in-cluster service account, the kubernetes client's exec plugins); this client
reuses the ``ConnectionInfo`` its login handler returns and speaks plain JSON (orjson) over pooled
keep-alive connections.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from continuum.controller.http import HttpClient

MERGE = "application/merge-patch+json"
# where the kubelet keeps a pod's projected service account token; it rotates the file (bound tokens expire)
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"

# apiVersion/kind → (path prefix, plural, namespaced)
KINDS: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("v1", "Node"): ("/api/v1", "nodes", False),
    ("v1", "Pod"): ("/api/v1", "pods", True),
    ("v1", "Service"): ("/api/v1", "services", True),
    ("v1", "Secret"): ("/api/v1", "secrets", True),
    ("v1", "Event"): ("/api/v1", "events", True),
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments", True),
    ("apps/v1", "StatefulSet"): ("/apis/apps/v1", "statefulsets", True),
    ("continuum.dev/v1alpha1", "EdgeNodePool"): ("/apis/continuum.dev/v1alpha1", "edgenodepools", False),
    ("continuum.dev/v1alpha1", "EdgeWorkload"): ("/apis/continuum.dev/v1alpha1", "edgeworkloads", True),
    ("continuum.dev/v1alpha1", "EdgeWorkloadSet"): ("/apis/continuum.dev/v1alpha1", "edgeworkloadsets", True),
}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def path_for(
    api_version: str,
    kind: str,
    name: str | None = None,
    namespace: str | None = None,
    subresource: str | None = None,
) -> str:
    prefix, plural, namespaced = KINDS[(api_version, kind)]
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespaced and namespace else f"{prefix}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def _read_token(path: str | None) -> str | None:
    try:
        with open(path or "", encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _materialize(data: str | bytes | None, path: Any, suffix: str) -> str | None:
    if path:
        return os.fspath(path) if not isinstance(path, bytes) else path.decode()
    if not data:
        return None
    raw = data if isinstance(data, bytes) else data.encode()
    try:
        raw = base64.b64decode(raw, validate=True)
    except ValueError:
        pass
    handle = tempfile.NamedTemporaryFile(prefix="continuum-", suffix=suffix, delete=False)  # noqa: SIM115
    handle.write(raw)
    handle.close()
    return handle.name


class KubeApi:
    """JSON requests against one API server (:class:`HttpClient`, keep-alive connections of the running
    loop); watch streams over aiohttp."""

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | bool | None = None,
        headers: Mapping[str, str] | None = None,
        token_file: str | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "continuum-operator", **(headers or {})}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.token_file = token_file  # re-read on a 401: the kubelet rotates projected tokens
        self._ssl = ssl_context
        self._client: HttpClient | None = None  # requests: continuum.controller.http
        self._streams: aiohttp.ClientSession | None = None  # watches: their own pool, no total timeout

    @classmethod
    def from_connection_info(cls, info: Any) -> KubeApi:
        """Build from kopf's ``ConnectionInfo`` (what a ``@kopf.on.login`` handler returns)."""
        ctx: ssl.SSLContext | bool | None = None
        if info.server.startswith("https"):
            if info.insecure:
                ctx = False
            else:
                ctx = ssl.create_default_context(cafile=_materialize(info.ca_data, info.ca_path, ".crt"))
                cert = _materialize(info.certificate_data, info.certificate_path, ".crt")
                key = _materialize(info.private_key_data, info.private_key_path, ".key")
                if cert:
                    ctx.load_cert_chain(cert, key)
        headers = {}
        if info.username and info.password:
            basic = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        token_file = None
        if info.token and _read_token(SERVICE_ACCOUNT_TOKEN) == info.token:  # logged in as the pod's account
            token_file = SERVICE_ACCOUNT_TOKEN
        return cls(info.server, token=info.token, ssl_context=ctx, headers=headers, token_file=token_file)

    def reload_token(self) -> bool:
        """After a 401: take the token file's current token if it changed (a rotated projected token);
        True when it did, and the next requests use it."""
        token = _read_token(self.token_file) if self.token_file else None
        if not token or self._headers.get("Authorization") == f"Bearer {token}":
            return False
        self._headers["Authorization"] = f"Bearer {token}"
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._streams is not None and not self._streams.closed:
            # open watches end with their connections and are resumed by their streams with the new token
            old, self._streams = self._streams, None
            asyncio.get_running_loop().create_task(old.close())
        return True

    def _http(self) -> HttpClient:
        if self._client is None:
            self._client = HttpClient(self.server, self._headers, self._ssl)
        return self._client

    def _stream_client(self) -> aiohttp.ClientSession:
        if self._streams is None or self._streams.closed:
            connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl if self._ssl is not None else True)
            self._streams = aiohttp.ClientSession(
                self.server, headers=self._headers, connector=connector, timeout=aiohttp.ClientTimeout()
            )
        return self._streams

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._streams is not None and not self._streams.closed:
            await self._streams.close()

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, params: Mapping[str, str], read_timeout: float
    ) -> AsyncIterator[aiohttp.StreamReader]:
        """A streamed GET (a watch): the body's reader; an error status raises :class:`ApiError`.
        ``read_timeout`` bounds the silence between two chunks (a dead connection), not the stream."""
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=read_timeout)
        async with self._stream_client().get(path, params=params, timeout=timeout) as resp:
            if resp.status == 401:
                self.reload_token()  # the watch's stream lists again (backing off) with the new token
            if resp.status >= 400:
                try:
                    data = await resp.json(content_type=None)
                except (aiohttp.ContentTypeError, ValueError):
                    data = {"message": await resp.text()}
                data = data if isinstance(data, dict) else {}
                raise ApiError(
                    resp.status, str(data.get("reason", resp.reason)), str(data.get("message", ""))
                )
            yield resp.content

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        decode: bool = True,
    ) -> dict[str, Any]:
        """The answer's object; ``decode=False``: {} on success (the answer is not read: a create whose
        result nobody uses), errors are still raised with the server's message."""
        payload = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS) if body is not None else None
        status, reason, raw = await self._http().request(method, path, payload, params, content_type)
        if status == 401 and self.reload_token():  # the kubelet rotated the token: once more with the new one
            status, reason, raw = await self._http().request(method, path, payload, params, content_type)
        if not decode and status < 400:
            return {}
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            data = {"message": raw.decode(errors="replace")}
        if status >= 400:
            data = data if isinstance(data, dict) else {}
            raise ApiError(status, str(data.get("reason", reason)), str(data.get("message", "")))
        return data if isinstance(data, dict) else {}

    # -- conveniences --
    async def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path_for(api_version, kind, name, namespace))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        return (await self.list_snapshot(api_version, kind, namespace, label_selector))[0]

    async def list_snapshot(
        self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[builtins.list[dict[str, Any]], int]:
        """The items and the list's resourceVersion (the snapshot they are from; 0 when not a number)."""
        items, raw = await self.list_raw(api_version, kind, namespace, label_selector)
        return items, int(raw) if raw.isdigit() else 0

    async def list_raw(
        self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """The items and the list's resourceVersion as the server wrote it (what a watch resumes from)."""
        params = {"labelSelector": label_selector} if label_selector else None
        data = await self.request("GET", path_for(api_version, kind, None, namespace), params=params)
        items = list(data.get("items") or [])
        # A real apiserver leaves kind/apiVersion off list items (the list carries them); callers key by kind.
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items, str((data.get("metadata") or {}).get("resourceVersion") or "0")

    async def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        subresource: str | None = None,
        content_type: str = MERGE,
        read: bool = True,
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH",
            path_for(api_version, kind, name, namespace, subresource),
            patch,
            content_type=content_type,
            decode=read,
        )

    async def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        try:
            await self.request(
                "DELETE", path_for(api_version, kind, name, namespace), {"propagationPolicy": "Background"}
            )
        except ApiError as exc:
            if exc.status != 404:
                raise

    async def apply(self, obj: dict[str, Any], create_only: bool = False, read: bool = True) -> dict[str, Any]:
        """Create the object, or merge-patch its metadata labels/annotations/ownerReferences and spec;
        returns the object as the server has it (``read=False``: {}, nothing decoded or fetched)."""
        meta = obj["metadata"]
        api_version, kind, ns = obj["apiVersion"], obj["kind"], meta.get("namespace")
        try:
            return await self.request("POST", path_for(api_version, kind, None, ns), obj, decode=read)
        except ApiError as exc:
            if exc.status != 409:
                raise
        if create_only:
            return (await self.get(api_version, kind, meta["name"], ns) or {}) if read else {}
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}
        return await self.patch(api_version, kind, meta["name"], body, ns, read=read)
