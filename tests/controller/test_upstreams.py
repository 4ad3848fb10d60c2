"""A copy of a model changing tier re-queues only the peers whose render reads another upstream URL:
what :func:`workloads._read_upstreams` says a render reads must be all the renderer reads."""

from __future__ import annotations

import itertools

import pytest
from continuum.api.loader import load_manifests
from continuum.api.models import EdgeWorkload, Placement, Tier
from continuum.controller.workloads import _read_upstreams
from continuum.render.worker import RenderSettings, render_worker_manifests
from pydantic import ValidationError

from tests.conftest import EXAMPLES

MANIFESTS = load_manifests([EXAMPLES / "cluster", EXAMPLES / "workloads"])
POOL = MANIFESTS.pools[0]
TIERS = [t.value for t in Tier]


def variants(workload: EdgeWorkload) -> list[EdgeWorkload]:
    """The workload as written, with an offload tier, with state syncing to a tier, and with both."""
    meta = workload.metadata.model_copy(update={"uid": "1234"})
    raw = workload.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    offload = {"tier": "cloud", "timeoutMs": 200}
    state = {"enabled": True, "syncTo": "regional-mec"}
    out = []
    for extra in ({}, {"offload": offload}, {"state": state}, {"offload": offload, "state": state}):
        try:
            spec = type(workload.spec).model_validate({**raw, **extra})
        except ValidationError:  # e.g. offloading to the only tier it may run on
            continue
        out.append(workload.model_copy(update={"metadata": meta, "spec": spec}))
    return out


def rendered(workload: EdgeWorkload, upstreams: dict[str, str]) -> list[dict]:
    placement = Placement(pool=POOL.name, tier=POOL.spec.tier, site=POOL.spec.site, estimated_latency_ms=1)
    settings = RenderSettings(worker_image="w:1", upstreams=upstreams, state_token="t")
    return render_worker_manifests(workload, placement, POOL, settings)


@pytest.mark.parametrize("name", sorted(w.name for w in MANIFESTS.workloads))
def test_a_render_reads_no_upstream_but_those_noted(name):
    for workload in variants(next(w for w in MANIFESTS.workloads if w.name == name)):
        full = {t: f"http://{t}.example:8000" for t in TIERS}
        read = _read_upstreams(workload.spec, full)
        reference = rendered(workload, full)
        # every other tier missing or pointing elsewhere: the same objects
        subsets = itertools.chain.from_iterable(
            itertools.combinations(TIERS, k) for k in range(len(TIERS) + 1)
        )
        for kept in subsets:
            others = {t: f"http://elsewhere-{t}:1" for t in kept if t not in read}
            assert rendered(workload, {**others, **{t: u for t, u in read.items() if u}}) == reference
        # and each tier noted does change what is rendered
        for tier in read:
            assert rendered(workload, {**full, tier: "http://moved:1"}) != reference
