"""What a change does to the placements: ``continuum plan --baseline OLD``.

Pure core: :func:`diff_plans` compares two plan documents (the ``continuum plan -o json`` form) and
returns a :class:`PlanDiff`: workloads newly placed, moved (from → to, with the reason read from the
new plan's verdict on the old pool), newly unschedulable (with the hint), removed, and the per-pool
deltas of requested CPU/memory/GPU, WAN ingress and hourly cost. :func:`render_text` and
:func:`render_markdown` turn it into a terminal report or a pull-request comment (summary line first,
collapsible details). The edge at the bottom (:func:`run_diff`) loads the baseline and prints.

The plan document carries no resource requests, so the CPU/memory/GPU per workload come from the
specs (:func:`demands_of`); a baseline given as a plan JSON takes them from a placement's
``requests`` when present, else from the current spec of the same workload, and the diff says how
many it had to assume that way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from continuum.api.models import EdgeWorkload

PLACED = "Placed"


# --- model -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Demand:
    """What a workload requests in total (replicas × per-replica requests)."""

    cpu_millis: float = 0.0
    memory_bytes: float = 0.0
    gpu: float = 0.0


@dataclass(frozen=True)
class Usage:
    """What the placed workloads take from one pool."""

    workloads: int = 0
    cpu_millis: float = 0.0
    memory_bytes: float = 0.0
    gpu: float = 0.0
    wan_mbps: float = 0.0
    hourly_cost: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(a + b for a, b in zip(self._values(), other._values(), strict=True)))  # type: ignore[arg-type]

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(a - b for a, b in zip(self._values(), other._values(), strict=True)))  # type: ignore[arg-type]

    def _values(self) -> tuple[float, ...]:
        return (
            self.workloads,
            self.cpu_millis,
            self.memory_bytes,
            self.gpu,
            self.wan_mbps,
            self.hourly_cost,
        )

    @property
    def is_zero(self) -> bool:
        return all(abs(v) < 1e-9 for v in self._values())


@dataclass(frozen=True)
class Row:
    """One workload in one plan."""

    key: str
    phase: str
    pool: str | None
    tier: str | None
    site: str | None
    latency_ms: float | None
    wan_mbps: float
    hourly_cost: float
    hint: str | None
    candidates: Mapping[str, Mapping[str, Any]]
    rejected_by_reason: Mapping[str, int]

    @property
    def placed(self) -> bool:
        return self.phase == PLACED


@dataclass(frozen=True)
class Change:
    """A workload whose placement changed. ``kind``: placed, moved, unschedulable, removed, or
    changed (same pool, different latency or cost)."""

    key: str
    kind: str
    before: Row | None
    after: Row | None
    reason: str

    @property
    def cost_delta(self) -> float:
        return (self.after.hourly_cost if self.after else 0.0) - (
            self.before.hourly_cost if self.before else 0.0
        )


@dataclass(frozen=True)
class PoolDelta:
    pool: str
    tier: str | None
    before: Usage
    after: Usage

    @property
    def delta(self) -> Usage:
        return self.after - self.before


@dataclass
class PlanDiff:
    changes: list[Change]
    pools: list[PoolDelta]
    before: Mapping[str, Any]  # summaries: workloads, placed, unschedulable, hourlyCost
    after: Mapping[str, Any]
    still_unschedulable: list[str] = field(default_factory=list)
    unchanged: int = 0
    assumed_demands: int = 0
    unknown_demands: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind]

    @property
    def cost_delta(self) -> float:
        return float(self.after["hourlyCost"]) - float(self.before["hourlyCost"])

    @property
    def empty(self) -> bool:
        return not self.changes and all(p.delta.is_zero for p in self.pools)


# --- reading plan documents ------------------------------------------------------------------------


class PlanFormatError(ValueError):
    """A baseline that is not a plan document; the message names the field."""


def _num(value: Any, where: str, default: float | None = None) -> float:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlanFormatError(f"{where}: expected a number, got {value!r}")
    return float(value)


def rows_of(result: Mapping[str, Any], origin: str = "plan") -> dict[str, Row]:
    """The placements of a plan document by ``namespace/name`` (raises PlanFormatError)."""
    placements = result.get("placements") if isinstance(result, Mapping) else None
    if not isinstance(placements, list):
        raise PlanFormatError(
            f"{origin}: placements: expected a list (is this `continuum plan -o json` output?)"
        )
    rows: dict[str, Row] = {}
    for i, p in enumerate(placements):
        where = f"{origin}: placements[{i}]"
        if not isinstance(p, Mapping):
            raise PlanFormatError(f"{where}: expected an object")
        for name in ("namespace", "name", "phase"):
            if not isinstance(p.get(name), str):
                raise PlanFormatError(f"{where}.{name}: expected a string")
        key = f"{p['namespace']}/{p['name']}"
        placed = p["phase"] == PLACED
        if placed and not isinstance(p.get("pool"), str):
            raise PlanFormatError(f"{where}.pool: a Placed workload needs its pool")
        candidates = {}
        for j, c in enumerate(p.get("candidates") or []):
            if not isinstance(c, Mapping) or not isinstance(c.get("pool"), str):
                raise PlanFormatError(f"{where}.candidates[{j}].pool: expected a string")
            candidates[c["pool"]] = c
        rejected = p.get("rejectedByReason") or {}
        if not isinstance(rejected, Mapping):
            raise PlanFormatError(f"{where}.rejectedByReason: expected an object")
        rows[key] = Row(
            key=key,
            phase=p["phase"],
            pool=p.get("pool") if placed else None,
            tier=p.get("tier") if placed else None,
            site=p.get("site") if placed else None,
            latency_ms=_num(p.get("estimatedLatencyMs"), f"{where}.estimatedLatencyMs") if placed else None,
            wan_mbps=_num(p.get("wanMbps"), f"{where}.wanMbps", 0.0) if placed else 0.0,
            hourly_cost=_num(p.get("hourlyCost"), f"{where}.hourlyCost", 0.0) if placed else 0.0,
            hint=p.get("hint"),
            candidates=candidates,
            rejected_by_reason={str(k): int(v) for k, v in rejected.items()},
        )
    return rows


def demands_of(workloads: Iterable[EdgeWorkload]) -> dict[str, Demand]:
    """Total requests per workload key, from the specs."""
    from continuum.placement.filters import total_request

    out = {}
    for w in workloads:
        total = total_request(w.spec)
        out[w.key] = Demand(total.cpu_millis, total.memory_bytes, total.gpu)
    return out


def demands_in_document(result: Mapping[str, Any]) -> dict[str, Demand]:
    """Demands a plan document carries itself (``requests: {cpuMillis, memoryBytes, gpu}`` per
    placement); empty for documents that carry none."""
    out = {}
    for p in result.get("placements") or []:
        req = p.get("requests") if isinstance(p, Mapping) else None
        if isinstance(req, Mapping):
            key = f"{p['namespace']}/{p['name']}"
            out[key] = Demand(
                _num(req.get("cpuMillis"), f"{key}.requests.cpuMillis", 0.0),
                _num(req.get("memoryBytes"), f"{key}.requests.memoryBytes", 0.0),
                _num(req.get("gpu"), f"{key}.requests.gpu", 0.0),
            )
    return out


def pool_usage(
    rows: Mapping[str, Row], demands: Mapping[str, Demand]
) -> tuple[dict[str, Usage], dict[str, str]]:
    """Usage per pool of the placed rows, and the tier of every pool seen (placements and candidates)."""
    usage: dict[str, Usage] = {}
    tiers: dict[str, str] = {}
    for row in rows.values():
        for name, cand in row.candidates.items():
            if isinstance(cand.get("tier"), str):
                tiers.setdefault(name, cand["tier"])
        if not row.placed or row.pool is None:
            continue
        if row.tier:
            tiers[row.pool] = row.tier
        d = demands.get(row.key, Demand())
        usage[row.pool] = usage.get(row.pool, Usage()) + Usage(
            1, d.cpu_millis, d.memory_bytes, d.gpu, row.wan_mbps, row.hourly_cost
        )
    return usage, tiers


# --- the diff --------------------------------------------------------------------------------------


def _reasons(cand: Mapping[str, Any]) -> str:
    return "; ".join(f"{r.get('code')}: {r.get('message')}" for r in cand.get("reasons") or [])


def move_reason(before: Row, after: Row) -> str:
    """Why ``after`` no longer uses ``before.pool``, from the new plan's verdict on that pool."""
    old = before.pool
    cand = after.candidates.get(old or "")
    if cand is None:
        grouped = ", ".join(f"{code} ×{n}" for code, n in sorted(after.rejected_by_reason.items()))
        text = f"pool {old} is not among the new plan's candidates (removed from the cluster, or not shown)"
        return f"{text}; rejected pools by reason: {grouped}" if grouped else text
    if not cand.get("feasible"):
        return f"{old} no longer fits: {_reasons(cand)}"
    new_cost, old_cost = after.hourly_cost, cand.get("hourlyCost")
    tiers = (
        f"{cand.get('tier')} → {after.tier}"
        if cand.get("tier") != after.tier
        else f"same tier ({after.tier})"
    )
    costs = (
        f"{old_cost:.4g}/h → {new_cost:.4g}/h" if isinstance(old_cost, (int, float)) else f"{new_cost:.4g}/h"
    )
    return f"{old} still fits; the solver prefers {after.pool}: {tiers}, {costs}"


