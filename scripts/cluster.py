#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback, without Docker: `make cluster` / `make cluster-down`.

etcd, kube-apiserver (RBAC, service-account tokens), kube-controller-manager and kube-scheduler are the
upstream programs, built from the Go modules pinned in scripts/cluster/go.mod; kwok simulates the kubelets
(nodes annotated ``kwok.x-k8s.io/node: fake`` stay Ready, their scheduled pods become Running without
containers). kwokctl drives the processes (runtime ``binary``).

Binaries are built once per machine into ``$CONTINUUM_CACHE_DIR`` (default ``~/.cache/continuum``), keyed by
their versions, and reused. Ready binaries are used instead of building when
  * ``CONTINUUM_K8S_BIN`` names a directory holding all of them, or
  * ``KUBEBUILDER_ASSETS`` (the envtest convention: ``setup-envtest use -p path``) holds some of them
    (envtest ships etcd, kube-apiserver and kubectl; the rest are still built).

Only the standard library: `make cluster` runs before any virtualenv exists.

    python3 scripts/cluster.py build           # ensure the binaries; prints their directory
    python3 scripts/cluster.py up [--name N]   # build if needed, start; last line: the admin kubeconfig
    python3 scripts/cluster.py down [--name N] # stop every process, remove the cluster's files
    python3 scripts/cluster.py status [--name N]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULE = HERE / "cluster"
KWOK_VERSION = "v0.8.0"  # sigs.k8s.io/kwok: kwok (the kubelet simulator) and kwokctl (the launcher)
DEFAULT_NAME = "continuum"
# Loopback only; fast node heartbeats and a 10 s node-monitor grace period (see the file).
KWOKCTL_CONFIG = MODULE / "kwokctl.yaml"
# kwok acts as the kubelet only of nodes carrying this annotation; any other node gets no heartbeat and
# the node lifecycle controller marks it NotReady (the cheap way to fail a node).
FAKE_NODE_SELECTOR = "kwok.x-k8s.io/node=fake"


def _module_version(module: str) -> str:
    match = re.search(rf"^\s*{re.escape(module)} (v\S+)", (MODULE / "go.mod").read_text(), re.M)
    if not match:
        raise SystemExit(f"scripts/cluster/go.mod does not pin {module}")
    return match.group(1)


K8S_VERSION = _module_version("k8s.io/kubernetes")
ETCD_VERSION = _module_version("go.etcd.io/etcd/server/v3")
KUBE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL = (*KUBE, "etcd", "kwok", "kwokctl")


def cache_dir() -> Path:
    return Path(os.environ.get("CONTINUUM_CACHE_DIR") or Path.home() / ".cache" / "continuum")


def bin_dir() -> Path:
    key = f"k8s-{K8S_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}"
    return cache_dir() / "cluster-bin" / key


def workdir() -> Path:
    return cache_dir() / "kwok"


