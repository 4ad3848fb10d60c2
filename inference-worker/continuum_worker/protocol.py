"""The Open Inference Protocol v2 (KServe v2 / Triton HTTP) wire format, with no server attached.

Requests are JSON, or JSON followed by raw tensor bytes (the *binary tensor data* extension):
the header ``Inference-Header-Content-Length`` gives the JSON's length, and every input whose
``parameters.binary_data_size`` is set takes that many bytes, in input order, from what follows.
Outputs are binary when the request asks (``binary_data_output``, or ``binary_data`` per output);
tritonclient asks for binary by default. BYTES elements are each a 4-byte little-endian length and
the bytes; FP16 exists only in binary. Every malformed request raises :class:`ProtocolError` (HTTP
400) naming what is wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per response

# v2 datatype <-> numpy dtype (explicit little-endian: the wire is little-endian)
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in DATATYPES.items() if name != "BYTES"}


class ProtocolError(ValueError):
    """A request the protocol does not allow; the message goes back as ``{"error": ...}`` with 400."""


def datatype_of(dtype: np.dtype[Any]) -> str:
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _BY_KIND[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise ProtocolError(f"no v2 datatype for numpy dtype {dtype}") from None


@dataclass
class RequestedOutput:
    name: str
    binary: bool
    classification: int = 0  # top-k classes instead of the tensor (Triton's classification extension)
    shm: SharedMemoryRef | None = None  # written into a registered shared-memory region


@dataclass
class SharedMemoryRef:
    region: str
    byte_size: int
    offset: int = 0


def shared_memory_ref(params: Mapping[str, Any], what: str) -> SharedMemoryRef | None:
    """The ``shared_memory_region/byte_size/offset`` parameters of an input or output, checked."""
    region = params.get("shared_memory_region")
    if region is None:
        for key in ("shared_memory_byte_size", "shared_memory_offset"):
            if key in params:
                raise ProtocolError(f"{what}: '{key}' given without 'shared_memory_region'")
        return None
    size, offset = params.get("shared_memory_byte_size"), params.get("shared_memory_offset", 0)
    if not isinstance(region, str) or not region:
        raise ProtocolError(f"{what}: 'shared_memory_region' must be a region name")
    for key, value in (("shared_memory_byte_size", size), ("shared_memory_offset", offset)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProtocolError(f"{what}: '{key}' must be a non-negative integer, got {value!r}")
    return SharedMemoryRef(region, size, offset)


def array_from_bytes(data: bytes | memoryview, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A tensor from its raw little-endian bytes (BYTES: 4-byte length prefixes)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return decode_bytes_tensor(data, count, name).reshape(shape)
    dtype = DATATYPES[datatype]
    if len(data) != count * dtype.itemsize:
        raise ProtocolError(
            f"input '{name}': shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
            f"got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def tensor_size(array: np.ndarray) -> int:
    if array.dtype.kind == "O":
        return sum(4 + len(v if isinstance(v, bytes) else str(v).encode()) for v in array.reshape(-1))
    return int(array.nbytes)


def tensor_bytes(array: np.ndarray) -> bytes:
    """The raw wire form of a tensor (inverse of :func:`array_from_bytes`)."""
    if datatype_of(array.dtype) == "BYTES":
        return encode_bytes_tensor(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


@dataclass
class SharedMemoryInput:
    ref: SharedMemoryRef
    datatype: str
    shape: tuple[int, ...]


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    outputs: list[RequestedOutput] | None  # None: every output
    binary_default: bool
    parameters: dict[str, Any] = field(default_factory=dict)
    shm_inputs: dict[str, SharedMemoryInput] = field(default_factory=dict)  # read by the data plane


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise ProtocolError(f"input '{name}': shape must be a list of integers, got {raw!r}")
    if any(d < 0 for d in raw):
        raise ProtocolError(f"input '{name}': shape {raw} has a negative dimension")
    return tuple(raw)


def decode_bytes_tensor(buf: bytes | memoryview, count: int, name: str) -> np.ndarray:
    """``count`` length-prefixed elements (4-byte little-endian length, then the bytes)."""
    out = np.empty(count, dtype=np.object_)
    view = memoryview(buf)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise ProtocolError(f"input '{name}': BYTES data ends inside element {i}")
        size = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(view):
            raise ProtocolError(f"input '{name}': BYTES element {i} claims {size} bytes past the end")
        out[i] = bytes(view[offset : offset + size])
        offset += size
    if offset != len(view):
        raise ProtocolError(f"input '{name}': {len(view) - offset} bytes left after {count} BYTES elements")
    return out


def encode_bytes_tensor(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(len(data).to_bytes(4, "little"))
        parts.append(data)
    return b"".join(parts)


def _numeric_fast(data: list[Any], dtype: np.dtype[Any], count: int) -> np.ndarray | None:
    """Numbers straight through numpy (the common case, ~5x faster than checking element by element);
    None when anything is unusual (ragged, bools, strings, out of range), and the slow path decides."""
    try:
        array = np.array(data)
    except (ValueError, OverflowError):
        return None
    kind = array.dtype.kind
    if array.size != count or not (kind in "iu" or (kind == "f" and dtype.kind == "f")):
        return None
    if kind in "iu" and dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            return None
    if _has_bool(data):  # numpy would read true/false next to numbers as 1/0
        return None
    return array if array.dtype == dtype else array.astype(dtype)


def _has_bool(data: list[Any]) -> bool:
    return any(v is True or v is False or (type(v) is list and _has_bool(v)) for v in data)


def _from_json_data(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    if datatype == "FP16":
        raise ProtocolError(f"input '{name}': FP16 has no JSON form; send it as binary tensor data")
    if datatype not in ("BYTES", "BOOL") and isinstance(data, list):
        fast = _numeric_fast(data, DATATYPES[datatype], math.prod(shape))
        if fast is not None:
            return fast.reshape(shape)
    flat = np.asarray(data, dtype=object).reshape(-1) if isinstance(data, list) else None
    if flat is None:
        raise ProtocolError(f"input '{name}': data must be a (nested) list")
    count = math.prod(shape)
    if flat.size != count:
        raise ProtocolError(
            f"input '{name}': shape {list(shape)} needs {count} elements, data has {flat.size}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=np.object_)
        for i, item in enumerate(flat):
            out[i] = (
                item.encode() if isinstance(item, str) else bytes(item) if isinstance(item, bytes) else None
            )
            if out[i] is None:
                raise ProtocolError(f"input '{name}': BYTES elements must be strings")
        return out.reshape(shape)
    try:
        if datatype == "BOOL":
            if not all(isinstance(v, bool) for v in flat):
                raise ProtocolError(f"input '{name}': BOOL data must be true/false")
            return np.array(flat.tolist(), dtype=np.bool_).reshape(shape)
        dtype = DATATYPES[datatype]
        values = flat.tolist()
        if dtype.kind in "iu" and not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ProtocolError(f"input '{name}': {datatype} data must be integers")
        if dtype.kind == "f" and not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            raise ProtocolError(f"input '{name}': {datatype} data must be numbers")
        info = np.iinfo(dtype) if dtype.kind in "iu" else None
        if info is not None and values and (min(values) < info.min or max(values) > info.max):
            raise ProtocolError(f"input '{name}': a value is out of range for {datatype}")
        return np.array(values, dtype=dtype).reshape(shape)
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"input '{name}': data does not fit {datatype}: {exc}") from None


def parse_infer_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """``body`` as the client meant it: HTTP servers (aiohttp) have already undone ``Content-Encoding``."""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} is not an integer: {header_length!r}") from None
        if not 0 < json_size <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {json_size} does not fit a body of {len(body)} bytes")
    else:
        json_size = len(body)
    try:
        header = json.loads(body[:json_size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("request must be a JSON object")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("request needs a non-empty 'inputs' list")
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    binary = memoryview(body)[json_size:]
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    shm_inputs: dict[str, SharedMemoryInput] = {}
    for raw in raw_inputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ProtocolError("every input needs a 'name'")
        name = raw["name"]
        if name in datatypes:
            raise ProtocolError(f"input '{name}' is given twice")
        datatype = raw.get("datatype")
        if datatype not in DATATYPES:
            raise ProtocolError(f"input '{name}': unknown datatype {datatype!r}")
        shape = _shape(raw.get("shape"), name)
        iparams = raw.get("parameters") or {}
        if not isinstance(iparams, dict):
            raise ProtocolError(f"input '{name}': 'parameters' must be an object")
        size = iparams.get("binary_data_size")
        ref = shared_memory_ref(iparams, f"input '{name}'")
        if ref is not None:
            if size is not None or "data" in raw:
                raise ProtocolError(f"input '{name}': shared memory and data/binary_data_size exclude each other")
            shm_inputs[name] = SharedMemoryInput(ref, datatype, shape)
            datatypes[name] = datatype
            continue
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise ProtocolError(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise ProtocolError(
                    f"input '{name}': binary_data_size {size} exceeds the {len(binary) - offset} bytes left"
                )
            chunk = binary[offset : offset + size]
            offset += size
            count = math.prod(shape)
            if datatype == "BYTES":
                array = decode_bytes_tensor(chunk, count, name).reshape(shape)
            else:
                dtype = DATATYPES[datatype]
                if size != count * dtype.itemsize:
                    raise ProtocolError(
                        f"input '{name}': shape {list(shape)} of {datatype} needs {count * dtype.itemsize} "
                        f"bytes, binary_data_size is {size}"
                    )
                array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
        else:
            if "data" not in raw:
                raise ProtocolError(f"input '{name}' has neither 'data' nor binary_data_size")
            array = _from_json_data(raw["data"], datatype, shape, name)
        inputs[name] = array
        datatypes[name] = datatype
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data belong to no input")
    outputs = None
    binary_default = bool(params.get("binary_data_output", False))
    if header.get("outputs") is not None:
        if not isinstance(header["outputs"], list):
            raise ProtocolError("'outputs' must be a list")
        outputs = []
        for raw in header["outputs"]:
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise ProtocolError("every requested output needs a 'name'")
            oparams = raw.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise ProtocolError(f"output '{raw['name']}': 'parameters' must be an object")
            outputs.append(requested_output(raw["name"], oparams, binary_default))
    request_id = header.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        datatypes=datatypes,
        outputs=outputs,
        binary_default=binary_default,
        parameters=params,
        shm_inputs=shm_inputs,
    )


OUTPUT_PARAMETERS = {"binary_data", "classification", "shared_memory_region", "shared_memory_byte_size",
                     "shared_memory_offset"}  # fmt: skip


def requested_output(name: str, params: Mapping[str, Any], binary_default: bool) -> RequestedOutput:
    unknown = sorted(set(params) - OUTPUT_PARAMETERS)
    if unknown:
        raise ProtocolError(f"output '{name}': unknown parameter(s) {unknown} (known: {sorted(OUTPUT_PARAMETERS)})")
    k = params.get("classification", 0)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ProtocolError(f"output '{name}': 'classification' must be a non-negative integer, got {k!r}")
    return RequestedOutput(
        name, bool(params.get("binary_data", binary_default)), k, shared_memory_ref(params, f"output '{name}'")
    )


def _json_text(item: Any, name: str, index: int) -> str:
    if not isinstance(item, bytes):
        return str(item)
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(
            f"output '{name}': BYTES element {index} is not UTF-8 and has no JSON form; "
            "ask for it as binary data (parameters.binary_data: true)"
        ) from None


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    results: Mapping[str, np.ndarray],
    wanted: Sequence[RequestedOutput],
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (``Inference-Header-Content-Length`` when anything is binary)."""
    outputs = []
    chunks: list[bytes] = []
    for req in wanted:
        array = results[req.name]
        datatype = datatype_of(array.dtype)
        entry: dict[str, Any] = {"name": req.name, "datatype": datatype, "shape": list(array.shape)}
        if req.shm is not None:  # the data plane wrote it into the region
            entry["parameters"] = {
                "shared_memory_region": req.shm.region,
                "shared_memory_byte_size": tensor_size(array),
                "shared_memory_offset": req.shm.offset,
            }
        elif req.binary or datatype == "FP16":
            data = (
                encode_bytes_tensor(array)
                if datatype == "BYTES"
                else np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        elif datatype == "BYTES":
            entry["data"] = [_json_text(b, req.name, i) for i, b in enumerate(array.reshape(-1))]
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request_id is not None:
        response["id"] = request_id
    header = _ENCODE(response).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }
