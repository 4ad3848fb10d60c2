"""Read Nodes, Pods, EdgeNodePools, EdgeWorkloads and EdgeWorkloadSets from YAML files and folders
(``continuum plan -f``). An EdgeWorkloadSet is expanded into its children over the pools read, by the
function the operator uses (:func:`continuum.api.fleet.expand`): they are placed like any EdgeWorkload.

Pods (``kubectl get pods -A -o yaml``) are what already runs: their requests are taken off their
node's free capacity by the same rule the operator applies (:func:`continuum.placement.snapshot.pod_holds`,
applied by ``continuum plan``; this module only reads them).

Accepts multi-document YAML, ``kind: List`` / ``NodeList`` (as ``kubectl get -o yaml`` prints) and
folders (``*.yaml``/``*.yml``/``*.json``, recursively, in name order). Every error names the file,
the document index and the field (pydantic's location), e.g.
``examples/bad.yaml: document 2 (EdgeWorkload manufacturing/x): spec.requirements.latencyBudgetMs:
Input should be greater than 0``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from continuum.api.models import EdgeNodePool, EdgeWorkload
from continuum.api.workloadset import EdgeWorkloadSet

SUFFIXES = (".yaml", ".yml", ".json")
IGNORED_KINDS = frozenset({"Namespace", "CustomResourceDefinition", "ConfigMap", "Secret", "Service"})


class ManifestError(ValueError):
    """Invalid input, with every problem found (one line each)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def format_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
    """One line per error: ``<prefix>spec.requirements.latencyBudgetMs: Input should be ...``."""
    lines = []
    for err in exc.errors(include_url=False):
        parts = [str(part) for part in err["loc"]]
        message = err["msg"]
        if len(parts) >= 2 and parts[-1] == "[key]":  # an invalid map key, e.g. inferenceMs: {edge: 3}
            message = f"key {parts[-2]!r}: {message}"
            parts = parts[:-2]
        loc = ".".join(parts) or "(object)"
        if err["type"] == "extra_forbidden":
            message = "unknown field (typo?)"
        lines.append(f"{prefix}{loc}: {message}")
    return lines


@dataclass
class Manifests:
    nodes: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    pod_origins: list[str] = field(default_factory=list)  # "file: document N (Pod ns/name)", per pod
    pools: list[EdgeNodePool] = field(default_factory=list)
    workloads: list[EdgeWorkload] = field(default_factory=list)  # EdgeWorkloadSets' children included
    sets: list[EdgeWorkloadSet] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        elif path.exists():
            yield path
        else:
            raise ManifestError([f"{path}: no such file or directory"])


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster


def _documents(path: Path) -> Iterator[tuple[int, Any]]:
    if path.suffix == ".json":  # `kubectl get -o json`: the JSON parser is much faster than YAML's
        try:
            yield 1, json.loads(path.read_text())
            return
        except ValueError:
            pass  # not plain JSON: let the YAML parser read it (and name the problem)
    try:
        with path.open() as handle:
            yield from enumerate(yaml.load_all(handle, Loader=_YAML_LOADER), start=1)
    except yaml.YAMLError as exc:
        raise ManifestError([f"{path}: not valid YAML: {exc}"]) from None


def _expand(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
        kind = str(doc["kind"])[: -len("List")] or None
        for item in doc["items"]:
            if isinstance(item, dict):
                if kind and "kind" not in item:
                    item = {**item, "kind": kind}
                yield from _expand(item)
    else:
        yield doc


def load_manifests(paths: Iterable[str | Path]) -> Manifests:
    """Load and validate every object; raise :class:`ManifestError` listing all problems found."""
    out = Manifests()
    problems: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    set_origins: list[str] = []
    for path in _files(paths):
        for index, doc in _documents(path):
            if doc is None:
                continue
            where = f"{path}: document {index}"
            if not isinstance(doc, dict):
                problems.append(f"{where}: expected a mapping with apiVersion and kind")
                continue
            for obj in _expand(doc):
                kind = obj.get("kind")
                name = (obj.get("metadata") or {}).get("name", "?")
                if kind == "Node":
                    if not (obj.get("metadata") or {}).get("name"):
                        problems.append(f"{where} (Node): metadata.name: Field required")
                        continue
                    out.nodes.append(obj)
                elif kind == "Pod":
                    ns = (obj.get("metadata") or {}).get("namespace") or "default"
                    ident = ("Pod", f"{ns}/{name}")
                    if ident in seen:
                        problems.append(f"{where} (Pod {ns}/{name}): duplicate of {seen[ident]}")
                        continue
                    seen[ident] = where
                    out.pods.append(obj)
                    out.pod_origins.append(f"{where} (Pod {ns}/{name})")
                elif kind in ("EdgeNodePool", "EdgeWorkload"):
                    model = EdgeNodePool if kind == "EdgeNodePool" else EdgeWorkload
                    ns = (obj.get("metadata") or {}).get("namespace")
                    label = f"{kind} {ns}/{name}" if ns else f"{kind} {name}"
                    try:
                        parsed = model.model_validate(obj)
                    except ValidationError as exc:
                        problems.extend(format_validation_error(exc, f"{where} ({label}): "))
                        continue
                    ident = (kind, parsed.key if isinstance(parsed, EdgeWorkload) else parsed.name)
                    if ident in seen:
                        problems.append(f"{where} ({label}): duplicate of {seen[ident]}")
                        continue
                    seen[ident] = where
                    if isinstance(parsed, EdgeNodePool):
                        out.pools.append(parsed)
                    else:
                        out.workloads.append(parsed)
                elif kind == "EdgeWorkloadSet":
                    ns = (obj.get("metadata") or {}).get("namespace")
                    label = f"{kind} {ns}/{name}"
                    try:
                        ews = EdgeWorkloadSet.model_validate(obj)
                    except ValidationError as exc:
                        problems.extend(format_validation_error(exc, f"{where} ({label}): "))
                        continue
                    if (kind, ews.key) in seen:
                        problems.append(f"{where} ({label}): duplicate of {seen[(kind, ews.key)]}")
                        continue
                    seen[(kind, ews.key)] = where
                    out.sets.append(ews)
                    set_origins.append(f"{where} ({label})")
                elif kind in IGNORED_KINDS:
                    out.skipped.append(f"{where}: {kind} {name}")
                else:
                    problems.append(
                        f"{where}: kind {kind!r} is not one of Node, Pod, EdgeNodePool, EdgeWorkload, "
                        "EdgeWorkloadSet (or a List of them)"
                    )
    if not problems and out.sets:
        from continuum.api.fleet import child_workloads  # fleet imports this module: import it late

        for ews, origin in zip(out.sets, set_origins, strict=True):
            children, errors = child_workloads(ews, out.pools)
            problems.extend(f"{origin}: {error}" for error in errors)
            for child in children:
                ident = ("EdgeWorkload", child.key)
                if ident in seen:
                    problems.append(f"{origin}: its child {child.key} duplicates {seen[ident]}")
                    continue
                seen[ident] = f"{origin} (site {child.spec.source.site})"
                out.workloads.append(child)
    if problems:
        raise ManifestError(problems)
    return out
