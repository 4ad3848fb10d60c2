"""Messages into infer requests (pure): the v2 infer request JSON, raw little-endian arrays, ``.npy``.

A message's id is, in order: the v2 request's ``id``, the MQTT 5 user property ``id``, the MQTT 5
correlation data; without one there is none (such messages are not deduplicated). Its source
timestamp (seconds since the epoch, the publisher's clock) is the user property ``ts`` or, for v2, a
top-level ``"ts"`` beside ``inputs`` (removed before parsing).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from continuum_worker.ingest.uri import MqttEndpoint
from continuum_worker.protocol import DATATYPES, InferRequest, ProtocolError, datatype_of, parse_infer_request

MAX_MESSAGE_BYTES = 64 * 2**20


class DecodeError(ValueError):
    """A malformed message (dead-lettered with this text)."""


@dataclass
class Decoded:
    request: InferRequest
    msg_id: str | None
    source_ts: float | None
    key: str | None  # dedup key: id and payload digest (None: no id, never deduplicated)


def _ts(value: Any) -> float | None:
    try:
        ts = float(value)
    except (TypeError, ValueError):
        return None
    return ts if math.isfinite(ts) and ts > 0 else None


def decode(
    endpoint: MqttEndpoint, payload: bytes, props: dict[str, str], model_inputs: list[tuple[str, str]]
) -> Decoded:
    """``model_inputs`` are the target model's (name, datatype) pairs, in order."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    msg_id = props.get("id")
    source_ts = _ts(props.get("ts"))
    if endpoint.decoder == "v2":
        body = payload
        if b'"ts"' in payload:
            try:
                doc = json.loads(payload)
            except (ValueError, UnicodeDecodeError) as exc:
                raise DecodeError(f"request is not valid JSON: {exc}") from None
            if isinstance(doc, dict) and "ts" in doc:
                source_ts = source_ts or _ts(doc.pop("ts"))
                body = json.dumps(doc).encode()
        try:
            request = parse_infer_request(body)
        except ProtocolError as exc:
            raise DecodeError(str(exc)) from None
        if request.id is not None:
            msg_id = request.id
        elif msg_id is not None:
            request.id = msg_id
    else:
        name = endpoint.input
        if name is None:
            if len(model_inputs) != 1:
                raise DecodeError(
                    f"the model has {len(model_inputs)} inputs {[n for n, _ in model_inputs]}: "
                    f"the source needs input=NAME"
                )
            name = model_inputs[0][0]
        known = dict(model_inputs)
        if name not in known:
            raise DecodeError(f"input '{name}' is not an input of the model (inputs: {sorted(known)})")
        array = _raw(endpoint, payload) if endpoint.decoder == "raw" else _npy(payload)
        datatype = datatype_of(array.dtype)
        request = InferRequest(msg_id, {name: array}, {name: datatype}, None, False)
    key = None
    if msg_id is not None:
        key = hashlib.blake2b(msg_id.encode() + b"\0" + payload, digest_size=16).hexdigest()
    return Decoded(request, msg_id, source_ts, key)


def _raw(endpoint: MqttEndpoint, payload: bytes) -> np.ndarray:
    assert endpoint.dtype is not None and endpoint.shape is not None
    dtype = np.dtype(DATATYPES[endpoint.dtype]).newbyteorder("<")
    if len(payload) % dtype.itemsize:
        raise DecodeError(f"{len(payload)} bytes is not a whole number of {endpoint.dtype} elements")
    count = len(payload) // dtype.itemsize
    shape = list(endpoint.shape)
    fixed = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if count % fixed or count == 0:
            raise DecodeError(f"{count} {endpoint.dtype} elements do not fit shape {list(endpoint.shape)}")
        shape[shape.index(-1)] = count // fixed
    elif count != fixed:
        raise DecodeError(f"{count} {endpoint.dtype} elements, shape {list(endpoint.shape)} needs {fixed}")
    return np.frombuffer(payload, dtype=dtype).astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def _npy(payload: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(payload), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError, EOFError... for bad files
        raise DecodeError(f"not a .npy array: {exc}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise DecodeError(f".npy array of dtype {getattr(array, 'dtype', '?')} is not numeric")
    return np.ascontiguousarray(array)
