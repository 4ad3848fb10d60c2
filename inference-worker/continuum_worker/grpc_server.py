"""KServe v2 ``GRPCInferenceService`` (grpcio aio) over the same data plane as HTTP, with the protobufs
``tritonclient`` ships. Tensors come as typed ``contents`` or ``raw_input_contents``; outputs always go
back as ``raw_output_contents`` (what tritonclient reads)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from continuum_worker.dataplane import DataPlane
from continuum_worker.errors import InvalidArgument, NotFound, ServerError, as_server_error
from continuum_worker.models import LoadedModel
from continuum_worker.protocol import (
    DATATYPES,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    SharedMemoryInput,
    array_from_bytes,
    datatype_of,
    requested_output,
    shared_memory_ref,
    tensor_bytes,
    tensor_size,
)
from continuum_worker.shm import CUDA_UNSUPPORTED

log = logging.getLogger("continuum.worker")
MAX_MESSAGE = 256 * 1024 * 1024
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip


def parameters(params: Any) -> dict[str, Any]:
    out = {}
    for key, p in params.items():
        choice = p.WhichOneof("parameter_choice")
        out[key] = getattr(p, choice) if choice else None
    return out


def parse_request(request: pb.ModelInferRequest) -> InferRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != sum(1 for t in request.inputs if "shared_memory_region" not in t.parameters):
        raise ProtocolError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    shm_inputs: dict[str, SharedMemoryInput] = {}
    raw_index = 0
    if not request.inputs:
        raise ProtocolError("request needs a non-empty 'inputs' list")
    for t in request.inputs:
        name, datatype, shape = t.name, t.datatype, tuple(int(d) for d in t.shape)
        if name in datatypes:
            raise ProtocolError(f"input '{name}' is given twice")
        if datatype not in DATATYPES:
            raise ProtocolError(f"input '{name}': unknown datatype {datatype!r}")
        if any(d < 0 for d in shape):
            raise ProtocolError(f"input '{name}': shape {list(shape)} has a negative dimension")
        datatypes[name] = datatype
        ref = shared_memory_ref(parameters(t.parameters), f"input '{name}'")
        if ref is not None:
            shm_inputs[name] = SharedMemoryInput(ref, datatype, shape)
            continue
        if raw:
            inputs[name] = array_from_bytes(raw[raw_index], datatype, shape, name)
            raw_index += 1
            continue
        field = CONTENTS.get(datatype)
        if field is None:
            raise ProtocolError(f"input '{name}': {datatype} has no typed contents; send raw_input_contents")
        values = list(getattr(t.contents, field))
        count = int(np.prod(shape)) if shape else 1
        if len(values) != count:
            raise ProtocolError(f"input '{name}': shape {list(shape)} needs {count} elements, contents has {len(values)}")
        if datatype == "BYTES":
            inputs[name] = np.array([*values, b""], dtype=np.object_)[:-1].reshape(shape)
        else:
            try:
                inputs[name] = np.array(values, dtype=DATATYPES[datatype]).reshape(shape)
            except OverflowError:
                raise ProtocolError(f"input '{name}': a value is out of range for {datatype}") from None
    outputs = None
    if request.outputs:
        outputs = [requested_output(o.name, parameters(o.parameters), True) for o in request.outputs]
    return InferRequest(
        id=request.id or None,
        inputs=inputs,
        datatypes=datatypes,
        outputs=outputs,
        binary_default=True,
        parameters=parameters(request.parameters),
        shm_inputs=shm_inputs,
    )


def encode_response(
    name: str, model: LoadedModel, request_id: str | None, results: dict[str, np.ndarray], wanted: list[RequestedOutput]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=name, model_version=model.version, id=request_id or "")
    for req in wanted:
        array = results[req.name]
        out = response.outputs.add(name=req.name, datatype=datatype_of(array.dtype), shape=list(array.shape))
        if req.shm is not None:
            out.parameters["shared_memory_region"].string_param = req.shm.region
            out.parameters["shared_memory_byte_size"].int64_param = tensor_size(array)
            out.parameters["shared_memory_offset"].int64_param = req.shm.offset
            response.raw_output_contents.append(b"")
        else:
            response.raw_output_contents.append(tensor_bytes(array))
    return response


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    err = as_server_error(exc)
    await context.abort(err.grpc_code, err.message)


def _version(v: str) -> str | None:
    return v or None


def _auth(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            return str(value)
    return None


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, _version(request.version)))

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        meta = self.plane.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        try:
            meta = self.plane.model_metadata(request.name, _version(request.version))
        except ServerError as exc:
            await _abort(context, exc)
        response = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for kind in ("inputs", "outputs"):
            for t in meta[kind]:
                getattr(response, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return response

    async def ModelConfig(self, request: Any, context: Any) -> pb.ModelConfigResponse:
        try:
            config = self.plane.model_config(request.name, _version(request.version))
        except ServerError as exc:
            await _abort(context, exc)
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> pb.ModelStatisticsResponse:
        try:
            stats = self.plane.statistics(request.name or None, _version(request.version))
        except ServerError as exc:
            await _abort(context, exc)
        response = pb.ModelStatisticsResponse()
        for entry in stats["model_stats"]:
            entry = dict(entry)
            entry["batch_stats"] = entry["batch_stats"]
            json_format.ParseDict(entry, response.model_stats.add(), ignore_unknown_fields=False)
        return response

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        plane = self.plane
        name, version = request.model_name, _version(request.model_version)
        try:
            model = plane.model(name, version)
        except NotFound as exc:
            raise InvalidArgument(exc.message) from None  # as on HTTP: an unknown model on infer
        try:
            parsed = parse_request(request)
        except ProtocolError as exc:
            plane.stats.of(model.name, model.version).failure(0.0)
            raise InvalidArgument(str(exc)) from None

        def encode(m: LoadedModel, results: Any, wanted: Any) -> pb.ModelInferResponse:
            return encode_response(name, m, parsed.id, results, wanted)

        try:
            return await plane.infer(name, version, parsed, encode)
        except NotFound as exc:
            raise InvalidArgument(exc.message) from None

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        try:
            return await self._infer(request)
        except ServerError as exc:
            await _abort(context, exc)
            raise  # not reached: abort raises

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except ServerError as exc:  # a stream reports errors per request and goes on
                yield pb.ModelStreamInferResponse(error_message=exc.message)

    async def RepositoryIndex(self, request: Any, context: Any) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for entry in self.plane.repository_index(request.ready):
            response.models.add(**entry)
        return response

    async def RepositoryModelLoad(self, request: Any, context: Any) -> pb.RepositoryModelLoadResponse:
        params = {}
        for key, p in request.parameters.items():
            choice = p.WhichOneof("parameter_choice")
            params[key] = getattr(p, choice) if choice else None
        try:
            if isinstance(params.get("config"), str):
                json.loads(params["config"])  # the data plane names the field of a bad config
            await self.plane.load(request.model_name, params, _auth(context))
        except ValueError as exc:
            await _abort(context, InvalidArgument(f"failed to load '{request.model_name}': {exc}"))
        except ServerError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, context: Any) -> pb.RepositoryModelUnloadResponse:
        try:
            await self.plane.unload(request.model_name, _auth(context))
        except ServerError as exc:
            await _abort(context, exc)
        return pb.RepositoryModelUnloadResponse()

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> pb.SystemSharedMemoryStatusResponse:
        try:
            regions = self.plane.shm.status(request.name or None)
        except ServerError as exc:
            await _abort(context, exc)
        response = pb.SystemSharedMemoryStatusResponse()
        for r in regions:
            response.regions[str(r["name"])].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(**r)  # type: ignore[arg-type]
            )
        return response

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> pb.SystemSharedMemoryRegisterResponse:
        try:
            self.plane.shm.register(request.name, request.key, request.offset, request.byte_size)
        except ServerError as exc:
            await _abort(context, exc)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(
        self, request: Any, context: Any
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.plane.shm.unregister(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> pb.CudaSharedMemoryStatusResponse:
        if request.name:
            await _abort(context, NotFound(f"Unable to find cuda shared memory region: '{request.name}'"))
        return pb.CudaSharedMemoryStatusResponse()

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> pb.CudaSharedMemoryRegisterResponse:
        await _abort(context, InvalidArgument(CUDA_UNSUPPORTED))
        return pb.CudaSharedMemoryRegisterResponse()

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()  # nothing is ever registered


async def start_grpc(plane: DataPlane, host: str, port: int) -> grpc.aio.Server:
    """Start the gRPC service; ``RuntimeError`` when the port cannot be bound."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), server)
    address = f"[::]:{port}" if host in ("0.0.0.0", "::") else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot listen on {address}")
    await server.start()
    return server
