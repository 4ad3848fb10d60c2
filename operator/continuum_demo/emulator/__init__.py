"""An apiserver-like Kubernetes API emulator over kmock, for ``continuum demo``, tests and benchmarks.

Not a Kubernetes: no schema validation, admission, RBAC or server-side apply (see docs/emulator.md).
"""

from continuum_demo.emulator.server import ApiEmulator, EmulatedCluster, kubeconfig_for
from continuum_demo.emulator.store import ApiError, Store

__all__ = ["ApiEmulator", "ApiError", "EmulatedCluster", "Store", "kubeconfig_for"]
