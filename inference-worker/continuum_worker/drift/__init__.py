"""Model drift at the edge: mergeable KLL profiles per model version and window, a KS/PSI score
against a reference profile, and compact summaries recorded in the CRDT state (docs/drift.md)."""

from continuum_worker.drift.monitor import DriftConfig, DriftMonitor
from continuum_worker.drift.profile import Profile, load_reference
from continuum_worker.drift.score import Thresholds, compare

__all__ = ["DriftConfig", "DriftMonitor", "Profile", "Thresholds", "compare", "load_reference"]
