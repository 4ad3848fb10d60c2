"""The two images: pinned base, multi-stage, non-root, only their own extra, entrypoints that exist."""

from __future__ import annotations

import importlib
import re
import tomllib

import pytest
from continuum.api.models import Placement
from continuum.render.worker import RenderSettings, render_worker_manifests

from tests.conftest import ROOT
from tests.render.test_render import POOLS, WORKLOADS, with_uid

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGES = {
    "operator": (ROOT / "operator" / "Dockerfile", "operator", "continuum"),
    "worker": (ROOT / "inference-worker" / "Dockerfile", "worker", "continuum-worker"),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_is_pinned_multi_stage_non_root(name: str) -> None:
    path, extra, script = IMAGES[name]
    text = path.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert len(re.findall(r"^FROM ", text, re.M)) == 2, "build and runtime stages"
    assert f"pip install '.[{extra}]'" in text
    other = {"operator": "worker", "worker": "operator"}[extra]
    assert f".[{other}]" not in text and ".[dev]" not in text
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[-1]), "a numeric non-root user"
    entry = re.search(r'^ENTRYPOINT \["([^"]+)"', text, re.M)
    assert entry and entry.group(1) == script and script in PYPROJECT["project"]["scripts"]
    ignore = path.with_name("Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[1:2] == ["*"] or "*" in ignore, "the context is an allow-list"
    # the build's smoke test imports the runtime (an image once installed fine and died at import), the same
    # modules tests/install/test_extras.py imports from a clean venv of that extra alone
    smoke = re.search(r'python -c "import ([^"]+)"', text)
    assert smoke and f"{script} {'run' if extra == 'operator' else 'serve'} --help" in text
    for module in smoke.group(1).split(", "):
        importlib.import_module(module)


def test_worker_image_user_matches_the_rendered_pods() -> None:
    workload = with_uid(WORKLOADS["line-defect-inspection"])
    pool = POOLS["munich-line"]
    placement = Placement(pool=pool.name, tier=pool.spec.tier, site=pool.spec.site, estimated_latency_ms=1)
    sts = next(
        o
        for o in render_worker_manifests(workload, placement, pool, RenderSettings())
        if o["kind"] == "StatefulSet"
    )
    pod = sts["spec"]["template"]["spec"]
    uid = pod["securityContext"]["runAsUser"]
    text = IMAGES["worker"][0].read_text()
    assert f"USER {uid}:{uid}" in text
    assert pod["containers"][0]["args"] == ["serve"] and 'ENTRYPOINT ["continuum-worker"]' in text