def log(msg: str) -> None:
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build or start at a time per machine (CI and a developer's shell may race)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ldflags() -> str:
    major, minor = K8S_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    # kwokctl reads `kube-apiserver --version` to choose flags; without these the binaries say v0.0.0-master.
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={K8S_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def _go() -> str:
    go = shutil.which("go")
    if not go:
        raise SystemExit(
            "cluster: no Go toolchain on PATH. Either install Go >= 1.26, or point CONTINUUM_K8S_BIN at a "
            "directory with " + ", ".join(ALL) + " (kwok releases, and `setup-envtest use -p path` for "
            "etcd/kube-apiserver/kubectl via KUBEBUILDER_ASSETS)."
        )
    return go


def _run(cmd: list[str], **kw) -> None:
    env = {**os.environ, "CGO_ENABLED": "0", **kw.pop("env", {})}
    subprocess.run(cmd, check=True, env=env, **kw)


def _provided() -> dict[str, Path]:
    """Binaries the user already has (CONTINUUM_K8S_BIN wins over KUBEBUILDER_ASSETS)."""
    found: dict[str, Path] = {}
    for var in ("KUBEBUILDER_ASSETS", "CONTINUUM_K8S_BIN"):
        base = os.environ.get(var)
        if not base:
            continue
        for name in ALL:
            candidate = Path(base) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found[name] = candidate
    return found


def ensure_binaries() -> Path:
    """Return a directory holding every binary, building what is missing (minutes on a cold machine)."""
    out = bin_dir()
    provided = _provided()
    with _locked(cache_dir() / "build.lock"):
        out.mkdir(parents=True, exist_ok=True)
        for name, path in provided.items():
            target = out / name
            if not target.exists() or target.resolve() != path.resolve():
                target.unlink(missing_ok=True)
                target.symlink_to(path)
        missing_kube = [n for n in (*KUBE, "etcd") if not (out / n).exists()]
        if missing_kube:
            go = _go()
            log(f"building {', '.join(missing_kube)} ({K8S_VERSION}, etcd {ETCD_VERSION}) into {out}")
            log("a cold build downloads ~1 GB of modules and compiles for 10-25 min on 2 cores; later runs reuse it")
            start = time.monotonic()
            _run([go, "mod", "download"], cwd=MODULE)
            for name in missing_kube:
                pkg = "./etcd" if name == "etcd" else f"k8s.io/kubernetes/cmd/{name}"
                t0 = time.monotonic()
                _run([go, "build", "-trimpath", "-ldflags", _ldflags(), "-o", str(out / name), pkg], cwd=MODULE)
                log(f"  {name}: {time.monotonic() - t0:.0f} s")
            log(f"built in {time.monotonic() - start:.0f} s")
        missing_kwok = [n for n in ("kwok", "kwokctl") if not (out / n).exists()]
        if missing_kwok:
            go = _go()
            log(f"building {', '.join(missing_kwok)} {KWOK_VERSION}")
            pkgs = [f"sigs.k8s.io/kwok/cmd/{n}@{KWOK_VERSION}" for n in missing_kwok]
            _run([go, "install", "-trimpath", "-ldflags", "-s -w", *pkgs], env={"GOBIN": str(out)})
    for name in ALL:
        if not (out / name).exists():
            raise SystemExit(f"cluster: {name} missing from {out} after the build")
    return out


def _kwokctl(name: str, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
    bins = bin_dir()
    env = {
        **os.environ,
        "KWOK_WORKDIR": str(workdir()),
        "KWOK_KUBECTL_BINARY": str(bins / "kubectl"),
        "KWOK_KUBE_VERSION": K8S_VERSION,
    }
    cmd = [str(bins / "kwokctl"), "--name", name, "-v", os.environ.get("CONTINUUM_KWOKCTL_LOG", "WARN"), *args]
    return subprocess.run(
        cmd,
        env=env,
        check=check,
        text=True,
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=subprocess.PIPE if capture else sys.stderr,
    )


def kubeconfig_path(name: str) -> Path:
    return workdir() / "clusters" / name / "kubeconfig.yaml"


def is_up(name: str) -> bool:
    if not kubeconfig_path(name).exists() or not (bin_dir() / "kubectl").exists():
        return False
    probe = subprocess.run(
        [str(bin_dir() / "kubectl"), "--kubeconfig", str(kubeconfig_path(name)), "--request-timeout=3s",
         "get", "--raw", "/readyz"],
        capture_output=True, text=True, check=False,
    )
    return probe.returncode == 0 and probe.stdout.strip() == "ok"


def up(name: str, config: Path = KWOKCTL_CONFIG, *extra: str) -> Path:
    """Start cluster `name` (kwokctl settings from `config`, extra kwokctl flags appended); its kubeconfig."""
    bins = ensure_binaries()
    with _locked(cache_dir() / f"cluster-{name}.lock"):
        if is_up(name):
            log(f"cluster {name!r} already running")
            return kubeconfig_path(name)
        if (workdir() / "clusters" / name).exists():
            log(f"removing the stopped cluster {name!r} left behind")
            _kwokctl(name, "delete", "cluster", check=False)
        log(f"starting cluster {name!r}: etcd, kube-apiserver (RBAC), controller-manager, scheduler, kwok")
        t0 = time.monotonic()
        _kwokctl(
            name, "create", "cluster",
            "--runtime", "binary",
            "--kube-authorization",
            "--kubeconfig", "",
            "--wait", "3m",
            "--etcd-binary", str(bins / "etcd"),
            "--kube-apiserver-binary", str(bins / "kube-apiserver"),
            "--kube-controller-manager-binary", str(bins / "kube-controller-manager"),
            "--kube-scheduler-binary", str(bins / "kube-scheduler"),
            "--kwok-controller-binary", str(bins / "kwok"),
            "--config", str(config),
            # kube-apiserver's default Service range is a /24 (254 ClusterIPs); k3s gives 10.43.0.0/16. The
            # benchmark's 1,000 workloads (a Service each) ran out of addresses with the default.
            "--extra-args", "kube-apiserver=service-cluster-ip-range=10.43.0.0/16",
            "--extra-args", "kwok-controller=manage-all-nodes=false",
            "--extra-args", f"kwok-controller=manage-nodes-with-annotation-selector={FAKE_NODE_SELECTOR}",
            *extra,
        )
        log(f"cluster {name!r} up in {time.monotonic() - t0:.1f} s")
    return kubeconfig_path(name)


def down(name: str) -> None:
    if not (workdir() / "clusters" / name).exists():
        log(f"no cluster {name!r}")
        return
    if not (bin_dir() / "kwokctl").exists():
        raise SystemExit(f"cluster: kwokctl missing from {bin_dir()}; cannot stop {name!r}")
    _kwokctl(name, "delete", "cluster")
    deadline = time.monotonic() + 10
    while True:  # a killed process may linger a moment as a zombie before its parent reaps it
        leftover = subprocess.run(
            ["pgrep", "-f", f"{workdir() / 'clusters' / name}/"], capture_output=True, text=True, check=False
        ).stdout.split()
        if not leftover or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if leftover:
        raise SystemExit(f"cluster: processes still running after delete: {' '.join(leftover)}")
    log(f"cluster {name!r} stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("build", "up", "down", "status"))
    parser.add_argument("--name", default=os.environ.get("CONTINUUM_CLUSTER", DEFAULT_NAME))
    parser.add_argument("--config", type=Path, default=KWOKCTL_CONFIG, help="a KwokctlConfiguration file")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(ensure_binaries())
    elif args.command == "up":
        print(up(args.name, args.config))
    elif args.command == "down":
        down(args.name)
    else:
        running = is_up(args.name)
        print(kubeconfig_path(args.name) if running else f"cluster {args.name!r} is not running")
        return 0 if running else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
