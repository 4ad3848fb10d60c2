"""``mqtt://HOST:PORT/TOPIC[?options]`` or ``kafka://HOST:PORT/TOPIC[?options]``: where messages come
from and where results go (pure parsing).

Source options (``--ingest``): ``decoder`` (``v2`` default: the v2 infer request JSON; ``raw``:
little-endian bytes with ``dtype`` and ``shape``; ``npy``: a NumPy ``.npy`` file), ``dtype`` (a v2
datatype such as ``FP32``), ``shape`` (comma-separated, ``-1`` for one free dimension), ``input`` (the
model input the tensor feeds; default: the model's only input), ``model`` and ``version`` (default:
the worker's one model), ``qos`` (``1`` default, or ``0``), ``protocol`` (``5`` default with a fallback
to ``3.1.1``, or ``3.1.1``). Sink (``--publish``): ``qos`` and ``protocol`` only.
Kafka (``kafka://``, one topic, no wildcards): the same decoder options, and ``group`` (the consumer
group; default: the worker's client id) for a source; ``qos``/``protocol`` do not apply.
Any other option is an error naming it: nothing in the URI is silently ignored.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

DECODERS = ("v2", "raw", "npy")
NUMERIC = {
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
}
SOURCE_OPTIONS = {"decoder", "dtype", "shape", "input", "model", "version", "qos", "protocol"}
SINK_OPTIONS = {"qos", "protocol"}
KAFKA_SOURCE_OPTIONS = (SOURCE_OPTIONS - {"qos", "protocol"}) | {"group"}
KAFKA_SINK_OPTIONS: set[str] = set()
SCHEMES = ("mqtt", "kafka")
PROTOCOLS = ("5", "3.1.1")


class EndpointError(ValueError):
    """A ``mqtt://`` URI that cannot work; the message names the URI and the part."""


@dataclass(frozen=True)
class MqttEndpoint:
    uri: str
    host: str
    port: int
    topic: str
    qos: int = 1
    protocol: str = "5"
    decoder: str = "v2"
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    input: str | None = None
    model: str | None = None
    version: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    scheme: str = "mqtt"
    group: str | None = None  # Kafka consumer group


Endpoint = MqttEndpoint  # an mqtt:// or kafka:// endpoint


def parse_endpoint(uri: str, *, source: bool) -> MqttEndpoint:
    what = "--ingest" if source else "--publish"
    # '#' is MQTT's multi-level wildcard here, not a URI fragment
    parts = urllib.parse.urlsplit(uri.strip().replace("#", "%23"))
    if parts.scheme not in SCHEMES:
        raise EndpointError(
            f"{what} {uri!r}: the scheme must be mqtt:// or kafka:// (got {parts.scheme or 'none'!r})"
        )
    kafka = parts.scheme == "kafka"
    try:
        host, port = parts.hostname, parts.port or (9092 if kafka else 1883)
    except ValueError as exc:
        raise EndpointError(f"{what} {uri!r}: {exc}") from None
    if not host:
        raise EndpointError(f"{what} {uri!r}: no broker host")
    topic = urllib.parse.unquote(parts.path.lstrip("/"))
    if not topic:
        raise EndpointError(f"{what} {uri!r}: no topic (mqtt://HOST:PORT/TOPIC)")
    if (kafka or not source) and ("+" in topic or "#" in topic):
        raise EndpointError(
            f"{what} {uri!r}: a {'Kafka' if kafka else 'publish'} topic cannot hold the wildcards + or #"
        )
    if kafka and (len(topic) > 249 or not all(c.isalnum() or c in "._-" for c in topic)):
        raise EndpointError(f"{what} {uri!r}: a Kafka topic is 1-249 of [a-zA-Z0-9._-] (got {topic!r})")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    if kafka:
        allowed = KAFKA_SOURCE_OPTIONS if source else KAFKA_SINK_OPTIONS
    else:
        allowed = SOURCE_OPTIONS if source else SINK_OPTIONS
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise EndpointError(f"{what} {uri!r}: unknown option(s) {unknown} (known: {sorted(allowed)})")
    opts = {k: v[-1] for k, v in query.items()}
    qos = opts.get("qos", "1")
    if qos not in ("0", "1"):
        raise EndpointError(f"{what} {uri!r}: qos must be 0 or 1, got {qos!r}")
    protocol = opts.get("protocol", "5")
    if protocol not in PROTOCOLS:
        raise EndpointError(f"{what} {uri!r}: protocol must be 5 or 3.1.1, got {protocol!r}")
    decoder = opts.get("decoder", "v2")
    if decoder not in DECODERS:
        raise EndpointError(f"{what} {uri!r}: decoder must be one of {list(DECODERS)}, got {decoder!r}")
    dtype = opts.get("dtype")
    shape: tuple[int, ...] | None = None
    if decoder == "raw":
        if dtype not in NUMERIC:
            raise EndpointError(
                f"{what} {uri!r}: decoder=raw needs dtype= one of {sorted(NUMERIC)}, got {dtype!r}"
            )
        try:
            shape = tuple(int(d) for d in opts.get("shape", "").split(","))
        except ValueError:
            raise EndpointError(
                f"{what} {uri!r}: decoder=raw needs shape=D0,D1,... (integers), got {opts.get('shape')!r}"
            ) from None
        if sum(d == -1 for d in shape) > 1 or any(d < -1 or d == 0 for d in shape):
            raise EndpointError(
                f"{what} {uri!r}: shape {list(shape)} needs positive dimensions and at most one -1"
            )
    elif "dtype" in opts or "shape" in opts:
        raise EndpointError(
            f"{what} {uri!r}: dtype/shape apply to decoder=raw only (a {decoder} message carries its own)"
        )
    if decoder == "v2" and "input" in opts:
        raise EndpointError(
            f"{what} {uri!r}: input= applies to decoder=raw/npy (a v2 request names its inputs)"
        )
    return MqttEndpoint(
        uri=uri.strip(), host=host, port=port, topic=topic, qos=int(qos), protocol=protocol, decoder=decoder,
        dtype=dtype, shape=shape, input=opts.get("input"), model=opts.get("model"), version=opts.get("version"),
        options=opts, scheme=parts.scheme, group=opts.get("group"),
    )  # fmt: skip
