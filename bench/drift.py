"""Drift benchmark: detection, false positives, sketch-KS against exact KS, worker overhead, bytes upstream.

    .venv/bin/python bench/drift.py [--quick] [--no-write]

1. **Detection and false positives** on generated data: 10 classes with Gaussian centers in 64
   dimensions, unit noise, a linear classifier (the logits the worker would profile). The reference
   is 20,000 rows; every window has ``--drift-min-samples`` (1,000) rows, the smallest window the
   worker scores at the default settings (larger windows only lower the noise). Shifts ramp up over
   10 windows from onset (window 0): mean shift of 8 features (+0.05 sd per window), variance
   change of 8 features (+5 % sd per window), class-prior change (class 0's share +4 points per
   window), and one feature going constant (abruptly, at window 0). The delay is the first window
   whose decision is "drifting"; the false-positive rate is the share of drifting windows with no
   shift.
2. **Sketch vs exact**: every window's decision and per-feature statistic against
   ``scipy.stats.ks_2samp`` on the raw window and the raw reference (same thresholds, same PSI).
3. **Worker overhead** at the batching bench's load (the 64→128→10 MLP, raw keep-alive JSON clients,
   8 and 32 connections, bench/worker.py's client): throughput and worker CPU per request with drift
   profiling on (reference, default settings) and off, alternated over rounds, medians.
4. **Bytes upstream** at 1,000 requests/s (one row each) of a 64-feature model: an hour on a simulated
   clock through the monitor and the CRDT state; the bytes of the state updates that sync sends
   upstream against the raw input tensor bytes (float32, the most compact form a client sends).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "inference-worker"))

from continuum_worker.drift import DriftConfig, DriftMonitor, Profile, Thresholds, compare  # noqa: E402
from continuum_worker.drift import sketch as sk  # noqa: E402
from continuum_worker.drift.monitor import fixed_reference  # noqa: E402
from continuum_worker.drift.upstream import StateSink  # noqa: E402
from continuum_worker.state.doc import StateDoc  # noqa: E402
from scipy import stats  # noqa: E402

from bench.report import machine, markdown_table, write_section  # noqa: E402

FEATURES, CLASSES = 64, 10
T = Thresholds()  # the defaults: KS 0.1, PSI 0.2, 1,000 rows
RAMP = 10


class World:
    """Class-conditional Gaussians and a linear classifier on them."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.centers = rng.normal(0, 0.5, size=(CLASSES, FEATURES)).astype(np.float32)
        self.w = self.centers.T.copy()

    def sample(self, rng: np.random.Generator, n: int, prior: np.ndarray | None = None) -> np.ndarray:
        p = prior if prior is not None else np.full(CLASSES, 1 / CLASSES)
        labels = rng.choice(CLASSES, size=n, p=p)
        return (self.centers[labels] + rng.normal(size=(n, FEATURES))).astype(np.float32)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w


def window(world: World, rng: np.random.Generator, kind: str, step: int, n: int) -> np.ndarray:
    """Window ``step`` (0 = onset) of scenario ``kind``."""
    level = min(step + 1, RAMP)
    prior = None
    if kind == "class prior":
        prior = np.full(CLASSES, (1 - (0.1 + 0.04 * level)) / (CLASSES - 1))
        prior[0] = 0.1 + 0.04 * level
    x = world.sample(rng, n, prior)
    if kind == "mean shift":
        x[:, :8] += 0.05 * level
    elif kind == "variance":
        mean = world.centers.mean(axis=0)[:8]
        x[:, :8] = mean + (x[:, :8] - mean) * (1 + 0.05 * level)
    elif kind == "constant feature":
        x[:, 3] = float(np.median(x[:, 3]))
    return x


