"""CRDT-backed local state for the worker: typed state on pycrdt, a durable SQLite store, compaction and sync.

See docs/state.md. ``continuum_worker.state.worker_integration.attach`` wires it into the worker's app.
"""

from .doc import RejectedUpdate, StateDoc
from .hlc import HLC
from .store import Recovery, Store, StoreError, StoreLockedError, StoreWriteError
from .worker_integration import StateHandle, StateSettings, attach

__all__ = [
    "HLC",
    "Recovery",
    "RejectedUpdate",
    "StateDoc",
    "StateHandle",
    "StateSettings",
    "Store",
    "StoreError",
    "StoreLockedError",
    "StoreWriteError",
    "attach",
]
