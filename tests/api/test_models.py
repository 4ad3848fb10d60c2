import pytest
from continuum.api.loader import format_validation_error
from continuum.api.models import (
    LABEL_TIER,
    EdgeNodePool,
    EdgeWorkload,
    LabelSelector,
    Privacy,
    Taint,
    Tier,
    TierPreferences,
)
from pydantic import ValidationError


def pool(**spec):
    base = {"tier": "near-edge", "site": "plant-a", "nodeSelector": {"matchLabels": {"site": "plant-a"}}}
    return EdgeNodePool.model_validate({"metadata": {"name": "p"}, "spec": {**base, **spec}})


def workload(**spec):
    base = {
        "source": {"site": "plant-a"},
        "requirements": {"latencyBudgetMs": 20},
        "model": {"name": "m", "uri": "file:///m.onnx"},
    }
    return EdgeWorkload.model_validate(
        {"metadata": {"name": "w", "namespace": "ns"}, "spec": {**base, **spec}}
    )


def errors(exc: ValidationError) -> list[str]:
    return format_validation_error(exc)


def test_default_taints_and_privacy_by_tier():
    device = pool(tier="device").spec
    assert device.effective_taints == (Taint(key=LABEL_TIER, value="device", effect="NoSchedule"),)
    assert device.effective_taints is device.effective_taints  # made once per (frozen) spec
    assert pool(tier="near-edge").spec.effective_max_privacy is Privacy.RESTRICTED
    assert pool(tier="regional-mec").spec.effective_taints == ()
    assert pool(tier="regional-mec").spec.effective_max_privacy is Privacy.CONFIDENTIAL
    assert pool(tier="cloud").spec.effective_max_privacy is Privacy.INTERNAL
    assert pool(tier="device", taints=[]).spec.effective_taints == ()


def test_rtt_lookup_with_default_and_without_route():
    p = pool(network={"rttMs": {"plant-a": 2, "*": 30}})
    assert p.spec.network.rtt_from("plant-a") == 2
    assert p.spec.network.rtt_from("elsewhere") == 30
    assert pool(network={"rttMs": {"plant-a": 2}}).spec.network.rtt_from("elsewhere") is None


def test_empty_node_selector_is_rejected_with_field():
    with pytest.raises(ValidationError) as exc:
        pool(nodeSelector={})
    assert any(line.startswith("spec.nodeSelector") for line in errors(exc.value))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"requirements": {"latencyBudgetMs": 0}}, "spec.requirements.latencyBudgetMs"),
        ({"requirements": {"latencyBudgetMs": 5, "privacy": "secret"}}, "spec.requirements.privacy"),
        (
            {"requirements": {"latencyBudgetMs": 5, "resources": {"cpu": "lots"}}},
            "spec.requirements.resources.cpu",
        ),
        (
            {"requirements": {"latencyBudgetMs": 5, "inferenceMs": {"edge": 3}}},
            "spec.requirements.inferenceMs",
        ),
        ({"replicas": 0}, "spec.replicas"),
        ({"tiers": {"allowed": ["cloud"], "preferred": ["device"]}}, "spec.tiers"),
        ({"tierz": {}}, "spec.tierz"),
        ({"state": {"enabled": True, "size": "big"}}, "spec.state.size"),
        ({"offload": {"tier": "mars"}}, "spec.offload.tier"),
    ],
)
def test_invalid_workload_names_the_field(spec, field):
    with pytest.raises(ValidationError) as exc:
        workload(**spec)
    lines = errors(exc.value)
    assert any(line.startswith(field + ":") for line in lines), lines


def test_unknown_field_is_called_a_typo():
    with pytest.raises(ValidationError) as exc:
        workload(replica=3)
    assert "spec.replica: unknown field (typo?)" in errors(exc.value)


def test_quantities_accept_numbers_and_keep_the_string():
    w = workload(requirements={"latencyBudgetMs": 5, "resources": {"cpu": 2, "memory": "1.5Gi"}})
    res = w.spec.requirements.resources
    assert res.cpu == "2" and res.cpu_millis == 2000
    assert res.memory_bytes == 3 * 2**29


def test_tier_preference_rank():
    prefs = TierPreferences(preferred=[Tier.NEAR_EDGE, Tier.REGIONAL_MEC])
    assert prefs.rank(Tier.NEAR_EDGE) == 0
    assert prefs.rank(Tier.REGIONAL_MEC) == 1
    assert prefs.rank(Tier.CLOUD) == 2


def test_accelerator_matching():
    w = workload(requirements={"latencyBudgetMs": 5, "resources": {"accelerator": "coral-tpu"}})
    res = w.spec.requirements.resources
    assert res.accelerator_matches({"continuum.dev/accelerator": "coral-tpu"})
    assert not res.accelerator_matches({"continuum.dev/accelerator": "jetson"})
    w2 = workload(
        requirements={"latencyBudgetMs": 5, "resources": {"accelerator": "nvidia.com/gpu.product=Orin"}}
    )
    assert w2.spec.requirements.resources.accelerator_matches({"nvidia.com/gpu.product": "Orin"})


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
    ],
)
def test_label_selector(selector, labels, expected):
    assert LabelSelector.model_validate(selector).matches(labels) is expected


def test_label_selector_operator_values_consistency():
    with pytest.raises(ValidationError):
        LabelSelector.model_validate({"matchExpressions": [{"key": "a", "operator": "In"}]})
    with pytest.raises(ValidationError):
        LabelSelector.model_validate(
            {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}
        )


def test_spec_roundtrips_through_its_yaml_form():
    w = workload(
        tiers={"allowed": ["near-edge", "cloud"], "preferred": ["near-edge"]}, offload={"tier": "cloud"}
    )
    again = EdgeWorkload.model_validate({"metadata": {"name": "w", "namespace": "ns"}, "spec": w.spec.dump()})
    assert again.spec == w.spec