def diff_plans(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    demands_before: Mapping[str, Demand],
    demands_after: Mapping[str, Demand],
) -> PlanDiff:
    """Compare two plan documents. ``demands_*``: total requests per workload key on each side; a
    key missing on the baseline side is looked up on the other side (and counted as assumed)."""
    rows_b, rows_a = rows_of(before, "baseline"), rows_of(after, "plan")
    assumed = [k for k in rows_b if k not in demands_before and k in demands_after and rows_b[k].placed]
    unknown = sorted(
        k for k, r in rows_b.items() if r.placed and k not in demands_before and k not in demands_after
    )
    unknown += sorted(k for k, r in rows_a.items() if r.placed and k not in demands_after)
    merged_b = {**{k: demands_after[k] for k in assumed}, **demands_before}
    changes: list[Change] = []
    still: list[str] = []
    unchanged = 0
    for key in sorted(rows_a.keys() | rows_b.keys()):
        b, a = rows_b.get(key), rows_a.get(key)
        if a is None:
            assert b is not None
            changes.append(Change(key, "removed", b, None, "not in the new manifests"))
        elif not a.placed:
            if b is not None and not b.placed:
                still.append(key)
            else:
                why = "new workload" if b is None else f"was on {b.pool}"
                changes.append(
                    Change(key, "unschedulable", b, a, f"{why}; hint: {a.hint}" if a.hint else why)
                )
        elif b is None or not b.placed:
            changes.append(Change(key, "placed", b, a, "new workload" if b is None else "was unschedulable"))
        elif b.pool != a.pool:
            changes.append(Change(key, "moved", b, a, move_reason(b, a)))
        elif (
            abs(a.hourly_cost - b.hourly_cost) > 1e-9
            or a.latency_ms != b.latency_ms
            or a.wan_mbps != b.wan_mbps
        ):
            changes.append(Change(key, "changed", b, a, "same pool, different estimate"))
        else:
            unchanged += 1
    usage_b, tiers_b = pool_usage(rows_b, merged_b)
    usage_a, tiers_a = pool_usage(rows_a, demands_after)
    tiers = {**tiers_b, **tiers_a}
    pools = [
        PoolDelta(name, tiers.get(name), usage_b.get(name, Usage()), usage_a.get(name, Usage()))
        for name in sorted(usage_a.keys() | usage_b.keys())
    ]
    pools = [p for p in pools if not p.delta.is_zero]
    return PlanDiff(
        changes=changes,
        pools=pools,
        before=_summary(rows_b),
        after=_summary(rows_a),
        still_unschedulable=still,
        unchanged=unchanged,
        assumed_demands=len(assumed),
        unknown_demands=unknown,
    )


