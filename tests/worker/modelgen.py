"""Tiny ONNX models built with ``onnx.helper`` for tests and benchmarks (no model hub needed).

Test code, not shipped in the worker package: ``python -m tests.worker.modelgen mlp OUT.onnx`` (from the
repository root) writes one. Needs the ``onnx`` package (dev extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KINDS = ("mlp", "fixed", "dtypes", "slow", "heavy", "strings")


def _save(model: object, path: Path) -> Path:
    import onnx

    onnx.checker.check_model(model)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))  # type: ignore[arg-type]
    return path


def mlp(path: Path, features: int = 64, hidden: int = 128, classes: int = 10, seed: int = 0) -> Path:
    """INPUT0 FP32 [-1, features] -> OUTPUT0 softmax scores [-1, classes], LOGITS [-1, classes]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 1 / np.sqrt(features), (features, hidden)).astype(np.float32)
    b1 = rng.normal(0, 0.1, hidden).astype(np.float32)
    w2 = rng.normal(0, 1 / np.sqrt(hidden), (hidden, classes)).astype(np.float32)
    b2 = rng.normal(0, 0.1, classes).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))]
    nodes = [
        helper.make_node("MatMul", ["INPUT0", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "B1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
        helper.make_node("Add", ["h3", "B2"], ["LOGITS"]),
        helper.make_node("Softmax", ["LOGITS"], ["OUTPUT0"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        f"mlp_{features}_{hidden}_{classes}_s{seed}",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("LOGITS", TensorProto.FLOAT, ["batch", classes]),
        ],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def fixed(path: Path) -> Path:
    """No batch dimension: INPUT0 FP32 [1, 4] -> OUTPUT0 = 2 * INPUT0 (dynamic batching stays off)."""
    from onnx import TensorProto, helper, numpy_helper

    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "TWO")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["INPUT0", "TWO"], ["OUTPUT0"])],
        "fixed",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [1, 4])],
        [two],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


DTYPE_INPUTS = {  # name -> (onnx type name, v2 datatype)
    "I8": ("INT8", "INT8"),
    "I16": ("INT16", "INT16"),
    "I32": ("INT32", "INT32"),
    "I64": ("INT64", "INT64"),
    "U8": ("UINT8", "UINT8"),
    "U16": ("UINT16", "UINT16"),
    "U32": ("UINT32", "UINT32"),
    "U64": ("UINT64", "UINT64"),
    "F16": ("FLOAT16", "FP16"),
    "F32": ("FLOAT", "FP32"),
    "F64": ("DOUBLE", "FP64"),
    "B": ("BOOL", "BOOL"),
    "S": ("STRING", "BYTES"),
}


def dtypes(path: Path) -> Path:
    """One identity per v2 datatype: input ``X`` -> output ``X_OUT``, shape [-1, 3]."""
    from onnx import TensorProto, helper

    ins, outs, nodes = [], [], []
    for name, (onnx_type, _) in DTYPE_INPUTS.items():
        elem = getattr(TensorProto, onnx_type)
        ins.append(helper.make_tensor_value_info(name, elem, ["batch", 3]))
        outs.append(helper.make_tensor_value_info(f"{name}_OUT", elem, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_OUT"]))
    graph = helper.make_graph(nodes, "dtypes", ins, outs)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def slow(path: Path, features: int = 256, depth: int = 24, seed: int = 0) -> Path:
    """INPUT0 FP32 [-1, features] through ``depth`` dense layers: a few ms per batch, for batching tests."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "INPUT0"
    for i in range(depth):
        w = rng.normal(0, 1 / np.sqrt(features), (features, features)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["OUTPUT0"]))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", features])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def heavy(path: Path, width: int = 1024, depth: int = 8, seed: int = 0) -> Path:
    """INPUT0 FP32 [-1, 64] -> ``depth`` ReLU layers of ``width`` -> OUTPUT0 [-1, 10]: small I/O, ~1 ms of
    compute per row alone and far less per row in a batch (what dynamic batching is for)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev, fan_in = [], [], "INPUT0", 64
    for i in range(depth):
        w = rng.normal(0, 1 / np.sqrt(fan_in), (fan_in, width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        prev, fan_in = f"r{i}", width
    inits.append(numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(width), (width, 10)).astype(np.float32), "WO"))
    nodes.append(helper.make_node("MatMul", [prev, "WO"], ["OUTPUT0"]))
    graph = helper.make_graph(
        nodes,
        "heavy",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def strings(path: Path) -> Path:
    """BYTES in and out: ``TEXT`` [-1] -> ``TEXT_OUT`` (identity) and ``NUMBER`` [-1] -> ``VALUE`` INT64
    (a string->number ``Cast``, which rejects the empty string)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["TEXT"], ["TEXT_OUT"]),
            helper.make_node("Cast", ["NUMBER"], ["VALUE"], to=TensorProto.INT64),
        ],
        "strings",
        [
            helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["batch"]),
            helper.make_tensor_value_info("NUMBER", TensorProto.STRING, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("TEXT_OUT", TensorProto.STRING, ["batch"]),
            helper.make_tensor_value_info("VALUE", TensorProto.INT64, ["batch"]),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def make(kind: str, path: Path, seed: int = 0) -> Path:
    if kind == "mlp":
        return mlp(path, seed=seed)
    if kind == "fixed":
        return fixed(path)
    if kind == "dtypes":
        return dtypes(path)
    if kind == "slow":
        return slow(path, seed=seed)
    if kind == "heavy":
        return heavy(path, seed=seed)
    if kind == "strings":
        return strings(path)
    raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(KINDS)})")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make(args.kind, args.out, seed=args.seed))
