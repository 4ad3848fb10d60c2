"""``continuum plan --report FILE.html``: one self-contained HTML file with plots of a plan.

No network, no JavaScript, no external files: the plots are inline SVG drawn here (edge sites are
often air-gapped). Pure core: :func:`build_report` turns a plan document plus the pools and
workload specs into a :class:`Report`; :func:`render_html` draws it. :func:`write_report_for` is the
CLI edge.

Plots: each placed workload's estimated latency against its budget; WAN ingress per pool against
its capacity; placements per pool site and tier; the plan's hourly cost against two baselines
computed in the same run (every workload on its cheapest cloud pool; every workload on the cheapest
pool of its most preferred tier, both ignoring capacity); and the unschedulable workloads with their
hints and rejected pools by reason.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from continuum.api.models import EdgeWorkload
    from continuum.placement.snapshot import ClusterSnapshot, PoolView

TIERS = ("device", "near-edge", "regional-mec", "cloud")
TIER_COLORS = {"device": "#4e79a7", "near-edge": "#59a14f", "regional-mec": "#f28e2b", "cloud": "#e15759"}
MAX_WAN_ROWS = 60
MAX_SITE_ROWS = 40
MAX_UNSCHEDULABLE_ROWS = 500


@dataclass(frozen=True)
class LatencyPoint:
    key: str
    pool: str
    tier: str
    latency_ms: float
    budget_ms: float


@dataclass(frozen=True)
class WanBar:
    pool: str
    tier: str
    used_mbps: float
    capacity_mbps: float | None  # None: unlimited


@dataclass(frozen=True)
class CostBaseline:
    name: str
    hourly_cost: float
    workloads: int  # workloads counted in the sum
    breaking_rules: int  # of those, how many would break a hard rule (latency, privacy, ...) there
    without_pool: int  # workloads with no pool of that tier (not in the sum)


@dataclass(frozen=True)
class Unschedulable:
    key: str
    hint: str | None
    rejected_by_reason: Mapping[str, int]


@dataclass
class Report:
    title: str
    summary: Mapping[str, Any]
    latency: list[LatencyPoint]
    wan: list[WanBar]
    by_site_tier: dict[str, Counter[str]]  # pool site → tier → workloads placed
    plan_cost: float
    baselines: list[CostBaseline]
    unschedulable: list[Unschedulable]
    notes: list[str] = field(default_factory=list)


# --- building --------------------------------------------------------------------------------------


def most_preferred_tier(workload: EdgeWorkload, present: set[str]) -> str | None:
    """``tiers.preferred[0]``; without a preference the nearest allowed tier the cluster has."""
    tiers = workload.spec.tiers
    if tiers.preferred:
        return tiers.preferred[0].value
    allowed = [t.value for t in tiers.allowed] if tiers.allowed else list(TIERS)
    return next((t for t in TIERS if t in allowed and t in present), None)


def _cheapest(workload: EdgeWorkload, pools: Sequence[PoolView]) -> tuple[float, PoolView] | None:
    from continuum.placement.filters import hourly_cost

    best = None
    for pool in pools:
        cost = hourly_cost(workload.spec, pool)
        if best is None or cost < best[0] or (cost == best[0] and pool.name < best[1].name):
            best = (cost, pool)
    return best


def cost_baseline(
    name: str, workloads: Sequence[EdgeWorkload], snapshot: ClusterSnapshot, tier_of: Any
) -> CostBaseline:
    """Σ over ``workloads`` of the cheapest pool of ``tier_of(workload)`` (capacity ignored)."""
    from continuum.placement.filters import static_reasons

    by_tier: dict[str, list[PoolView]] = {}
    for pool in snapshot.pools:
        by_tier.setdefault(pool.tier.value, []).append(pool)
    total, counted, breaking, missing = 0.0, 0, 0, 0
    for w in workloads:
        tier = tier_of(w)
        best = _cheapest(w, by_tier.get(tier, [])) if tier else None
        if best is None:
            missing += 1
            continue
        total += best[0]
        counted += 1
        if static_reasons(w.spec, best[1]):
            breaking += 1
    return CostBaseline(name, round(total, 6), counted, breaking, missing)


def build_report(
    result: Mapping[str, Any],
    workloads: Sequence[EdgeWorkload],
    snapshot: ClusterSnapshot,
    title: str = "Continuum placement plan",
) -> Report:
    specs = {w.key: w for w in workloads}
    pools = {p.name: p for p in snapshot.pools}
    latency: list[LatencyPoint] = []
    wan_used: dict[str, float] = {}
    by_site_tier: dict[str, Counter[str]] = {}
    unsched: list[Unschedulable] = []
    placed_keys: list[str] = []
    notes: list[str] = []
    for p in result["placements"]:
        key = f"{p['namespace']}/{p['name']}"
        if p["phase"] != "Placed":
            rejected = p.get("rejectedByReason")
            if not rejected:
                rejected = Counter(
                    r["code"] for c in p.get("candidates") or [] for r in c.get("reasons") or []
                )
            unsched.append(Unschedulable(key, p.get("hint"), dict(sorted(rejected.items()))))
            continue
        placed_keys.append(key)
        w = specs.get(key)
        if w is not None:
            latency.append(
                LatencyPoint(
                    key,
                    p["pool"],
                    p["tier"],
                    float(p["estimatedLatencyMs"]),
                    w.spec.requirements.latency_budget_ms,
                )
            )
        wan_used[p["pool"]] = wan_used.get(p["pool"], 0.0) + float(p.get("wanMbps") or 0.0)
        site = p.get("site") or "?"
        by_site_tier.setdefault(site, Counter())[p["tier"]] += 1
    missing = [k for k in placed_keys if k not in specs]
    if missing:
        notes.append(f"{len(missing)} placed workload(s) have no spec in the manifests and are not plotted")
    wan = []
    for name, view in sorted(pools.items()):
        cap = view.pool.spec.network.wan_ingress_mbps
        used = wan_used.get(name, 0.0)
        if cap is None and used == 0:
            continue
        wan.append(WanBar(name, view.tier.value, used, cap))
    placed = [specs[k] for k in placed_keys if k in specs]
    present = {p.tier.value for p in snapshot.pools}
    baselines = [
        cost_baseline("everything in the cloud tier", placed, snapshot, lambda w: "cloud"),
        cost_baseline(
            "everything on its most preferred tier",
            placed,
            snapshot,
            lambda w: most_preferred_tier(w, present),
        ),
    ]
    return Report(
        title=title,
        summary=dict(result["summary"]),
        latency=latency,
        wan=wan,
        by_site_tier=by_site_tier,
        plan_cost=float(result["summary"]["hourlyCost"]),
        baselines=baselines,
        unschedulable=unsched,
        notes=notes,
    )


# --- drawing ---------------------------------------------------------------------------------------

e = html.escape


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.3g}"


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10**exp
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def svg_latency(points: Sequence[LatencyPoint], width: int = 760, height: int = 460) -> str:
    """Scatter: budget (x) against estimated latency (y), log-log, with the y = x line."""
    left, right, top, bottom = 60, 150, 20, 50
    pw, ph = width - left - right, height - top - bottom
    values = [v for p in points for v in (p.latency_ms, p.budget_ms) if v > 0] or [1.0, 10.0]
    lo = 10 ** math.floor(math.log10(max(min(values), 0.05)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    if hi <= lo:
        hi = lo * 10

    def x(v: float) -> float:
        return left + pw * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    def y(v: float) -> float:
        return top + ph - ph * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    out = [
        f'<svg class="plot" id="plot-latency" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="estimated latency against budget">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for t in _log_ticks(lo, hi):
        out.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{top + ph}" stroke="#eee"/>')
        out.append(f'<line x1="{left}" y1="{y(t):.1f}" x2="{left + pw}" y2="{y(t):.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{x(t):.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">{_num(t)}</text>'
        )
        out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end" class="tick">{_num(t)}</text>')
    out.append(
        f'<line x1="{x(lo):.1f}" y1="{y(lo):.1f}" x2="{x(hi):.1f}" y2="{y(hi):.1f}" stroke="#999" '
        'stroke-dasharray="4 3"><title>latency = budget</title></line>'
    )
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 12}" text-anchor="middle">latency budget (ms, log)</text>'
    )
    out.append(
        f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">'
        "estimated latency (ms, log)</text>"
    )
    for p in points:
        out.append(
            f'<circle class="mark" cx="{x(p.budget_ms):.1f}" cy="{y(p.latency_ms):.1f}" r="3.5" '
            f'fill="{TIER_COLORS.get(p.tier, "#777")}" fill-opacity="0.75"><title>{e(p.key)}: {_num(p.latency_ms)} ms '
            f"of {_num(p.budget_ms)} ms on {e(p.pool)} ({e(p.tier)})</title></circle>"
        )
    out += _legend(width - right + 12, top + 10)
    out.append("</svg>")
    return "\n".join(out)


def _legend(x0: float, y0: float) -> list[str]:
    out = []
    for i, tier in enumerate(TIERS):
        yy = y0 + i * 20
        out.append(f'<rect x="{x0}" y="{yy - 9}" width="12" height="12" fill="{TIER_COLORS[tier]}"/>')
        out.append(f'<text x="{x0 + 18}" y="{yy + 1}">{tier}</text>')
    return out


def svg_wan(bars: Sequence[WanBar], width: int = 760) -> tuple[str, int]:
    """Horizontal bars: WAN ingress placed on each pool as a share of its capacity. Returns the SVG
    and how many pools were left out (only the MAX_WAN_ROWS most used are drawn)."""

    def share(b: WanBar) -> float:
        return b.used_mbps / b.capacity_mbps if b.capacity_mbps else (math.inf if b.used_mbps else 0.0)

    ordered = sorted(bars, key=lambda b: (-share(b) if b.capacity_mbps else -1.0, -b.used_mbps, b.pool))
    shown = ordered[:MAX_WAN_ROWS]
    row, left, right, top = 18, 150, 190, 24
    height = top + row * max(len(shown), 1) + 30
    pw = width - left - right
    out = [
        f'<svg class="plot" id="plot-wan" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="WAN ingress per pool against capacity">',
        f'<text x="{left}" y="14" class="tick">0</text>'
        f'<text x="{left + pw}" y="14" text-anchor="end" class="tick">capacity</text>',
    ]
    for i, b in enumerate(shown):
        yy = top + i * row
        out.append(f'<text x="{left - 6}" y="{yy + 12}" text-anchor="end">{e(b.pool)}</text>')
        out.append(f'<rect x="{left}" y="{yy + 2}" width="{pw}" height="{row - 5}" fill="#eee"/>')
        if b.capacity_mbps:
            frac = min(b.used_mbps / b.capacity_mbps, 1.0)
            label = f"{_num(b.used_mbps)} / {_num(b.capacity_mbps)} Mbps ({100 * b.used_mbps / b.capacity_mbps:.0f}%)"
            color = "#e15759" if b.used_mbps > 0.9 * b.capacity_mbps else TIER_COLORS.get(b.tier, "#777")
        elif b.capacity_mbps == 0:
            frac, label, color = 0.0, f"{_num(b.used_mbps)} / 0 Mbps (no WAN ingress)", "#777"
        else:
            frac, label, color = 0.0, f"{_num(b.used_mbps)} Mbps (unlimited)", "#777"
        if frac > 0:
            out.append(
                f'<rect class="mark" x="{left}" y="{yy + 2}" width="{max(pw * frac, 1.5):.1f}" height="{row - 5}" '
                f'fill="{color}"><title>{e(b.pool)} ({e(b.tier)}): {label}</title></rect>'
            )
        out.append(f'<text x="{left + pw + 6}" y="{yy + 12}" class="tick">{label}</text>')
    out.append("</svg>")
    return "\n".join(out), len(ordered) - len(shown)


def svg_site_tier(by_site_tier: Mapping[str, Counter[str]], width: int = 760) -> tuple[str, int]:
    """Stacked horizontal bars: workloads placed per pool site, split by tier."""
    ordered = sorted(by_site_tier.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    shown, rest = ordered[:MAX_SITE_ROWS], ordered[MAX_SITE_ROWS:]
    if rest:
        other: Counter[str] = Counter()
        for _, c in rest:
            other.update(c)
        shown.append((f"{len(rest)} other sites", other))
    row, left, right, top = 18, 170, 150, 10
    height = top + row * max(len(shown), 1) + 30
    pw = width - left - right
    biggest = max((sum(c.values()) for _, c in shown), default=1) or 1
    out = [
        f'<svg class="plot" id="plot-sites" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="placements per site and tier">'
    ]
    for i, (site, counts) in enumerate(shown):
        yy = top + i * row
        out.append(f'<text x="{left - 6}" y="{yy + 12}" text-anchor="end">{e(site)}</text>')
        xx = float(left)
        for tier in TIERS:
            n = counts.get(tier, 0)
            if not n:
                continue
            w = pw * n / biggest
            out.append(
                f'<rect class="mark" x="{xx:.1f}" y="{yy + 2}" width="{w:.1f}" height="{row - 5}" '
                f'fill="{TIER_COLORS[tier]}"><title>{e(site)}: {n} on {tier}</title></rect>'
            )
            xx += w
        out.append(f'<text x="{xx + 6:.1f}" y="{yy + 12}" class="tick">{sum(counts.values())}</text>')
    out += _legend(width - right + 30, top + 12)
    out.append("</svg>")
    return "\n".join(out), len(rest)


def svg_cost(plan_cost: float, baselines: Sequence[CostBaseline], width: int = 760) -> str:
    bars = [("this plan", plan_cost, "#4e79a7")] + [(b.name, b.hourly_cost, "#bab0ac") for b in baselines]
    row, left, right, top = 34, 250, 110, 10
    height = top + row * len(bars) + 10
    pw = width - left - right
    biggest = max(v for _, v, _ in bars) or 1.0
    out = [
        f'<svg class="plot" id="plot-cost" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'role="img" aria-label="hourly cost against two baselines">'
    ]
    for i, (name, value, color) in enumerate(bars):
        yy = top + i * row
        w = max(pw * value / biggest, 1.5)
        out.append(f'<text x="{left - 8}" y="{yy + 19}" text-anchor="end">{e(name)}</text>')
        out.append(
            f'<rect class="mark" x="{left}" y="{yy + 4}" width="{w:.1f}" height="{row - 10}" fill="{color}">'
            f"<title>{e(name)}: {value:.4g}/h</title></rect>"
        )
        out.append(f'<text x="{left + w + 6:.1f}" y="{yy + 19}">{value:.4g}/h</text>')
    out.append("</svg>")
    return "\n".join(out)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1000px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
svg.plot{display:block;max-width:100%;height:auto;font-size:11px}svg text{fill:#333}.tick{fill:#666}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
.num{text-align:right}.note{color:#666;font-size:12px}.kpi{display:inline-block;margin-right:28px}
.kpi b{font-size:20px;display:block}
"""


