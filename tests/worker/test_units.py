"""Pure parts of the worker: the wire codec, the circuit breaker, the batcher, the backend list."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from continuum_worker import cli
from continuum_worker.backends import BackendChoice, TensorSpec, parse_backends
from continuum_worker.batching import DynamicBatcher
from continuum_worker.models import INLINE_BELOW_SECONDS, LoadedModel
from continuum_worker.protocol import (
    DATATYPES,
    HEADER_LENGTH,
    ProtocolError,
    RequestedOutput,
    encode_infer_response,
    parse_infer_request,
)
from continuum_worker.server import is_own_url
from continuum_worker.settings import WorkerSettings, default_text, env_var, flag
from continuum_worker.upstream import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

NUMERIC = [d for d in DATATYPES if d != "BYTES"]


@st.composite
def tensors(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from([*NUMERIC, "BYTES"]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4))
    if datatype == "BYTES":
        items = draw(
            st.lists(st.binary(max_size=8), min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))
        )
        array = np.array([*items, b""], dtype=np.object_)[:-1].reshape(shape)
    else:
        array = draw(hnp.arrays(DATATYPES[datatype], shape))
    return datatype, array


@settings(max_examples=150, deadline=None)
@given(tensor=tensors())
def test_binary_round_trip_is_exact(tensor: tuple[str, np.ndarray]) -> None:
    datatype, array = tensor
    body, headers = encode_infer_response("m", "1", "x", {"T": array}, [RequestedOutput("T", True)])
    # A response is a valid request body once its outputs are called inputs.
    header = json.loads(body[: int(headers[HEADER_LENGTH])])
    header["inputs"] = header.pop("outputs")
    head = json.dumps(header).encode()
    parsed = parse_infer_request(head + body[int(headers[HEADER_LENGTH]) :], str(len(head)))
    got = parsed.inputs["T"]
    assert parsed.datatypes["T"] == datatype and got.shape == array.shape
    if datatype == "BYTES":
        assert list(got.reshape(-1)) == list(array.reshape(-1))
    else:
        np.testing.assert_array_equal(got.view(np.uint8), np.ascontiguousarray(array).view(np.uint8))


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=300),
    header=st.one_of(st.none(), st.integers(-5, 400).map(str), st.text(max_size=4)),
)
def test_garbage_is_a_protocol_error_never_a_crash(body: bytes, header: str | None) -> None:
    try:
        parse_infer_request(body, header)
    except ProtocolError:
        pass


def _json_input(datatype: str, shape: list[int], data: object) -> bytes:
    return json.dumps({"inputs": [{"name": "a", "datatype": datatype, "shape": shape, "data": data}]}).encode()


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "error"),
    [
        ("UINT8", [1], [300], "out of range for UINT8"),
        ("UINT64", [1], [-1], "out of range for UINT64"),
        ("INT64", [1], [2**70], "out of range for INT64"),
        ("INT32", [2], [1, True], "must be integers"),  # numpy alone would read true as 1
        ("FP32", [2], [[1.0], [False]], "must be numbers"),
        ("INT32", [1], [1.5], "must be integers"),
        ("FP32", [1], ["1"], "must be numbers"),
        ("FP32", [3], [1, 2], "needs 3 elements"),
        ("FP32", [2, 2], [[1, 2], [3]], "elements"),
    ],
)
def test_json_data_is_checked_strictly(datatype: str, shape: list[int], data: object, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_infer_request(_json_input(datatype, shape, data))


def test_json_numbers_take_the_declared_datatype() -> None:
    cases = [
        ("FP32", [2, 2], [[1.5, 2], [3, 4]]),
        ("FP64", [3], [1, 2.25, -3]),
        ("UINT64", [1], [2**64 - 1]),
        ("INT8", [2], [-128, 127]),
        ("BOOL", [2], [True, False]),
    ]
    for datatype, shape, data in cases:
        got = parse_infer_request(_json_input(datatype, shape, data)).inputs["a"]
        assert got.dtype == DATATYPES[datatype] and list(got.shape) == shape
        np.testing.assert_array_equal(got, np.array(data, dtype=DATATYPES[datatype]))


def test_breaker_opens_probes_and_backs_off() -> None:
    now = [0.0]
    b = CircuitBreaker(failure_threshold=3, reset_seconds=1.0, max_reset_seconds=4.0, clock=lambda: now[0])
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state == CLOSED
    b.failure()
    assert b.state == OPEN and not b.allow()
    now[0] = 1.0
    assert b.allow() and b.state == HALF_OPEN
    assert not b.allow()  # one probe at a time
    b.failure()  # the probe failed: open twice as long
    assert b.state == OPEN and b.reset == 2.0
    now[0] = 2.9
    assert not b.allow()
    now[0] = 3.0
    assert b.allow()
    b.abandon()  # the probe was cancelled: the next request probes
    assert b.allow()
    b.failure()
    now[0] = 7.0
    assert b.allow()
    b.failure()
    assert b.reset == 4.0  # capped
    now[0] = 11.0
    assert b.allow()
    b.success()
    assert b.state == CLOSED and b.reset == 1.0 and b.allow()


@pytest.mark.parametrize("inline", [False, True], ids=["executor", "event-loop"])
async def test_batcher_splits_results_back_and_fails_batches_together(inline: bool) -> None:
    calls: list[int] = []

    def double(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        if (inputs["x"] < 0).any():
            raise RuntimeError("negative input")
        return {"y": inputs["x"] * 2}

    batcher = DynamicBatcher(
        double, max_batch_size=8, max_queue_delay_us=20_000, inline_below_seconds=1.0 if inline else 0.0
    )
    if inline:  # as after warm-up of a fast model: batches run in the event loop, not in a thread
        batcher.compute_ema = 1e-5
    xs = [np.full((n, 2), i, dtype=np.float32) for i, n in enumerate([1, 3, 2, 2, 1, 4, 1])]
    results = await asyncio.gather(*(batcher.submit({"x": x}) for x in xs))
    for x, r in zip(xs, results, strict=True):
        np.testing.assert_array_equal(r["y"], x * 2)
    assert sum(calls) == 14 and all(c <= 8 for c in calls) and len(calls) < len(xs)
    bad = await asyncio.gather(
        batcher.submit({"x": -np.ones((1, 2), np.float32)}),
        batcher.submit({"x": np.ones((1, 2), np.float32)}),
        return_exceptions=True,
    )
    assert all(isinstance(r, RuntimeError) for r in bad)  # one batch, one failure for both
    with pytest.raises(ValueError, match="exceeds max_batch_size"):
        await batcher.submit({"x": np.ones((9, 2), np.float32)})
    # different trailing shapes are never concatenated
    odd = await asyncio.gather(
        batcher.submit({"x": np.ones((1, 3), np.float32)}), batcher.submit({"x": np.ones((2, 2), np.float32)})
    )
    assert odd[0]["y"].shape == (1, 3) and odd[1]["y"].shape == (2, 2)
    assert (batcher._task is None) == inline  # the inline path never starts the batching task
    await batcher.close()


class _FastBackend:
    """A model that takes microseconds (as the batching bench's MLP): it belongs in the event loop."""

    inputs = outputs = [TensorSpec("x", "FP32", (-1, 2))]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"x": inputs["x"] * 2}


