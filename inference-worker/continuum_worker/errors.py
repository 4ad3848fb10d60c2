"""Errors of the data plane, each with the HTTP status and gRPC code Triton answers with."""

from __future__ import annotations

import grpc

from continuum_worker.protocol import ProtocolError


class ServerError(Exception):
    http_status = 500
    grpc_code = grpc.StatusCode.INTERNAL

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class InvalidArgument(ServerError):
    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServerError):
    """Unknown model or region. Triton answers 404 on metadata/ready/config/stats, 400 on infer."""

    http_status = 404
    grpc_code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServerError):
    http_status = 503
    grpc_code = grpc.StatusCode.UNAVAILABLE


class Forbidden(ServerError):
    http_status = 403
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class Unauthorized(ServerError):
    http_status = 401
    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class Unsupported(ServerError):
    http_status = 400
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


def as_server_error(exc: BaseException) -> ServerError:
    if isinstance(exc, ServerError):
        return exc
    if isinstance(exc, ProtocolError):
        return InvalidArgument(str(exc))
    return ServerError(f"inference failed: {exc}")