def _summary(rows: Mapping[str, Row]) -> dict[str, Any]:
    placed = [r for r in rows.values() if r.placed]
    return {
        "workloads": len(rows),
        "placed": len(placed),
        "unschedulable": len(rows) - len(placed),
        "hourlyCost": round(sum(r.hourly_cost for r in placed), 6),
    }


# --- rendering -------------------------------------------------------------------------------------

KIND_TITLES = {
    "unschedulable": "newly unschedulable",
    "moved": "moved",
    "placed": "newly placed",
    "removed": "removed",
    "changed": "re-estimated on the same pool",
}


def _signed(value: float, fmt: str = "{:+.4g}") -> str:
    return "0" if abs(value) < 1e-9 else fmt.format(value)


def _cpu(millis: float) -> str:
    return _signed(millis / 1000, "{:+g}")


def _mem(num_bytes: float) -> str:
    return _signed(num_bytes / 2**30, "{:+.3g} GiB")


def _where(row: Row | None) -> str:
    if row is None:
        return "(absent)"
    if not row.placed:
        return "Unschedulable"
    return f"{row.pool} ({row.tier})"


def summary_line(diff: PlanDiff) -> str:
    counts = [f"{len(diff.of_kind(k))} {title}" for k, title in KIND_TITLES.items() if diff.of_kind(k)]
    b, a = diff.before, diff.after
    parts = [
        ", ".join(counts) if counts else "no placement changes",
        f"placed {b['placed']} → {a['placed']} of {a['workloads']}",
        f"cost {b['hourlyCost']:.4g}/h → {a['hourlyCost']:.4g}/h ({_signed(diff.cost_delta)}/h)",
    ]
    wan = sum(p.delta.wan_mbps for p in diff.pools)
    if abs(wan) > 1e-9:
        parts.append(f"WAN {_signed(wan, '{:+g}')} Mbps")
    if a["unschedulable"]:
        parts.append(f"{a['unschedulable']} unschedulable")
    return " · ".join(parts)