async def _busy_loop(stop: asyncio.Event) -> None:
    """Other requests' work in the event loop: 3 ms per iteration, so a thread's result waits for it."""
    while not stop.is_set():
        time.sleep(0.003)
        await asyncio.sleep(0)


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched", "batcher"])
async def test_fast_model_returns_to_the_event_loop_from_the_executor(batched: bool) -> None:
    """One inline run stretched past the threshold (preemption on a busy machine) sends a fast model to the
    executor; the decision weighs its time in the thread, so it comes back even while the loop is busy
    (the round trip, which includes waiting for the loop, kept it in the executor for good)."""
    with ThreadPoolExecutor(1) as pool:
        model = LoadedModel("m", "1", _FastBackend(), Path("m.onnx"), 8 if batched else 0, 500, pool)  # type: ignore[arg-type]
        await model.warm()
        timed_by = model.batcher if batched else model
        assert timed_by is not None and timed_by.compute_ema < INLINE_BELOW_SECONDS  # warm-up: in the thread
        timed_by.compute_ema = 0.0166  # as after one inline run of 16.6 ms (seen in the worker under load)
        stop = asyncio.Event()
        busy = asyncio.get_running_loop().create_task(_busy_loop(stop))
        x = {"x": np.ones((1, 2), np.float32)}
        for _ in range(40):
            out, *_ = await model.infer(x)
            np.testing.assert_array_equal(out["x"], x["x"] * 2)
        stop.set()
        await busy
        assert timed_by.compute_ema < INLINE_BELOW_SECONDS
        if batched:
            await model.batcher.close()  # type: ignore[union-attr]


