"""Whether a rendered manifest would change anything, against what a real apiserver reads back."""

from __future__ import annotations

from continuum.controller.diff import contains, unchanged


def deployment(**template_spec: object) -> dict:
    return {
        "metadata": {"name": "w", "labels": {"continuum.dev/workload": "w"}},
        "spec": {
            "replicas": 1,
            "template": {"spec": {"nodeSelector": {"continuum.dev/pool": "p"}, **template_spec}},
        },
    }


def test_empty_lists_and_maps_read_back_absent():
    """kube-apiserver drops `tolerations: []` (omitempty). Treating that as a change re-patched every Deployment
    of an untainted pool on every resync on a real cluster (found by tests/cluster/test_differential.py)."""
    rendered = deployment(tolerations=[], nodeSelector={"continuum.dev/pool": "p"})
    live = deployment()
    live["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"  # a server default
    assert unchanged(live, rendered)
    assert contains(None, {}) and contains(None, [])


def test_real_changes_still_count():
    rendered = deployment(
        tolerations=[{"key": "continuum.dev/tier", "operator": "Equal", "value": "near-edge"}]
    )
    assert not unchanged(deployment(), rendered)
    assert not unchanged(deployment(tolerations=[]), deployment(nodeSelector={"continuum.dev/pool": "q"}))
    assert not contains(None, [1]) and not contains([], [1])