def _change_facts(c: Change) -> list[tuple[str, str]]:
    facts = [("placement", f"{_where(c.before)} → {_where(c.after)}"), ("why", c.reason)]
    b, a = c.before, c.after
    if b is not None and b.placed and a is not None and a.placed:
        facts.append(("latency", f"{b.latency_ms:g} ms → {a.latency_ms:g} ms"))
        facts.append(("WAN", f"{b.wan_mbps:g} → {a.wan_mbps:g} Mbps"))
    elif a is not None and a.placed:
        facts.append(("latency", f"{a.latency_ms:g} ms"))
        facts.append(("WAN", f"{a.wan_mbps:g} Mbps"))
    facts.append(("cost", f"{_signed(c.cost_delta)}/h"))
    return facts


def _notes(diff: PlanDiff) -> list[str]:
    notes = []
    if diff.assumed_demands:
        notes.append(
            f"{diff.assumed_demands} baseline workload(s) had no requests in the baseline document: "
            "their CPU/memory/GPU are taken from the current specs (give the baseline as manifests to be exact)"
        )
    if diff.unknown_demands:
        notes.append(
            f"requests unknown for {len(diff.unknown_demands)} workload(s), counted as 0 CPU/memory/GPU: "
            + ", ".join(diff.unknown_demands[:10])
            + (" …" if len(diff.unknown_demands) > 10 else "")
        )
    return notes


