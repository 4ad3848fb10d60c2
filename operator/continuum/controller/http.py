"""A small HTTP/1.1 client for the operator's API calls: keep-alive connections (one request at a time on
each), ``Content-Length`` and chunked responses, TLS through the event loop.

Why not aiohttp for these: its per-request machinery (sessions, tracing hooks, cookie jars, timers, payload
objects, the response object) cost the operator more CPU per workload than deciding where it runs
(bench/reconcile.py: ~0.3 ms of CPU per call; this costs a fraction of it). Watch streams still use
aiohttp (:meth:`continuum.controller.kube.KubeApi.stream`): one long request each, their cost is per
chunk, not per call.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import NamedTuple, cast
from urllib.parse import urlencode, urlsplit

CONNECT_TIMEOUT = 10.0
MAX_IDLE = 32  # idle keep-alive connections kept per client


class Response(NamedTuple):
    status: int
    reason: str
    body: bytes


class _Head(NamedTuple):
    status: int
    reason: str
    length: int | None  # None: chunked, or (with until_close) until the server closes
    until_close: bool
    keep_alive: bool


def _parse_head(raw: bytes) -> _Head:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/") or not code.isdigit():
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    status = int(code)
    length: int | None = None
    chunked = False
    keep_alive = version != "HTTP/1.0"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding":
            chunked = "chunked" in value.lower()
        elif name == "connection":
            keep_alive = value.strip().lower() != "close" and (keep_alive or "keep-alive" in value.lower())
    if status in (204, 304) or 100 <= status < 200:
        length, chunked = 0, False
    if chunked:
        length = None
    until_close = length is None and not chunked
    return _Head(status, reason, length, until_close, keep_alive and not until_close)


class Connection(asyncio.Protocol):
    """One connection; :meth:`send` writes a request and returns a future of its :class:`Response`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.reusable = False
        self.received = False  # a byte of the current response arrived
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self._head: _Head | None = None
        self._chunks: list[bytes] = []
        self._pos = 0  # chunked: where the next chunk's size line starts in the buffer

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.open = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        head = self._head
        if head is not None and head.until_close:
            waiter.set_result(Response(head.status, head.reason, bytes(self._buffer)))
        else:
            waiter.set_exception(ConnectionResetError(f"the API server closed the connection: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.received = True
        self._buffer += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.abort()  # bytes nobody asked for: this connection's framing cannot be trusted
            return
        try:
            response = self._parse()
        except ValueError as exc:
            self.abort()
            waiter.set_exception(ConnectionResetError(f"bad response from the API server: {exc}"))
            return
        if response is not None:
            head = self._head
            assert head is not None
            self.reusable = head.keep_alive and not self._buffer
            self._head = None
            if not self.reusable:
                self.close()
            waiter.set_result(response)

    # -- requests --
    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.received = False
        self.reusable = False
        self._head, self._chunks, self._pos = None, [], 0
        self._buffer.clear()
        self.transport.write(data)
        return self._waiter

    def expire(self) -> None:
        waiter = self._waiter
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError("no response from the API server in time"))

    def close(self) -> None:
        self.open = self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.open = self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _parse(self) -> Response | None:
        buffer = self._buffer
        if self._head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            self._head = _parse_head(bytes(buffer[:end]))
            del buffer[: end + 4]
        head = self._head
        if head.until_close:
            return None
        if head.length is not None:
            if len(buffer) < head.length:
                return None
            body = bytes(buffer[: head.length])
            del buffer[: head.length]
            return Response(head.status, head.reason, body)
        while True:  # chunked
            line_end = buffer.find(b"\r\n", self._pos)
            if line_end < 0:
                return None
            size = int(bytes(buffer[self._pos : line_end]).split(b";", 1)[0].strip() or b"x", 16)
            start = line_end + 2
            if size == 0:  # the last chunk, then optional trailers and an empty line
                if buffer[start : start + 2] == b"\r\n":
                    end = start + 2
                else:
                    trailers = buffer.find(b"\r\n\r\n", start)
                    if trailers < 0:
                        return None
                    end = trailers + 4
                del buffer[:end]
                return Response(head.status, head.reason, b"".join(self._chunks))
            if len(buffer) < start + size + 2:
                return None
            self._chunks.append(bytes(buffer[start : start + size]))
            self._pos = start + size + 2


class HttpClient:
    """Requests against one server (``http(s)://host[:port][/prefix]``) over pooled keep-alive connections."""

    def __init__(
        self, server: str, headers: Mapping[str, str], ssl_context: ssl.SSLContext | bool | None
    ) -> None:
        url = urlsplit(server)
        self.https = url.scheme == "https"
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if self.https else 80)
        self.prefix = url.path.rstrip("/")
        host = url.netloc.rpartition("@")[2]
        lines = [f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
        self._headers = "".join(f"{line}\r\n" for line in lines).encode("latin-1")
        self._ssl: ssl.SSLContext | None = None
        if self.https:
            if isinstance(ssl_context, ssl.SSLContext):
                self._ssl = ssl_context
            elif ssl_context is False:  # insecure-skip-tls-verify
                self._ssl = ssl.create_default_context()
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
            else:
                self._ssl = ssl.create_default_context()
        self._idle: list[Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                Connection,
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl else None,
            ),
            CONNECT_TIMEOUT,
        )
        return conn

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Response:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that made them
            self._idle, self._loop = [], loop
        target = self.prefix + path + ("?" + urlencode(params) if params else "")
        head = f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + self._headers
        if body is not None:
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode("latin-1")
            data = head + body
        else:
            data = head + b"\r\n"
        while True:
            reused = False
            conn = None
            while self._idle:
                candidate = self._idle.pop()
                if candidate.open:
                    conn, reused = candidate, True
                    break
            if conn is None:
                conn = await self._connect()
            expiry = loop.call_later(timeout, conn.expire)
            try:
                response = await conn.send(data)
            except ConnectionResetError:
                if reused and not conn.received:  # the server had closed the idle connection: a new one
                    continue
                raise
            except BaseException:  # cancelled, timed out: the connection's state is unknown
                conn.abort()
                raise
            finally:
                expiry.cancel()
            if conn.reusable and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
            elif conn.open:
                conn.close()
            return response

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle = []
