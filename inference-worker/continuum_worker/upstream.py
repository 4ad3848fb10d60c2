"""Offload to an upstream v2 server (Triton, or a Continuum worker one tier up), with a circuit breaker.

The request is forwarded as received — JSON or binary tensors, byte for byte — and the upstream's
answer is returned as is, so nothing is decoded twice. A timeout, a refused connection or a 5xx is a
failure: the caller answers from the local model and counts a fallback. After ``failure_threshold``
failures in a row the breaker opens and requests go straight to the local model (no more timeouts
paid); after ``reset_seconds`` one request is let through as a probe (half-open). A probe that
succeeds closes the breaker; one that fails reopens it for twice as long, up to ``max_reset_seconds``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

log = logging.getLogger("continuum.worker")
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# The request body is forwarded as aiohttp handed it over, already decompressed: never labelled gzip.
# Accept-Encoding is the client's own (aiohttp's default one is skipped): a compressed answer goes back as is.
FORWARDED_HEADERS = ("Content-Type", "Inference-Header-Content-Length", "Accept-Encoding")
RETURNED_HEADERS = ("Content-Type", "Inference-Header-Content-Length", "Content-Encoding")


class UpstreamFailure(Exception):
    """The upstream did not answer usably; ``reason`` labels the fallback metric."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 3,
        reset_seconds: float = 1.0,
        max_reset_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.base_reset = reset_seconds
        self.max_reset = max_reset_seconds
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.reset = reset_seconds
        self.open_until = 0.0
        self.probing = False
        self.opened = 0  # times opened, for metrics and tests

    def allow(self) -> bool:
        """Whether to try the upstream now (a half-open breaker lets one probe through at a time)."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self.clock() >= self.open_until:
            self.state = HALF_OPEN
        if self.state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        if self.state != CLOSED:
            log.warning("upstream answers again: offloading resumes")
        self.state, self.failures, self.reset, self.probing = CLOSED, 0, self.base_reset, False

    def failure(self) -> None:
        if self.state == HALF_OPEN:
            self.reset = min(self.reset * 2, self.max_reset)
            self._open()
            return
        self.failures += 1
        if self.state == CLOSED and self.failures >= self.failure_threshold:
            self._open()

    def abandon(self) -> None:
        """A probe ended without a verdict: let the next request probe."""
        self.probing = False

    def _open(self) -> None:
        self.state, self.probing = OPEN, False
        self.open_until = self.clock() + self.reset
        self.opened += 1
        log.warning("upstream marked down for %.1f s: answering locally", self.reset)


@dataclass
class Forwarded:
    status: int
    body: bytes
    headers: dict[str, str]


class Upstream:
    def __init__(self, base_url: str, timeout_ms: float, breaker: CircuitBreaker | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_ms = timeout_ms
        self.timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self.breaker = breaker or CircuitBreaker()
        self._session: aiohttp.ClientSession | None = None

    @property
    def up(self) -> bool:
        return self.breaker.state == CLOSED

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30), auto_decompress=False
            )
        return self._session

    async def forward(self, path: str, body: bytes, headers: Mapping[str, str]) -> Forwarded:
        """POST ``body`` to the upstream; raises :class:`UpstreamFailure` when the local model must answer."""
        if not self.breaker.allow():
            raise UpstreamFailure("breaker_open", f"upstream {self.base_url} is marked down")
        wanted = {h.lower(): h for h in FORWARDED_HEADERS}  # header names are case-insensitive
        send = {wanted[k.lower()]: v for k, v in headers.items() if k.lower() in wanted}
        try:
            session = await self.session()
            async with session.post(
                self.base_url + path,
                data=body,
                headers=send,
                timeout=self.timeout,
                skip_auto_headers=("Accept-Encoding",),
            ) as response:
                data = await response.read()
                if response.status >= 500:
                    raise UpstreamFailure("5xx", f"HTTP {response.status}: {data[:200]!r}")
                out = Forwarded(
                    response.status,
                    data,
                    {k: response.headers[k] for k in RETURNED_HEADERS if k in response.headers},
                )
        except UpstreamFailure:
            self.breaker.failure()
            raise
        except TimeoutError as exc:
            self.breaker.failure()
            raise UpstreamFailure("timeout", f"no answer within {self.timeout_ms:.0f} ms") from exc
        except (aiohttp.ClientError, OSError) as exc:
            self.breaker.failure()
            # Pooled keep-alive connections to a dead upstream are dead too: drop them all, or every
            # half-open probe would draw one of them and fail against an upstream that is back.
            await self._reset_connections()
            raise UpstreamFailure("connection", str(exc) or type(exc).__name__) from exc
        except BaseException:
            self.breaker.abandon()  # cancelled (the client went away): neither success nor failure
            raise
        self.breaker.success()  # a 4xx is the request's fault, not the upstream's
        return out

    async def _reset_connections(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