def render_text(diff: PlanDiff) -> str:
    lines = ["Continuum plan diff: " + summary_line(diff)]
    for kind, title in KIND_TITLES.items():
        changes = diff.of_kind(kind)
        if not changes:
            continue
        lines += ["", f"{title.capitalize()} ({len(changes)}):"]
        for c in changes:
            lines.append(f"  {c.key}: {_where(c.before)} → {_where(c.after)}  ({_signed(c.cost_delta)}/h)")
            lines.append(f"      {c.reason}")
    if diff.still_unschedulable:
        lines += [
            "",
            f"Still unschedulable ({len(diff.still_unschedulable)}): " + ", ".join(diff.still_unschedulable),
        ]
    if diff.pools:
        lines += ["", "Per pool (after − before):"]
        header = ("POOL", "TIER", "WORKLOADS", "CPU", "MEMORY", "GPU", "WAN Mbps", "COST/h")
        table = [header] + [_pool_cells(p) for p in diff.pools]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            lines.append(
                "  "
                + "  ".join(
                    cell.ljust(w) if i < 2 else cell.rjust(w)
                    for i, (cell, w) in enumerate(zip(r, widths, strict=True))
                )
            )
    lines += [""] + [f"note: {n}" for n in _notes(diff)] if _notes(diff) else []
    return "\n".join(lines).rstrip() + "\n"


def _pool_cells(p: PoolDelta) -> tuple[str, ...]:
    d = p.delta
    return (
        p.pool,
        p.tier or "-",
        f"{p.before.workloads} → {p.after.workloads}",
        _cpu(d.cpu_millis),
        _mem(d.memory_bytes),
        _signed(d.gpu, "{:+g}"),
        _signed(d.wan_mbps, "{:+g}"),
        _signed(d.hourly_cost),
    )


def _md(text: str) -> str:
    """Text safe inside a markdown table cell or summary."""
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("\n", " ")
    )


def render_markdown(diff: PlanDiff, max_details: int = 100) -> str:
    """A pull-request comment: the summary line first, then collapsible sections. At most
    ``max_details`` workloads get their own collapsible block (GitHub caps a comment at 65,536
    characters); the rest are counted in a line saying so."""
    icon = "⚠️" if diff.after["unschedulable"] else "✅"
    out = [f"{icon} **Continuum plan:** {_md(summary_line(diff))}", ""]
    shown = 0
    for kind, title in KIND_TITLES.items():
        changes = diff.of_kind(kind)
        if not changes:
            continue
        out += [
            f"<details{' open' if kind in ('unschedulable', 'moved') else ''}>",
            f"<summary><b>{len(changes)} {title}</b></summary>",
            "",
        ]
        for c in changes:
            if shown >= max_details:
                break
            shown += 1
            out += [
                "<details>",
                f"<summary><code>{_md(c.key)}</code>: {_md(_where(c.before))} → {_md(_where(c.after))} "
                f"({_md(_signed(c.cost_delta))}/h)</summary>",
                "",
                "| | |",
                "|---|---|",
            ]
            out += [f"| {k} | {_md(v)} |" for k, v in _change_facts(c)]
            out += ["", "</details>"]
        out += ["", "</details>", ""]
    hidden = len(diff.changes) - shown
    if hidden > 0:
        out += [
            f"_{hidden} more changed workload(s) not detailed here (limit {max_details}); "
            "run `continuum plan --baseline` for all._",
            "",
        ]
    if diff.still_unschedulable:
        out += [
            f"_Still unschedulable ({len(diff.still_unschedulable)}): "
            + _md(", ".join(diff.still_unschedulable[:50]))
            + (" …" if len(diff.still_unschedulable) > 50 else "")
            + "_",
            "",
        ]
    if diff.pools:
        out += [
            "<details>",
            f"<summary><b>Per-pool changes ({len(diff.pools)} pools)</b></summary>",
            "",
            "| pool | tier | workloads | CPU | memory | GPU | WAN Mbps | cost/h |",
            "|---|---|--:|--:|--:|--:|--:|--:|",
        ]
        out += ["| " + " | ".join(_md(c) for c in _pool_cells(p)) + " |" for p in diff.pools]
        out += ["", "</details>", ""]
    for note in _notes(diff):
        out.append(f"> {_md(note)}")
    return "\n".join(out).rstrip() + "\n"


