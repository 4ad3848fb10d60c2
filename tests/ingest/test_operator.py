"""spec.ingest on the EdgeWorkload: validation, the WAN charge, and the worker's configuration it renders."""

from __future__ import annotations

import pytest
from continuum.api.models import EdgeWorkload, EdgeWorkloadSpec, Placement
from continuum.placement import filters
from continuum.placement.snapshot import PoolView
from continuum.render.worker import RenderSettings, ingest_env, render_worker_manifests
from continuum_worker.ingest.uri import parse_endpoint
from continuum_worker.settings import WorkerSettings
from pydantic import ValidationError

from tests.render.test_render import POOLS

INGEST = {"broker": "mqtt://mosquitto.plant:1883", "topics": ["line/+/features", "line/#"],
          "publishTopic": "plant/results", "messagesPerSecond": 1000, "messageBytes": 1200}  # fmt: skip


def workload(replicas: int = 1, **ingest: object) -> EdgeWorkload:
    return EdgeWorkload.model_validate({
        "apiVersion": "continuum.dev/v1alpha1", "kind": "EdgeWorkload",
        "metadata": {"name": "camera-line", "namespace": "plant", "uid": "u1"},
        "spec": {"source": {"site": "plant-munich"}, "requirements": {"latencyBudgetMs": 50},
                 "model": {"name": "mlp", "uri": "https://models/mlp.onnx"}, "replicas": replicas,
                 "state": {"enabled": True}, "ingest": {**INGEST, **ingest}},
    })  # fmt: skip


def test_the_stream_rate_is_the_wan_charge() -> None:
    spec = workload().spec
    assert spec.ingest is not None and spec.ingest.mbps == pytest.approx(9.6)
    assert spec.requirements.bandwidth.ingest_mbps == pytest.approx(9.6)
    offsite = next(p for p in POOLS.values() if p.spec.site != "plant-munich")
    onsite = next(p for p in POOLS.values() if p.spec.site == "plant-munich")
    assert filters.wan_mbps(spec, PoolView(offsite, ())) == pytest.approx(9.6)
    assert filters.wan_mbps(spec, PoolView(onsite, ())) == 0.0
    # a larger declared ingestMbps stays (headroom); the charge is the larger of the two
    raw = workload().spec.dump()
    raw["requirements"]["bandwidth"] = {"ingestMbps": 50}
    assert EdgeWorkloadSpec.model_validate(raw).requirements.bandwidth.ingest_mbps == 50
    # the YAML form round-trips to the same charge
    assert EdgeWorkloadSpec.model_validate(spec.dump()) == spec


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"decoder": "raw"}, "needs ingest.dtype and ingest.shape"),
        ({"dtype": "FP32"}, "decoder raw only"),
        ({"input": "x"}, "decoder raw/npy"),
        ({"publishTopic": "r/#"}, "wildcards"),
        ({"broker": "tcp://b:1"}, "broker"),
        ({"topics": []}, "topics"),
    ],
)
def test_invalid_ingest_names_the_field(change: dict[str, object], text: str) -> None:
    with pytest.raises(ValidationError) as info:
        workload(**change)
    assert text in str(info.value)


def test_ingest_needs_the_state_volume() -> None:
    raw = workload().model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["spec"]["state"] = {"enabled": False}
    with pytest.raises(ValidationError, match=r"ingest needs state\.enabled"):
        EdgeWorkload.model_validate(raw)


def test_rendered_variables_are_what_the_worker_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    one = workload(decoder="raw", dtype="FP32", shape=[-1, 64], input="INPUT0")
    env = ingest_env(one)
    assert env["CONTINUUM_PUBLISH"] == "mqtt://mosquitto.plant:1883/plant/results"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = WorkerSettings(model_name="mlp", model_uri="/m.onnx")
    assert settings.ingest_filter == "all" and settings.event_threshold == 0.9
    assert settings.ingest_publish_after == "written"  # the spec's default is the worker's
    sources = [parse_endpoint(u, source=True) for u in settings.ingest]
    assert [(s.topic, s.decoder, s.dtype, s.shape, s.input) for s in sources] == [
        ("line/+/features", "raw", "FP32", (-1, 64), "INPUT0"),
        ("line/#", "raw", "FP32", (-1, 64), "INPUT0"),
    ]
    # several replicas share the topics (MQTT 5 shared subscription): each message goes to one of them
    many = ingest_env(workload(replicas=3, filter="events", eventThreshold=0.8, publishAfter="durable"))
    assert many["CONTINUUM_INGEST"].split() == [
        "mqtt://mosquitto.plant:1883/$share/camera-line/line/+/features",
        "mqtt://mosquitto.plant:1883/$share/camera-line/line/#",
    ]
    assert many["CONTINUUM_INGEST_FILTER"] == "events" and many["CONTINUUM_EVENT_THRESHOLD"] == "0.8"
    assert many["CONTINUUM_INGEST_PUBLISH_AFTER"] == "durable"
    pool = next(iter(POOLS.values()))
    placement = Placement(pool=pool.name, tier=pool.spec.tier, site=pool.spec.site, estimated_latency_ms=10)
    objs = render_worker_manifests(one, placement, pool, RenderSettings())
    sts = next(o for o in objs if o["kind"] == "StatefulSet")  # the outbox lives on the state volume
    names = {e["name"] for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"CONTINUUM_INGEST", "CONTINUUM_PUBLISH", "CONTINUUM_STATE_DIR", "CONTINUUM_REPLICA_ID"} <= names
