"""Pure manifest rendering for placed workloads (no Kubernetes client)."""

from continuum.render.worker import RenderSettings, render_worker_manifests, service_url, workload_labels

__all__ = ["RenderSettings", "render_worker_manifests", "service_url", "workload_labels"]
