"""`continuum plan` expands EdgeWorkloadSets as the operator does: the same children, the same placements."""

from __future__ import annotations

from pathlib import Path

import yaml
from continuum.api.loader import load_manifests
from continuum.api.models import EdgeWorkloadSpec
from continuum.cli import main
from continuum.plan import plan_document

from tests.conftest import EXAMPLES
from tests.operator.conftest import WORKLOADS, Harness, docs, wait_for

STORES = EXAMPLES / "fleets" / "store-chain"


def test_plan_places_every_store_of_the_chain_and_the_plants() -> None:
    doc = plan_document([str(STORES)])
    names = sorted(p.name for p in doc.placements)
    assert names == [
        "footfall-store-berlin-mitte",
        "footfall-store-hamburg",
        "footfall-store-lyon",
        "footfall-store-munich",
        "footfall-store-paris",
        "footfall-store-vienna",
    ]
    assert doc.summary.unschedulable == 0
    for placement in doc.placements:  # each store's footfall runs in that store
        assert placement.pool == placement.name.removeprefix("footfall-")
    flagship = next(w for w in load_manifests([STORES]).workloads if w.name == "footfall-store-berlin-mitte")
    assert flagship.spec.replicas == 2 and flagship.spec.requirements.bandwidth.ingest_mbps == 20
    plants = plan_document([str(EXAMPLES / "cluster"), str(EXAMPLES / "fleets" / "plants.yaml")])
    assert {(p.name, p.pool) for p in plants.placements} == {
        ("defect-inspection-plant-munich", "munich-line"),
        ("defect-inspection-plant-lyon", "lyon-line"),
    }


def test_plan_names_the_file_the_set_the_site_and_the_field(tmp_path: Path, capsys) -> None:
    sets = list(yaml.safe_load_all((STORES / "set.yaml").read_text()))
    sets[0]["spec"]["overrides"][0]["patch"]["requirements"]["latencyBudgetMs"] = 0
    (tmp_path / "set.yaml").write_text(yaml.safe_dump_all(sets))
    for name in ("nodes.yaml", "pools.yaml"):
        (tmp_path / name).write_text((STORES / name).read_text())
    assert main(["plan", "-f", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert (
        f"{tmp_path / 'set.yaml'}: document 1 (EdgeWorkloadSet retail/footfall): site store-berlin-mitte: "
        "spec.overrides[0].patch.requirements.latencyBudgetMs: Input should be greater than 0"
    ) in err


def test_plan_and_the_operator_make_the_same_children_and_placements(harness: Harness) -> None:
    planned = {w.name: w for w in load_manifests([STORES]).workloads}
    placements = {p.name: (p.tier, p.pool) for p in plan_document([str(STORES)]).placements}
    for file in ("nodes.yaml", "pools.yaml", "set.yaml"):
        for obj in docs(STORES / file):
            harness.apply(obj)
    harness.start_operator()

    def children() -> dict[str, dict]:
        return {w["metadata"]["name"]: w for w in harness.cluster.list(WORKLOADS, "retail")}

    def all_placed() -> bool:
        got = children()
        return set(got) == set(planned) and all(
            (w.get("status") or {}).get("phase") == "Placed" for w in got.values()
        )

    wait_for(all_placed, timeout=30, what="every child placed")
    for name, child in children().items():
        assert EdgeWorkloadSpec.model_validate(child["spec"]) == planned[name].spec, name
        placement = child["status"]["placement"]
        assert (placement["tier"], placement["pool"]) == placements[name], name
