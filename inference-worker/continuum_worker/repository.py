"""A Triton-layout model repository: ``<repo>/<model>/<version>/model.onnx`` (or ``model.xml`` + ``.bin``)
with an optional ``<repo>/<model>/config.pbtxt`` or ``config.json``.

Configurations are Triton's own ``ModelConfig`` protobuf (the one ``tritonclient`` ships), read from
protobuf text or JSON, so a field is either understood or refused by name — never silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

MODEL_FILES = ("model.onnx", "model.xml")
# ModelConfig fields this worker acts on; any other field set in a configuration is refused by name.
SUPPORTED_FIELDS = {
    "name", "platform", "backend", "version_policy", "max_batch_size", "input", "output",
    "dynamic_batching", "instance_group", "default_model_filename", "parameters",
}  # fmt: skip
PLATFORMS = {"onnxruntime_onnx": "onnxruntime", "openvino": "openvino"}
BACKENDS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
DATA_TYPES = {
    mc.TYPE_BOOL: "BOOL", mc.TYPE_UINT8: "UINT8", mc.TYPE_UINT16: "UINT16", mc.TYPE_UINT32: "UINT32",
    mc.TYPE_UINT64: "UINT64", mc.TYPE_INT8: "INT8", mc.TYPE_INT16: "INT16", mc.TYPE_INT32: "INT32",
    mc.TYPE_INT64: "INT64", mc.TYPE_FP16: "FP16", mc.TYPE_FP32: "FP32", mc.TYPE_FP64: "FP64",
    mc.TYPE_STRING: "BYTES",
}  # fmt: skip


class ConfigurationError(ValueError):
    """A model configuration this worker cannot honour (the message names the field)."""


def parse_config(text: str, fmt: str, name: str) -> mc.ModelConfig:
    """A ``ModelConfig`` from protobuf text (``pbtxt``) or JSON (``json``)."""
    config = mc.ModelConfig()
    try:
        if fmt == "json":
            json_format.Parse(text, config)
        else:
            text_format.Parse(text, config)
    except (json_format.ParseError, text_format.ParseError) as exc:
        raise ConfigurationError(f"model '{name}': configuration is not a valid ModelConfig: {exc}") from None
    if config.name and config.name != name:
        raise ConfigurationError(f"model '{name}': configuration names model '{config.name}'")
    config.name = name
    check_supported(config)
    return config


def check_supported(config: mc.ModelConfig) -> None:
    refused = sorted(f.name for f, _ in config.ListFields() if f.name not in SUPPORTED_FIELDS)
    if refused:
        raise ConfigurationError(
            f"model '{config.name}': configuration field(s) {refused} are not supported by this worker "
            f"(supported: {sorted(SUPPORTED_FIELDS)})"
        )
    if config.platform and config.platform not in PLATFORMS:
        raise ConfigurationError(
            f"model '{config.name}': platform '{config.platform}' is not supported (known: {sorted(PLATFORMS)})"
        )
    if config.backend and config.backend not in BACKENDS:
        raise ConfigurationError(
            f"model '{config.name}': backend '{config.backend}' is not supported (known: {sorted(BACKENDS)})"
        )
    if config.max_batch_size < 0:
        raise ConfigurationError(f"model '{config.name}': max_batch_size must be >= 0")
    for group in config.instance_group:
        if group.kind not in (mc.ModelInstanceGroup.KIND_AUTO, mc.ModelInstanceGroup.KIND_CPU):
            raise ConfigurationError(
                f"model '{config.name}': instance_group kind "
                f"{mc.ModelInstanceGroup.Kind.Name(group.kind)} is not available (CPU only on this build)"
            )


def config_json(config: mc.ModelConfig) -> dict[str, Any]:
    """The configuration as Triton's ``GET /v2/models/{m}/config`` writes it (dims as numbers)."""
    out = json_format.MessageToDict(config, preserving_proto_field_name=True)

    def ints(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: [int(v) for v in val] if k == "dims" else ints(val) for k, val in node.items()}
        if isinstance(node, list):
            return [ints(v) for v in node]
        return node

    return ints(out)  # type: ignore[no-any-return]


@dataclass
class ModelSource:
    """One model of the repository as found on disk."""

    name: str
    directory: Path
    config: mc.ModelConfig
    versions: dict[str, Path] = field(default_factory=dict)  # version -> model file
    explicit_config: bool = False
    stamp: tuple[Any, ...] = ()  # changes when anything under the directory changes (poll mode)

    def selected_versions(self) -> list[str]:
        """The versions the version policy serves (Triton's default: the latest one)."""
        numbered = sorted((v for v in self.versions if v.isdigit()), key=int)
        policy = self.config.version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return numbered
        if kind == "specific":
            wanted = [str(v) for v in policy.specific.versions]
            missing = [v for v in wanted if v not in self.versions]
            if missing:
                raise ConfigurationError(f"model '{self.name}': version(s) {missing} of the version policy do not exist")
            return wanted
        count = policy.latest.num_versions if kind == "latest" else 1
        return numbered[-max(1, count) :]

    def label_file(self, output: str) -> Path | None:
        for out in self.config.output:
            if out.name == output and out.label_filename:
                path = self.directory / out.label_filename
                return path if path.is_file() else None
        return None


def read_model(directory: Path, override: mc.ModelConfig | None = None) -> ModelSource:
    """Scan one model directory; ``override`` replaces its config file (a load's ``parameters.config``)."""
    name = directory.name
    explicit = True
    if override is not None:
        config = override
        config.name = config.name or name
        if config.name != name:
            raise ConfigurationError(f"model '{name}': the configuration given names model '{config.name}'")
        check_supported(config)
    elif (directory / "config.pbtxt").is_file():
        config = parse_config((directory / "config.pbtxt").read_text(), "pbtxt", name)
    elif (directory / "config.json").is_file():
        config = parse_config((directory / "config.json").read_text(), "json", name)
    else:
        config, explicit = mc.ModelConfig(name=name), False
    filenames = [config.default_model_filename] if config.default_model_filename else list(MODEL_FILES)
    source = ModelSource(name, directory, config, explicit_config=explicit)
    stamp: list[Any] = []
    for entry in sorted(directory.iterdir()) if directory.is_dir() else []:
        stat = entry.stat()
        stamp.append((entry.name, stat.st_mtime_ns))
        if not entry.is_dir():
            continue
        for filename in filenames:
            path = entry / filename
            if path.is_file():
                source.versions[entry.name] = path
                stamp.append((entry.name, filename, path.stat().st_mtime_ns, path.stat().st_size))
                break
    source.stamp = tuple(stamp)
    return source


def scan(root: Path) -> dict[str, Path]:
    """Model name -> directory, for every directory of the repository."""
    if not root.is_dir():
        raise ConfigurationError(f"model repository {root} is not a directory")
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def config_from_parameter(value: Any, name: str) -> mc.ModelConfig:
    """A load's ``parameters.config``: a JSON ModelConfig (as a string, as Triton takes it, or an object)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return parse_config(text, "json", name)