def profile_of(world: World, x: np.ndarray) -> Profile:
    p = Profile("m", "1")
    for part in np.array_split(x, max(1, len(x) // 8)):  # requests of ~8 rows
        p.observe({"x": part}, {"y": world.logits(part)}, True)
    return p.flush()


def exact_report(x: np.ndarray, ref_x: np.ndarray, world: World) -> tuple[bool, dict[str, float]]:
    ks = {
        f"x[{j}]": float(stats.ks_2samp(x[:, j], ref_x[:, j], method="asymp").statistic)
        for j in range(FEATURES)
    }
    top_w, top_r = world.logits(x).max(axis=1), world.logits(ref_x).max(axis=1)
    ks["y.top"] = float(stats.ks_2samp(top_w, top_r, method="asymp").statistic)
    cw = np.bincount(world.logits(x).argmax(axis=1), minlength=CLASSES)
    cr = np.bincount(world.logits(ref_x).argmax(axis=1), minlength=CLASSES)
    psi = sk.psi(
        {str(i): int(c) for i, c in enumerate(cw) if c}, {str(i): int(c) for i, c in enumerate(cr) if c}
    )
    drifting = len(x) >= T.min_samples and (max(ks.values()) > T.threshold or psi > T.psi_threshold)
    return drifting, ks


def detection(quick: bool) -> dict:  # type: ignore[type-arg]
    world = World()
    rng = np.random.default_rng(1)
    ref_x = world.sample(rng, 20_000)
    ref = profile_of(world, ref_x)
    n = T.min_samples
    no_shift = 100 if quick else 300
    repeats = 2 if quick else 5
    decisions: list[tuple[bool, bool]] = []
    errors: list[float] = []
    fp = 0
    t0 = time.perf_counter()
    for _ in range(no_shift):
        x = world.sample(rng, n)
        report = compare(profile_of(world, x), ref, T)
        exact, ks = exact_report(x, ref_x, world)
        decisions.append((report["drifting"], exact))
        errors += [abs(report["ks"][f] - ks[f]) for f in ks if f in report["ks"]]
        fp += report["drifting"]
    delays: dict[str, list[int | None]] = {}
    for kind in ("mean shift", "variance", "class prior", "constant feature"):
        for _ in range(repeats):
            found = None
            for step in range(RAMP + 5):
                x = window(world, rng, kind, step, n)
                report = compare(profile_of(world, x), ref, T)
                exact, ks = exact_report(x, ref_x, world)
                decisions.append((report["drifting"], exact))
                errors += [abs(report["ks"][f] - ks[f]) for f in ks if f in report["ks"]]
                if report["drifting"] and found is None:
                    found = step + 1
            delays.setdefault(kind, []).append(found)
    agree = sum(a == b for a, b in decisions) / len(decisions)
    return {
        "windows": len(decisions), "rows_per_window": n, "no_shift_windows": no_shift, "false_positives": fp,
        "fp_rate": fp / no_shift, "delays": delays, "agreement": agree,
        "disagreements": sum(a != b for a, b in decisions), "ks_error_mean": float(np.mean(errors)),
        "ks_error_p99": float(np.quantile(errors, 0.99)), "ks_error_max": float(np.max(errors)),
        "bound": 2 * sk.rank_error(200), "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def upstream_bytes(hours: float) -> dict:  # type: ignore[type-arg]
    """1,000 req/s x 1 row x 64 features for ``hours`` on a simulated clock, through the monitor and
    the CRDT state; what the sync sends upstream is the state diff the upstream lacks."""
    world = World()
    rng = np.random.default_rng(2)
    tmp = Path(tempfile.mkdtemp())
    ref_path = tmp / "ref.json"
    ref_path.write_text(json.dumps(profile_of(world, world.sample(rng, 20_000)).to_json()))
    clock = SimpleNamespace(now=1_000_000.0)
    mon = DriftMonitor(DriftConfig(), fixed_reference(ref_path), clock=lambda: clock.now)
    site, cloud = StateDoc(), StateDoc()
    mon.sink = StateSink(SimpleNamespace(state=site, opened=True))
    rate, chunk = 1000, 1000  # one observe call per simulated second (sketch sizes depend on n only)
    pool = world.sample(rng, 50_000)
    logits = world.logits(pool)
    sent = raw = 0
    seconds = int(hours * 3600)
    for s in range(seconds):
        i = (s * chunk) % (len(pool) - chunk)
        mon.observe("m", "1", True, {"x": pool[i : i + chunk]}, {"y": logits[i : i + chunk]})
        raw += pool[i : i + chunk].nbytes
        clock.now += chunk / rate
        if s % 60 == 59:  # the state syncs (at least) once a minute
            diff = site.diff(cloud.state_vector())
            if len(diff) > 2:
                cloud.apply_remote(diff)
                sent += len(diff)
    mon.tick()
    diff = site.diff(cloud.state_vector())
    if len(diff) > 2:
        cloud.apply_remote(diff)
        sent += len(diff)
    track = mon.tracks[("m", "1")]
    return {"hours": hours, "rows": seconds * chunk, "raw_bytes": raw, "sync_bytes": sent,
            "summary_bytes": track.summary_bytes, "summaries": track.uploads, "ratio": sent / raw}  # fmt: skip


def worker_overhead(rounds: int, seconds: float) -> dict:  # type: ignore[type-arg]
    from bench.worker import start_worker, stop, throughput
    from tests.worker import modelgen

    tmp = Path(tempfile.mkdtemp())
    model = modelgen.mlp(tmp / "mlp.onnx")
    np.save(tmp / "sample.npy", np.random.default_rng(0).random((5000, 64), dtype=np.float32))
    subprocess.run([sys.executable, "-m", "continuum_worker.cli", "profile", "--model", str(model), "--data",
                    str(tmp / "sample.npy"), "--out", str(tmp / "ref.json")], check=True, capture_output=True)  # fmt: skip
    workers = {}
    for mode in ("off", "on"):  # both run for the whole measurement; bursts alternate between them
        env = {"CONTINUUM_DRIFT_WINDOW_SECONDS": "0"} if mode == "off" else {
            "CONTINUUM_DRIFT_REFERENCE": str(tmp / "ref.json")}  # fmt: skip
        env["CONTINUUM_GRPC_PORT"] = "0"  # two workers at once: HTTP only (the load is HTTP)
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            workers[mode] = start_worker(model, "m")
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    try:
        for _, url in workers.values():
            throughput(url, "m", 64, 8, 1.0)  # warm-up
        for r in range(rounds):
            for clients in (8, 32):
                for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                    proc, url = workers[mode]
                    cpu0 = _cpu(proc.pid)
                    rps = throughput(url, "m", 64, clients, seconds)
                    cpu = _cpu(proc.pid) - cpu0
                    if rps:  # a burst in which no request completed (an overloaded machine) has no ratio
                        results.setdefault((mode, clients), []).append((rps, cpu / (rps * seconds) * 1e6))
    finally:
        for proc, _ in workers.values():
            stop(proc)
    out: dict = {"observe_us": observe_cost(model, tmp / "ref.json")}  # type: ignore[type-arg]
    for clients in (8, 32):
        off = results[("off", clients)]
        on = results[("on", clients)]
        out[clients] = {
            "rps_off": statistics.median(r for r, _ in off), "rps_on": statistics.median(r for r, _ in on),
            "cpu_us_off": statistics.median(c for _, c in off), "cpu_us_on": statistics.median(c for _, c in on),
            "paired_ratio": statistics.median(b[0] / a[0] for a, b in zip(off, on, strict=False)),
        }  # fmt: skip
    return out


def observe_cost(model: Path, reference: Path, requests: int = 20_000) -> float:
    """µs per request of the monitor's request-path work (filing the arrays, and the sketch updates
    amortized over 512-row flushes) for the bench model's real inputs and outputs, in this process."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(3)
    xs = [rng.random((1, 64), dtype=np.float32) for _ in range(2000)]
    outs = [dict(zip(names, session.run(None, {"INPUT0": x}), strict=True)) for x in xs]
    best = float("inf")
    for _ in range(5):
        mon = DriftMonitor(DriftConfig(), fixed_reference(reference))
        mon.observe(
            "m", "1", True, {"INPUT0": xs[0]}, outs[0]
        )  # loads the reference (once per model version)
        t0 = time.perf_counter()
        for i in range(requests):
            mon.observe("m", "1", True, {"INPUT0": xs[i % 2000]}, outs[i % 2000])
        best = min(best, (time.perf_counter() - t0) / requests * 1e6)
    return best


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    det = detection(args.quick)
    print(json.dumps(det, indent=1))
    up = upstream_bytes(0.25 if args.quick else 1.0)
    print(json.dumps(up, indent=1))
    ovh = worker_overhead(2 if args.quick else 10, 1.5 if args.quick else 2.0)
    print(json.dumps(ovh, indent=1))
    if args.no_write:
        return 0
    delay_rows = []
    for kind, ds in det["delays"].items():
        found = [d for d in ds if d is not None]
        delay_rows.append([kind, f"{len(found)}/{len(ds)}", f"{max(found) if found else '—'}",
                           f"{statistics.median(found) if found else '—'}"])  # fmt: skip
    delay_table = markdown_table(
        ["shift (ramps over 10 windows)", "detected", "worst delay (windows)", "median delay"], delay_rows
    )
    ovh_rows = []
    observe_us = ovh.pop("observe_us")
    for clients, o in ovh.items():
        ovh_rows.append([str(clients), f"{o['rps_off']:,.0f}", f"{o['rps_on']:,.0f}", f"{o['paired_ratio']:.3f}",
                         f"{o['cpu_us_off']:.0f}", f"{o['cpu_us_on']:.0f}", f"{o['cpu_us_on'] / o['cpu_us_off']:.3f}"])  # fmt: skip
    ovh_table = markdown_table(["clients", "req/s drift off", "req/s drift on", "median of paired ratios", "worker CPU µs/req off",
                                "on", "ratio"], ovh_rows)  # fmt: skip
    worst_tput = min(o["paired_ratio"] for o in ovh.values())
    body = f"""## Drift (`bench/drift.py`)

`.venv/bin/python bench/drift.py{" --quick" if args.quick else ""}` on {machine("datasketches", "scipy", "onnxruntime")}.
Defaults: KLL k=200, KS threshold {T.threshold}, PSI threshold {T.psi_threshold}, {T.min_samples} rows per scored
window (the smallest window the worker scores; every window here has exactly that many rows).

**False positives with no shift**: {det["false_positives"]} of {det["no_shift_windows"]} windows
({det["fp_rate"]:.1%}; goal ≤ 1 %).

**Detection delay** (windows from onset, {len(next(iter(det["delays"].values())))} runs per shift):

{delay_table}

**Sketch KS vs exact `scipy.stats.ks_2samp`** on the raw windows ({det["windows"]} windows, 65 statistics each):
decisions agree on {det["agreement"]:.2%} ({det["disagreements"]} disagreements; goal ≥ 99 %); the
statistic's error: mean {det["ks_error_mean"]:.4f}, p99 {det["ks_error_p99"]:.4f}, max {det["ks_error_max"]:.4f}
(bound 2 × 1.65 % = {det["bound"]:.4f}).

**Worker overhead** at the batching bench's load (64→128→10 MLP, raw JSON keep-alive clients; two workers
up at once, drift on (reference loaded, default settings) and off, {2 if args.quick else 10} rounds of
alternating bursts of {1.5 if args.quick else 2.0} s, medians):

{ovh_table}

The profiling work itself, timed in-process on the same model's real inputs and outputs (best of 5 ×
20,000 requests): **{observe_us:.1f} µs per request**, {observe_us / min(o["cpu_us_off"] for o in ovh.values()):.1%} of the worker's
CPU per request with drift off measured above (the least of the rows; goal ≤ 3 %). End to end, the worst
throughput ratio is {worst_tput:.3f}; this machine's 2 cores are shared with other agents' work while it
runs (load average {os.getloadavg()[0]:.1f} at the end), so the end-to-end rows carry that noise.

**Bytes upstream** at 1,000 requests/s of a 64-feature model (1 row each), {up["hours"]:g} h on a simulated clock:
{up["summaries"]} summaries ({up["summary_bytes"]:,} bytes of profiles), {up["sync_bytes"]:,} bytes of state
updates synced upstream against {up["raw_bytes"]:,} bytes of raw float32 inputs: **{up["ratio"]:.4%}** (goal ≤ 0.1 %).
"""
    write_section("drift", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
