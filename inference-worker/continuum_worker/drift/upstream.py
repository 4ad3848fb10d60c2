"""Closed windows' summaries in the CRDT state: the only thing about inputs that leaves the site.

Each replica writes the compact binary profile (:meth:`Profile.to_bytes`) of every upload period into
the root map ``drift`` of the state document, key ``model \\x1f version \\x1f start-ms \\x1f replica``,
and keeps its newest ``retention`` entries per model version; entries of any replica older than
``horizon_seconds`` before the newest are removed too (a restarted worker is a new replica: its
predecessor's entries would otherwise stay forever). Deletions converge like every other update. The state's own sync carries them upstream; a replica that
receives several sites' entries merges them (:func:`fleet_profiles`) into one fleet-wide profile.

A site profiles a uniform sample of its rows (capped per second, :mod:`~continuum_worker.drift.monitor`),
so its summaries hold ``rows`` profiled of ``rows_seen`` answered. KLL sketches take no weights: the
merge weighs every summary by its **profiled** rows, not by the traffic behind them (two sites at or
above the cap weigh alike whatever their traffic). The fleet view says so (``weighted_by``) and gives
each replica's rows seen and profiled, so a reader can tell when the mix differs from the traffic's.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from pycrdt import Map

from continuum_worker.drift.profile import Profile

log = logging.getLogger("continuum.worker.drift")
SEP = "\x1f"
ROOT = "drift"


class SummarySink(Protocol):
    def record_summary(self, model: str, version: str, start: float, blob: bytes) -> bool: ...

    def summaries(self, model: str) -> list[tuple[str, str, float, bytes]]: ...


def _key(model: str, version: str, start: float, replica: str) -> str:
    return SEP.join((model, version, f"{int(start * 1000):013d}", replica))


class StateSink:
    """Writes into the worker's CRDT state (``StateHandle``): durable with group commit, synced upstream."""

    def __init__(self, handle: Any, retention: int = 96, horizon_seconds: float = 86_400.0) -> None:
        self.handle = handle
        self.retention = retention
        self.horizon_seconds = horizon_seconds

    @property
    def _map(self) -> Map:
        return self.handle.state.doc.get(ROOT, type=Map)

    def record_summary(self, model: str, version: str, start: float, blob: bytes) -> bool:
        if not self.handle.opened:
            return False
        replica = self.handle.state.replica
        m = self._map
        prefix = SEP.join((model, version)) + SEP
        with self.handle.state.doc.transaction():
            m[_key(model, version, start, replica)] = bytes(blob)
            mine = [k for k in m if k.startswith(prefix)]
            own = sorted(k for k in mine if k.endswith(SEP + replica))
            stale = set(own[: max(0, len(own) - self.retention)])
            horizon = int((start - self.horizon_seconds) * 1000)
            stale |= {k for k in mine if int(k.split(SEP)[2]) < horizon}
            for old in stale:
                del m[old]
        return True

    def summaries(self, model: str) -> list[tuple[str, str, float, bytes]]:
        if not self.handle.opened:
            return []
        return read_summaries(self._map, model)


def read_summaries(m: Map, model: str) -> list[tuple[str, str, float, bytes]]:
    """``(replica, version, start, blob)`` of every entry of ``model`` in the map."""
    out = []
    for key in sorted(m.keys()):
        parts = key.split(SEP)
        if len(parts) != 4 or parts[0] != model:
            continue
        out.append((parts[3], parts[1], int(parts[2]) / 1000, bytes(m[key])))
    return out


def fleet_profiles(
    entries: list[tuple[str, str, float, bytes]],
) -> tuple[dict[str, Profile], dict[str, dict[str, Any]]]:
    """Merge every site's summaries per version: ``({version: merged profile}, {version: {replicas,
    windows, bytes, sites: {replica: {rows, rows_seen}}, weighted_by}})``. The merged sketches weigh
    each summary by its profiled rows (``weighted_by``); ``sites`` gives what each replica saw and
    profiled. Entries that do not decode are skipped and logged."""
    merged: dict[str, Profile] = {}
    info: dict[str, dict[str, Any]] = {}
    for replica, version, _start, blob in entries:
        try:
            p = Profile.from_bytes(blob)
        except ValueError as exc:
            log.warning("drift summary from replica %s skipped: %s", replica, exc)
            continue
        if version in merged:
            merged[version].merge(p)
        else:
            merged[version] = p
        i = info.setdefault(
            version,
            {"replicas": set(), "windows": 0, "bytes": 0, "sites": {}, "weighted_by": "profiled rows"},
        )
        i["replicas"].add(replica)
        i["windows"] += 1
        i["bytes"] += len(blob)
        site = i["sites"].setdefault(replica, {"rows": 0, "rows_seen": 0})
        site["rows"] += p.rows
        site["rows_seen"] += p.rows_seen
    return merged, {v: {**i, "replicas": sorted(i["replicas"])} for v, i in info.items()}
