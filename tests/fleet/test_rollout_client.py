"""The controller's HTTP side of rollouts, pure parts: parsing a worker's answer, the status patch."""

from __future__ import annotations

from continuum.controller.rollouts import RolloutClient, parse_histogram, parse_reading
from continuum.controller.workloadsets import deep_status_patch
from continuum.rollout.machine import Reading

ANSWER = {
    "model": "m",
    "stable": {"version": "4", "uri": "/m/4.onnx"},
    "candidate": {"version": "5", "uri": "/m/5.onnx"},
    "mode": "canary",
    "weight": 0.1,
    "generation": "uid/5/0/1",
    "instance": "3f9c2a1b7d6e4c0f",
    "versions": {
        "4": {
            "requests": 90,
            "errors": 1,
            "invalid": 2,
            "latency_seconds_buckets": [[0.001, 50], [0.01, 89], [10.0, 90], ["+Inf", 90]],
            "shadow_compared": 0,
            "shadow_disagreed": 0,
            "shadow_dropped": 0,
        },
        "5": {
            "requests": 10,
            "errors": 0,
            "latency_seconds_buckets": [[0.001, 9], ["+Inf", 10]],
            "shadow_compared": 7,
            "shadow_disagreed": 1,
        },
    },
}


def test_a_workers_answer_is_read_as_the_protocol_says() -> None:
    reading = parse_reading(ANSWER)
    assert isinstance(reading, Reading)
    assert (reading.mode, reading.generation, reading.instance) == ("canary", "uid/5/0/1", "3f9c2a1b7d6e4c0f")
    assert (reading.stable_version, reading.candidate_version, reading.weight) == ("4", "5", 0.1)
    stable, candidate = reading.versions["4"], reading.versions["5"]
    assert (stable.requests, stable.errors) == (90, 1)
    assert stable.latency.le == [0.001, 0.01, 10.0] and stable.latency.counts == [50, 89, 90]
    assert stable.latency.count == 90
    assert (candidate.shadow_compared, candidate.shadow_disagreed, candidate.latency.count) == (7, 1, 10)
    no_candidate = parse_reading({**ANSWER, "candidate": None, "mode": "stable"})
    assert isinstance(no_candidate, Reading) and no_candidate.candidate_version is None


def test_a_malformed_answer_is_a_reason_not_a_crash() -> None:
    assert parse_reading([1, 2]) == "malformed rollout answer: not an object"
    assert str(parse_reading({"generation": "g"})).startswith("malformed rollout answer: KeyError")
    bad = {**ANSWER, "versions": {"4": {"requests": "many"}}}
    assert str(parse_reading(bad)).startswith("malformed rollout answer: ValueError")
    assert parse_histogram(None).count == 0
    assert parse_histogram([[0.5, 3]]).count == 3  # no +Inf pair: the last count


def test_worker_urls_follow_the_probes_template() -> None:
    client = RolloutClient(
        "http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy"
    )
    url = client.url("footfall-store-lyon", "retail", 8000, "footfall-counter")
    assert url == (
        "http://127.0.0.1:8001/api/v1/namespaces/retail/services/footfall-store-lyon:8000/proxy"
        "/v2/models/footfall-counter/rollout"
    )


def test_the_status_patch_nulls_what_is_gone_at_every_depth() -> None:
    old = {"sites": 6, "rollout": {"phase": "Paused", "cause": "x", "waves": [{"name": "a"}]}, "message": "m"}
    new = {"sites": 6, "rollout": {"phase": "Progressing", "waves": [{"name": "a"}, {"name": "b"}]}}
    patch = deep_status_patch(old, new)
    assert patch == {
        "message": None,
        "rollout": {"cause": None, "phase": "Progressing", "waves": [{"name": "a"}, {"name": "b"}]},
    }


def test_a_workers_drift_view_is_read_per_version() -> None:
    from continuum.controller.rollouts import parse_drift_view
    from continuum.rollout.machine import VersionDrift

    view = {
        "model": "m",
        "version": "4",
        "versions": {
            "4": {"drifting": False, "score": 0.03, "status": "ok", "samples": 1200, "windows_closed": 7,
                  "output_score": 0.02, "output_psi": 0.01, "output_drifting": False},
            "5": {"drifting": True, "score": 0.41, "status": "drifting", "samples": 1100, "windows_closed": 3,
                  "output_score": 0.41, "output_psi": None, "output_drifting": True},
            "6": {"drifting": False, "score": None, "status": "open", "windows_closed": 0},  # an older worker
        },
    }  # fmt: skip
    parsed = parse_drift_view(view)
    assert isinstance(parsed, dict)
    assert parsed["4"] == VersionDrift("ok", 7, False, False, 0.02, 0.01)
    assert parsed["5"].outputs_drift and parsed["5"].describe() == "output KS 0.410"
    assert parsed["6"].output_drifting is None and not parsed["6"].outputs_drift
    assert parse_drift_view({"error": "drift profiling is off"}) == "drift: drift profiling is off"
    assert parse_drift_view([]) == "malformed drift answer: not an object"
    assert str(parse_drift_view({"versions": {"5": {"windows_closed": "x"}}})).startswith(
        "malformed drift answer: ValueError"
    )
