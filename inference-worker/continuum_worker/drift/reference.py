"""``continuum-worker profile``: a reference profile from sample data, by running the model on it.

The data is a ``.npy`` array (rows along the first axis) or a numeric ``.csv`` (one row per sample,
an optional header line); it feeds the model's one input (``input_name`` picks one of several, the
others must then be absent: a model with several required inputs needs one file per input, which
this command does not take). The model runs on onnxruntime's CPU provider in batches, and the
profile is built by the same code the worker profiles requests with, so both sides have the same
features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from continuum_worker.drift import sketch as sk
from continuum_worker.drift.profile import Profile

ONNX_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}  # fmt: skip


class ProfileError(ValueError):
    """Bad model, data or option: the message names it (the CLI prints it and exits 2)."""


def read_data(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix == ".csv":
            with path.open() as f:
                first = f.readline()
            try:
                [float(v) for v in first.strip().split(",") if v.strip()]
                skip = 0
            except ValueError:
                skip = 1  # a header line
            data = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
        else:
            raise ProfileError(f"--data {path}: expected a .npy or .csv file")
    except OSError as exc:
        raise ProfileError(f"--data {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        if isinstance(exc, ProfileError):
            raise
        raise ProfileError(f"--data {path}: not numeric rows: {exc}") from None
    if data.ndim == 0 or data.shape[0] == 0:
        raise ProfileError(f"--data {path}: no rows")
    if data.dtype.kind not in "fiub":
        raise ProfileError(f"--data {path}: dtype {data.dtype} is not numeric")
    return data


def build_reference(
    model_path: Path, data_path: Path, *, name: str | None = None, version: str = "1", input_name: str | None = None,
    k: int = sk.REFERENCE_K, max_features: int = 256, batch: int = 256,
) -> Profile:  # fmt: skip
    """Run the model over the data and profile inputs and outputs as the worker does."""
    import onnxruntime as ort

    if not model_path.is_file():
        raise ProfileError(f"--model {model_path}: no such file")
    if k < 8 or max_features < 1 or batch < 1:
        raise ProfileError("--k must be >= 8, --max-features and --batch >= 1")
    try:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ProfileError(f"--model {model_path}: not a loadable ONNX model: {exc}") from None
    inputs = session.get_inputs()
    names = [i.name for i in inputs]
    if input_name is None:
        if len(inputs) != 1:
            raise ProfileError(f"--model has inputs {names}: name the one the data feeds with --input")
        spec = inputs[0]
    else:
        matching = [i for i in inputs if i.name == input_name]
        if not matching:
            raise ProfileError(f"--input {input_name!r}: the model's inputs are {names}")
        if len(inputs) != 1:
            raise ProfileError(
                f"--input {input_name!r}: the model needs all of {names}; profile takes one input"
            )
        spec = matching[0]
    data = read_data(data_path)
    dtype = ONNX_TYPES.get(spec.type)
    if dtype is None:
        raise ProfileError(f"input {spec.name!r} has type {spec.type}, which profile cannot feed")
    shape = list(spec.shape)
    batched = bool(shape) and not isinstance(shape[0], int)
    row_shape = [d for d in shape[1:]] if batched else shape
    want = [d if isinstance(d, int) else -1 for d in row_shape]
    try:
        rows = data.reshape(data.shape[0], *want) if want else data.reshape(data.shape[0])
    except ValueError:
        raise ProfileError(
            f"--data {data_path}: rows of shape {list(data.shape[1:])} do not fit input {spec.name!r} {row_shape}"
        ) from None
    rows = rows.astype(dtype, copy=False)
    profile = Profile(name or model_path.stem, version, k, max_features)
    step = batch if batched else 1
    for start in range(0, rows.shape[0], step):
        chunk = rows[start : start + step] if batched else rows[start]
        try:
            outs = session.run(None, {spec.name: chunk})
        except Exception as exc:
            raise ProfileError(f"the model failed on rows {start}..{start + step - 1}: {exc}") from None
        outputs = {o.name: np.asarray(v) for o, v in zip(session.get_outputs(), outs, strict=True)}
        profile.observe({spec.name: chunk}, outputs, batched)
    return profile.flush()
