"""build_snapshot's selector index gives the same membership and conflicts as checking every pair."""

from __future__ import annotations

from continuum.api.models import EdgeNodePool
from continuum.placement import build_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

KEYS = ["site", "role", "zone"]
VALUES = ["a", "b", "c"]
label_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)
expressions = st.lists(
    st.one_of(
        st.builds(
            lambda k, v: {"key": k, "operator": "In", "values": v},
            st.sampled_from(KEYS),
            st.lists(st.sampled_from(VALUES), min_size=1, max_size=2),
        ),
        st.builds(lambda k: {"key": k, "operator": "Exists"}, st.sampled_from(KEYS)),
        st.builds(lambda k: {"key": k, "operator": "DoesNotExist"}, st.sampled_from(KEYS)),
    ),
    max_size=2,
)
selectors = st.tuples(label_sets, expressions).filter(lambda s: s[0] or s[1])


@settings(max_examples=200, deadline=None)
@given(st.lists(selectors, min_size=1, max_size=6), st.lists(label_sets, max_size=8))
def test_membership_equals_brute_force(sels, node_labels):
    pools = [
        EdgeNodePool.model_validate(
            {
                "metadata": {"name": f"p{i}"},
                "spec": {
                    "tier": "cloud",
                    "site": "x",
                    "nodeSelector": {"matchLabels": ml, "matchExpressions": ex},
                },
            }
        )
        for i, (ml, ex) in enumerate(sels)
    ]
    nodes = [
        {
            "metadata": {"name": f"n{i}", "labels": lbl},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
        for i, lbl in enumerate(node_labels)
    ]
    snap = build_snapshot(pools, nodes)
    for i, lbl in enumerate(node_labels):
        matching = sorted(p.metadata.name for p in pools if p.spec.node_selector.matches(lbl))
        members = [view.name for view in snap.pools if any(n.name == f"n{i}" for n in view.nodes)]
        if len(matching) > 1:
            assert snap.conflicts[f"n{i}"] == tuple(matching) and members == []
        else:
            assert f"n{i}" not in snap.conflicts and members == matching