def render_html(report: Report) -> str:
    s = report.summary
    wan_svg, wan_left_out = svg_wan(report.wan)
    site_svg, sites_grouped = svg_site_tier(report.by_site_tier)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(report.title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
        '<div class="kpis">',
        f'<span class="kpi"><b>{s["workloads"]}</b>workloads</span>',
        f'<span class="kpi"><b>{s["placed"]}</b>placed</span>',
        f'<span class="kpi"><b>{s["unschedulable"]}</b>unschedulable</span>',
        f'<span class="kpi"><b>{report.plan_cost:.4g}/h</b>hourly cost</span>',
        "</div>",
        '<h2 id="latency">Estimated latency against budget</h2>',
        f'<p class="note">One point per placed workload ({len(report.latency)}): RTT from its source site to the '
        "pool plus the model's inference time on that tier. Points below the dashed line meet their budget; "
        "the further below, the more slack.</p>",
        svg_latency(report.latency),
        '<h2 id="wan">WAN ingress per pool against capacity</h2>',
        '<p class="note">Traffic the placed workloads send over the WAN into each pool (off-site ingest), as a '
        "share of the pool's <code>wanIngressMbps</code>; red above 90 %. Pools with unlimited ingress and no "
        "traffic are left out.</p>",
        wan_svg,
    ]
    if wan_left_out:
        parts.append(f'<p class="note">{wan_left_out} less used pools not drawn.</p>')
    parts += [
        '<h2 id="sites">Placements per site and tier</h2>',
        '<p class="note">Workloads placed on the pools of each site, by tier.</p>',
        site_svg,
        '<h2 id="cost">Hourly cost against two baselines</h2>',
        '<p class="note">Both baselines are computed in this run over the workloads this plan places, each on '
        "the cheapest pool of the given tier, ignoring capacity (and, for the count below, checking the hard "
        "rules: latency, privacy, residency, tier, nodes, accelerator, single-node fit).</p>",
        svg_cost(report.plan_cost, report.baselines),
        "<table><tr><th>baseline</th><th class=num>cost/h</th><th class=num>vs this plan</th>"
        "<th class=num>workloads</th><th class=num>would break a hard rule there</th>"
        "<th class=num>no pool of that tier</th></tr>",
    ]
    for b in report.baselines:
        delta = b.hourly_cost - report.plan_cost
        parts.append(
            f"<tr><td>{e(b.name)}</td><td class=num>{b.hourly_cost:.4g}</td><td class=num>{delta:+.4g}</td>"
            f"<td class=num>{b.workloads}</td><td class=num>{b.breaking_rules}</td><td class=num>{b.without_pool}</td></tr>"
        )
    parts.append("</table>")
    parts.append(f'<h2 id="unschedulable">Unschedulable workloads ({len(report.unschedulable)})</h2>')
    if report.unschedulable:
        parts.append("<table><tr><th>workload</th><th>hint</th><th>rejected pools by reason</th></tr>")
        for u in report.unschedulable[:MAX_UNSCHEDULABLE_ROWS]:
            reasons = ", ".join(f"{e(code)} ×{n}" for code, n in u.rejected_by_reason.items())
            parts.append(f"<tr><td>{e(u.key)}</td><td>{e(u.hint or '-')}</td><td>{reasons}</td></tr>")
        parts.append("</table>")
        if len(report.unschedulable) > MAX_UNSCHEDULABLE_ROWS:
            parts.append(
                f'<p class="note">{len(report.unschedulable) - MAX_UNSCHEDULABLE_ROWS} more not listed; '
                "see <code>continuum plan -o json</code>.</p>"
            )
    else:
        parts.append("<p>None: every workload is placed.</p>")
    if sites_grouped:
        parts.append(f'<p class="note">The {sites_grouped} least used sites are grouped in one bar.</p>')
    for note in report.notes:
        parts.append(f'<p class="note">{e(note)}</p>')
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --- edge ------------------------------------------------------------------------------------------


def write_report_for(args: argparse.Namespace, result: Mapping[str, Any]) -> bool:
    """Write ``args.report`` for the plan of ``args.paths``; False (after a message on stderr) when
    the file cannot be written."""
    import sys

    from continuum.api.loader import load_manifests
    from continuum.plan import snapshot_of

    manifests = load_manifests(args.paths)
    report = build_report(result, manifests.workloads, snapshot_of(manifests))
    try:
        Path(args.report).write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        print(f"error: --report: {exc}", file=sys.stderr)
        return False
    return True
