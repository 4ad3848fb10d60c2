"""A Triton-layout model repository matching the models of Triton's example clients (``simple``,
``simple_string``, ``simple_identity``, ``simple_int8``, ``custom_identity_int32``), built with
``onnx.helper``. ``python -m tests.worker.triton_models DIR`` writes it (7 models, as
``simple_*_model_control.py`` expects).
"""

from __future__ import annotations

import sys
from pathlib import Path

from onnx import TensorProto, helper

OPSET = [helper.make_opsetid("", 17)]


def _save(graph: object, directory: Path, config: str | None) -> None:
    import onnx

    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)  # type: ignore[arg-type]
    onnx.checker.check_model(model)
    (directory / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / "1" / "model.onnx"))
    if config is not None:
        (directory / "config.pbtxt").write_text(config)


def _io(names: list[str], elem: int, dims: list[object]) -> list[object]:
    return [helper.make_tensor_value_info(n, elem, dims) for n in names]


def _config(name: str, dtype: str, dims: str, inputs: list[str], outputs: list[str], batch: int = 8) -> str:
    def block(kind: str, names: list[str]) -> str:
        return ",".join(f'{{ name: "{n}" data_type: {dtype} dims: [ {dims} ] }}' for n in names)

    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {batch}\n'
        f"input [ {block('input', inputs)} ]\noutput [ {block('output', outputs)} ]\n"
    )


def sum_diff(directory: Path, elem: int, dtype: str) -> None:
    """INPUT0, INPUT1 [-1, 16] -> OUTPUT0 = sum, OUTPUT1 = difference (Triton's ``simple``)."""
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    graph = helper.make_graph(
        nodes, directory.name, _io(["INPUT0", "INPUT1"], elem, ["batch", 16]),
        _io(["OUTPUT0", "OUTPUT1"], elem, ["batch", 16]),
    )  # fmt: skip
    _save(graph, directory, _config(directory.name, dtype, "16", ["INPUT0", "INPUT1"], ["OUTPUT0", "OUTPUT1"]))


def string_sum_diff(directory: Path) -> None:
    """``simple_string``: decimal strings in, their sum and difference as decimal strings out."""
    S, I32 = TensorProto.STRING, TensorProto.INT32
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=I32),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=I32),
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Sub", ["a", "b"], ["d"]),
        helper.make_node("Cast", ["s"], ["OUTPUT0"], to=S),
        helper.make_node("Cast", ["d"], ["OUTPUT1"], to=S),
    ]
    graph = helper.make_graph(
        nodes, directory.name, _io(["INPUT0", "INPUT1"], S, ["batch", 16]), _io(["OUTPUT0", "OUTPUT1"], S, ["batch", 16])
    )
    _save(graph, directory, _config(directory.name, "TYPE_STRING", "16", ["INPUT0", "INPUT1"], ["OUTPUT0", "OUTPUT1"]))


def identity(directory: Path, elem: int, dtype: str | None) -> None:
    """INPUT0 [-1, -1] -> OUTPUT0 (``simple_identity``, ``custom_identity_int32``)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], directory.name,
        _io(["INPUT0"], elem, ["batch", "n"]), _io(["OUTPUT0"], elem, ["batch", "n"]),
    )  # fmt: skip
    config = _config(directory.name, dtype, "-1", ["INPUT0"], ["OUTPUT0"]) if dtype else None
    _save(graph, directory, config)


def build(root: Path) -> Path:
    sum_diff(root / "simple", TensorProto.INT32, "TYPE_INT32")
    sum_diff(root / "simple_int8", TensorProto.INT8, "TYPE_INT8")
    sum_diff(root / "simple_fp32", TensorProto.FLOAT, "TYPE_FP32")
    string_sum_diff(root / "simple_string")
    identity(root / "simple_identity", TensorProto.STRING, "TYPE_STRING")
    identity(root / "custom_identity_int32", TensorProto.INT32, "TYPE_INT32")
    identity(root / "identity_no_config", TensorProto.FLOAT, None)  # no config.pbtxt: auto-completed
    return root


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
