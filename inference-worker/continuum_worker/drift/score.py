"""The drift score: a window's profile against the reference profile (pure functions).

* every feature sketched on both sides (inputs and score outputs): the KS distance between the two
  sketches' CDFs (0 = same distribution, 1 = disjoint);
* every categorical output: the PSI of the class frequencies;
* the aggregate ``score`` is the largest KS distance; the window is **drifting** when it has at least
  ``min_samples`` profiled rows (the sketches' rows: a sampled window's rows seen do not count) and some feature's KS distance exceeds ``threshold`` or some output's PSI
  exceeds ``psi_threshold``. Below ``min_samples`` the report says ``"insufficient"`` and never
  drifting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from continuum_worker.drift import sketch as sk
from continuum_worker.drift.profile import Profile


@dataclass(frozen=True)
class Thresholds:
    threshold: float = 0.1
    psi_threshold: float = 0.2
    min_samples: int = 1000


def compare(window: Profile, reference: Profile, t: Thresholds) -> dict[str, Any]:
    """The drift report of ``window`` against ``reference`` (JSON-ready)."""
    window.flush()
    reference.flush()
    ks = {
        name: round(sk.ks_steps(window.steps(name), reference.steps(name)), 6)
        for name, s in sorted(window.sketches.items())
        if name in reference.sketches and not s.is_empty() and not reference.sketches[name].is_empty()
    }
    psi = {
        out: round(sk.psi(counts, reference.classes[out]), 6)
        for out, counts in sorted(window.classes.items())
        if out in reference.classes and sum(counts.values()) and sum(reference.classes[out].values())
    }
    missing = sorted(set(reference.sketches) - set(window.sketches))
    score = max(ks.values(), default=0.0)
    enough = window.rows >= t.min_samples
    over = sorted(n for n, d in ks.items() if d > t.threshold)
    over_psi = sorted(o for o, v in psi.items() if v > t.psi_threshold)
    drifting = enough and bool(over or over_psi)
    # the outputs alone (what a rollout's drift gate compares between two versions that see the same
    # inputs): the score features of the outputs, and the class outputs' PSI
    out_ks = [d for n, d in ks.items() if n in window.outputs]
    if not enough:
        status = "insufficient"
    elif not ks and not psi:
        status = "no-common-features"
    else:
        status = "drifting" if drifting else "ok"
    top = sorted(ks.items(), key=lambda kv: -kv[1])[:5]
    return {
        "status": status,
        "drifting": drifting,
        "score": round(score, 6),
        "samples": window.rows,
        "rows_seen": window.rows_seen,
        "sample_fraction": round(window.sample_fraction, 6),
        "min_samples": t.min_samples,
        "threshold": t.threshold,
        "psi_threshold": t.psi_threshold,
        "error_bound": round(sk.rank_error(window.k) + sk.rank_error(reference.k), 6),
        "start": window.start,
        "end": window.end,
        "drifting_features": over,
        "drifting_outputs": over_psi,
        "top_features": [{"feature": n, "ks": d} for n, d in top],
        "ks": ks,
        "psi": psi,
        "features_missing": missing,
        "output_score": max(out_ks) if out_ks else None,
        "output_psi": max(psi.values()) if psi else None,
        "output_drifting": enough and (any(d > t.threshold for d in out_ks) or bool(over_psi)),
    }
