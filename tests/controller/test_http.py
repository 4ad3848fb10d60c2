"""The operator's HTTP/1.1 client against a scripted server: Content-Length and chunked bodies (split
anywhere), keep-alive reuse, a body read until the server closes, a retry when the server had closed an
idle connection, a timeout, a path prefix and query parameters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from continuum.controller.http import HttpClient
from continuum.controller.kube import ApiError, KubeApi


class Server:
    """Answers each request with ``reply(request_head, body)`` as raw bytes, written in small pieces."""

    def __init__(self, reply: Callable[[str, bytes], bytes | None]) -> None:
        self.reply = reply
        self.requests: list[str] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                length = next(
                    (
                        int(h.split(":")[1])
                        for h in head.split("\r\n")
                        if h.lower().startswith("content-length")
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                self.requests.append(head.split("\r\n")[0])
                answer = self.reply(head, body)
                if answer is None:  # hang up without answering
                    break
                for i in range(0, len(answer), 7):
                    writer.write(answer[i : i + 7])
                    await writer.drain()
                if b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def json_reply(body: bytes, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def chunked_reply(parts: list[bytes]) -> bytes:
    chunks = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in parts)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"


async def test_bodies_keep_alive_prefix_and_params():
    replies = iter(
        [
            json_reply(b'{"a": 1}'),
            chunked_reply([b'{"items": [', b"1, 2", b"]}"]),
            json_reply(b'{"reason": "NotFound"}', "404 Not Found"),
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ]
    )
    server = Server(lambda head, body: next(replies))
    async with server as url:
        client = HttpClient(url + "/prefix/", {"Authorization": "Bearer t"}, None)
        first = await client.request("POST", "/api/v1/x", b'{"k": "v"}', {"labelSelector": "a=b,c"})
        assert (first.status, first.body) == (200, b'{"a": 1}')
        assert (await client.request("GET", "/y")).body == b'{"items": [1, 2]}'
        missing = await client.request("GET", "/z")
        assert (missing.status, missing.reason) == (404, "Not Found")
        assert (await client.request("DELETE", "/w")).status == 204
        client.close()
    assert server.connections == 1  # one keep-alive connection for all four
    assert server.requests == [
        "POST /prefix/api/v1/x?labelSelector=a%3Db%2Cc HTTP/1.1",
        "GET /prefix/y HTTP/1.1",
        "GET /prefix/z HTTP/1.1",
        "DELETE /prefix/w HTTP/1.1",
    ]


async def test_a_body_until_close_and_a_new_connection_after_it():
    replies = iter([b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"until": "close"}', json_reply(b"{}")])
    server = Server(lambda head, body: next(replies))
    async with server as url:
        client = HttpClient(url, {}, None)
        assert (await client.request("GET", "/a")).body == b'{"until": "close"}'
        assert (await client.request("GET", "/b")).body == b"{}"
        client.close()
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_replaced():
    answered = 0

    def reply(head: str, body: bytes) -> bytes | None:
        nonlocal answered
        answered += 1
        return json_reply(b'{"n": %d}' % answered) if answered != 2 else None  # the 2nd: hang up unanswered

    server = Server(reply)
    async with server as url:
        client = HttpClient(url, {}, None)
        assert (await client.request("GET", "/a")).body == b'{"n": 1}'
        assert (await client.request("GET", "/b")).body == b'{"n": 3}'  # retried on a new connection
        client.close()
    assert server.connections == 2


async def test_a_request_without_an_answer_times_out():
    server = Server(lambda head, body: b"")  # answers nothing, keeps the connection open
    async with server as url:
        client = HttpClient(url, {}, None)
        with pytest.raises(TimeoutError):
            await client.request("GET", "/slow", timeout=0.2)
        client.close()


async def test_a_rotated_service_account_token_is_read_again_after_a_401(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    valid = {"token": "first"}

    def reply(head: str, body: bytes) -> bytes:
        if f"Authorization: Bearer {valid['token']}" in head:
            payload = b'{"kind": "Namespace"}'
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
        payload = b'{"reason": "Unauthorized", "message": "Unauthorized"}'
        return b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)

    server = Server(reply)
    async with server as url:
        api = KubeApi(url, token="first", token_file=str(token_file))
        assert (await api.request("GET", "/api/v1/namespaces/a"))["kind"] == "Namespace"
        valid["token"] = "second"  # the old one expired; the kubelet rotated the file
        token_file.write_text("second\n")
        assert (await api.request("GET", "/api/v1/namespaces/a"))["kind"] == "Namespace"
        assert server.requests[-2:] == ["GET /api/v1/namespaces/a HTTP/1.1"] * 2  # the 401, then the retry
        valid["token"] = "third"  # a 401 the file cannot cure is the caller's: no loop
        with pytest.raises(ApiError) as err:
            await api.request("GET", "/api/v1/namespaces/a")
        assert err.value.status == 401
        without_file = KubeApi(url, token="second")
        with pytest.raises(ApiError):
            await without_file.request("GET", "/api/v1/namespaces/a")
        await api.close()
        await without_file.close()