def as_dict(diff: PlanDiff) -> dict[str, Any]:
    """The diff as a JSON-able document (``-o json --baseline``)."""

    def row(r: Row | None) -> dict[str, Any] | None:
        if r is None:
            return None
        return {
            "phase": r.phase,
            "pool": r.pool,
            "tier": r.tier,
            "estimatedLatencyMs": r.latency_ms,
            "wanMbps": r.wan_mbps,
            "hourlyCost": r.hourly_cost,
            "hint": r.hint,
        }

    def usage(u: Usage) -> dict[str, float]:
        return {
            "workloads": u.workloads,
            "cpuMillis": u.cpu_millis,
            "memoryBytes": u.memory_bytes,
            "gpu": u.gpu,
            "wanMbps": round(u.wan_mbps, 6),
            "hourlyCost": round(u.hourly_cost, 6),
        }

    return {
        "summary": {
            "line": summary_line(diff),
            "before": dict(diff.before),
            "after": dict(diff.after),
            "hourlyCostDelta": round(diff.cost_delta, 6),
            "unchanged": diff.unchanged,
            **{kind: len(diff.of_kind(kind)) for kind in KIND_TITLES},
        },
        "changes": [
            {
                "workload": c.key,
                "change": c.kind,
                "reason": c.reason,
                "before": row(c.before),
                "after": row(c.after),
                "hourlyCostDelta": round(c.cost_delta, 6),
            }
            for c in diff.changes
        ],
        "stillUnschedulable": diff.still_unschedulable,
        "pools": [
            {
                "pool": p.pool,
                "tier": p.tier,
                "before": usage(p.before),
                "after": usage(p.after),
                "delta": usage(p.delta),
            }
            for p in diff.pools
        ],
        "notes": _notes(diff),
    }


# --- edge: load the baseline, print ----------------------------------------------------------------


def is_plan_document(paths: Sequence[str]) -> bool:
    return len(paths) == 1 and Path(paths[0]).suffix == ".json" and Path(paths[0]).is_file()


def load_baseline(paths: Sequence[str], solver: str) -> tuple[dict[str, Any], dict[str, Demand]]:
    """The baseline plan and its demands: a previous ``-o json`` document (one ``.json`` file), or
    manifests (files/folders) planned here with the same solver. Raises ManifestError,
    PlanFormatError or OSError."""
    if is_plan_document(paths):
        try:
            document = json.loads(Path(paths[0]).read_text())
        except json.JSONDecodeError as exc:
            raise PlanFormatError(f"{paths[0]}: not JSON: {exc}") from exc
        rows_of(document, paths[0])  # validate, naming the field
        return document, demands_in_document(document)
    from continuum.api.loader import load_manifests
    from continuum.plan import plan_result

    return plan_result(paths, solver), demands_of(load_manifests(paths).workloads)


def run_diff(args: argparse.Namespace, result: Mapping[str, Any], exit_code: int) -> int:
    """``continuum plan --baseline``: print the diff in ``args.output``; exit code unchanged (1 on a
    bad baseline)."""
    import sys

    import yaml

    from continuum.api.loader import ManifestError, load_manifests

    try:
        baseline, demands_b = load_baseline(args.baseline or [], args.solver)
    except ManifestError as exc:
        print("error: invalid baseline", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    except (PlanFormatError, OSError) as exc:
        print(f"error: --baseline: {exc}", file=sys.stderr)
        return 1
    diff = diff_plans(baseline, result, demands_b, demands_of(load_manifests(args.paths).workloads))
    if args.output == "markdown":
        sys.stdout.write(render_markdown(diff))
    elif args.output == "json":
        print(json.dumps(as_dict(diff), indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(as_dict(diff), sort_keys=False), end="")
    else:
        sys.stdout.write(render_text(diff))
    return exit_code