def test_backend_list() -> None:
    assert parse_backends(None) == [BackendChoice("onnxruntime", ("tensorrt", "cuda", "openvino", "cpu"))]
    assert parse_backends("onnxruntime:CUDA, cpu;openvino:GPU,CPU") == [
        BackendChoice("onnxruntime", ("cuda", "cpu")),
        BackendChoice("openvino", ("GPU", "CPU")),
    ]
    with pytest.raises(ValueError, match="unknown onnxruntime provider"):
        parse_backends("onnxruntime:tpu")
    with pytest.raises(ValueError, match="unknown backend"):
        parse_backends("tflite")


def _contract_rows() -> list[tuple[str, str, str]]:
    """(flag, variable, default) of every row of the worker table in docs/contracts.md."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "contracts.md").read_text()
    table = text.split("## Worker configuration", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(--[a-z0-9-]+)` \| `(CONTINUUM_[A-Z0-9_]+)` \| ([^|]+?) \|", table, re.M)


def test_the_contract_table_is_the_settings_class() -> None:
    """Every setting has its row (flag, variable, default) and every row is a setting."""
    rows = {flag: (variable, default) for flag, variable, default in _contract_rows()}
    fields = WorkerSettings.model_fields
    assert sorted(rows) == sorted(flag(f) for f in fields)
    for name in fields:
        variable, default = rows[flag(name)]
        assert variable == env_var(name), name
        # the default column starts with the value in backquotes, or "none"/"(required)"
        documented = re.match(r"`([^`]*)`|(none|\(required\))", default)
        assert documented, (name, default)
        value = documented.group(1) if documented.group(1) is not None else "none"
        assert value == default_text(name), (name, value, default_text(name))
    help_text = _serve_parser().format_help()
    for name in fields:
        assert flag(name) in help_text and env_var(name) in help_text


SPECIAL = {
    "--backends": ("openvino:CPU", "onnxruntime:cpu"),
    "--port": ("8123", "8124"),
    "--grpc-port": ("8125", "8126"),
    "--model-control-mode": ("explicit", "explicit"),
    "--memory-limit": ("7Mi", "9"),
    "--model-uri": (None, None),  # excludes --model-repository: checked below
    "--event-threshold": ("0.7", "0.9"),
    "--ingest": ("mqtt://a:1/x", "mqtt://b:2/y?decoder=raw&dtype=FP32&shape=-1,4"),
    "--publish": ("mqtt://a:1/r", "mqtt://b:2/r"),
    "--ingest-filter": ("events", "events"),
    "--ingest-publish-after": ("durable", "durable"),
    "--outbox-full-policy": ("drop-oldest", "drop-oldest"),
    "--outbox-max-bytes": ("7Mi", "9"),
    "--drift-reference": (None, None),  # a file, shorthand only: tests/drift
    "--drift-threshold": ("0.3", "0.4"),
    "--drift-k": ("16", "32"),
}


def test_every_setting_reads_its_variable_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"CONTINUUM_MODEL_REPOSITORY": "/models", "CONTINUUM_MODEL_CONTROL_MODE": "explicit"}
    for name in WorkerSettings.model_fields:
        from_env, from_flag = SPECIAL.get(flag(name), ("7", "9"))
        if from_env is None:
            continue
        for k, v in base.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv(env_var(name), from_env)
        from_env_settings = cli.settings_from_args(cli.build_parser().parse_args(["serve"]))
        from_flag_settings = cli.settings_from_args(cli.build_parser().parse_args(["serve", flag(name), from_flag]))
        monkeypatch.delenv(env_var(name))
        expect_env = WorkerSettings.model_validate({**_base_kwargs(), name: from_env})
        expect_flag = WorkerSettings.model_validate({**_base_kwargs(), name: from_flag})
        assert getattr(from_env_settings, name) == getattr(expect_env, name), name
        assert getattr(from_flag_settings, name) == getattr(expect_flag, name), name
        assert getattr(expect_env, name) != getattr(expect_flag, name) or from_env == from_flag, name
    monkeypatch.delenv("CONTINUUM_MODEL_REPOSITORY")
    monkeypatch.delenv("CONTINUUM_MODEL_CONTROL_MODE")
    monkeypatch.setenv("CONTINUUM_MODEL_NAME", "m")
    monkeypatch.setenv("CONTINUUM_MODEL_URI", "/env.onnx")
    monkeypatch.setenv("CONTINUUM_SYNC_TO", "http://a,http://b")
    got = cli.settings_from_args(cli.build_parser().parse_args(["serve", "--model-uri", "/flag.onnx"]))
    assert got.model_uri == "/flag.onnx" and got.model_name == "m" and got.sync_to == ["http://a", "http://b"]


def _base_kwargs() -> dict[str, str]:
    return {"model_repository": "/models", "model_control_mode": "explicit"}


def test_configuration_errors_name_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    parse = cli.build_parser().parse_args
    with pytest.raises(ValueError, match="--model-name and --model-uri required"):
        cli.settings_from_args(parse(["serve"]))
    with pytest.raises(ValueError, match="--port"):
        cli.settings_from_args(parse(["serve", "--model-name", "m", "--model-uri", "u", "--port", "0"]))
    with pytest.raises(ValueError, match=r"--memory-limit.*not a size"):
        cli.settings_from_args(parse(["serve", "--model-repository", "/m", "--memory-limit", "lots"]))
    with pytest.raises(ValueError, match="--load-model needs --model-control-mode explicit"):
        cli.settings_from_args(parse(["serve", "--model-repository", "/m", "--load-model", "a"]))
    with pytest.raises(ValueError, match="unknown onnxruntime provider"):
        cli.settings_from_args(parse(["serve", "--model-name", "m", "--model-uri", "u", "--backends", "onnxruntime:tpu"]))


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def test_a_replica_recognises_its_own_peer_url() -> None:
    assert is_own_url("http://edge-7f9c-0.edge-peers.ns.svc:8000", "edge-7f9c-0")
    assert is_own_url("http://EDGE-1:8000", "edge-1")
    assert is_own_url("edge-1.peers:8000", "edge-1")
    assert not is_own_url("http://edge-10.edge-peers.ns.svc:8000", "edge-1")
    assert not is_own_url("http://edge-2.edge-peers:8000", "edge-1")
    assert not is_own_url("http://edge-1.peers:8000", None)


def test_histogram_buckets_follow_prometheus_le() -> None:
    """A duration on a bound is counted in that bound's bucket; past 10 s only in +Inf; batch sizes
    by rows per execution (3 rows in le=4, 300 past 256)."""
    from continuum_worker.stats import BATCH_BUCKETS, REQUEST_BUCKETS, ModelStats

    m = ModelStats("m", "1")
    for seconds in (0.0001, 0.00011, 0.003, 12.0):
        m.success(1, seconds, 0.0, 0.0, 0.0, 0.0)
    m.failure(0.5)
    counts, total = m.request_histogram()
    le = dict(zip([*REQUEST_BUCKETS, float("inf")], counts, strict=True))
    assert (le[0.0001], le[0.00025], le[0.005], le[0.5], le[10.0], le[float("inf")]) == (1, 2, 3, 4, 4, 5)
    assert total == pytest.approx(0.0001 + 0.00011 + 0.003 + 12.0 + 0.5)
    for rows in (1, 3, 3, 300):
        m.execution(rows, 0.0, 0.0, 0.0)
    counts, rows_total = m.batch_histogram()
    le = dict(zip([*BATCH_BUCKETS, float("inf")], counts, strict=True))
    assert (le[1], le[2], le[4], le[256], le[float("inf")]) == (1, 1, 3, 3, 4) and rows_total == 307
