"""Typed state on one pycrdt document: PN counters, bounded event logs and last-writer-wins registers.

Layout (root types only: two replicas creating the same nested shared type concurrently would lose one
of them, root types are merged by name):

* ``counters`` (Map): key ``name \\x1f replica`` → JSON ``{"p", "n", "c", "min", "max"}``. Every replica
  writes only its own slot, so no concurrent increment is lost; the value is the sum over slots.
* ``events/<log>`` (Map): key ``<wall ms>.<logical>.<replica>`` (sorts by hybrid logical clock) → JSON
  event. The view is the newest ``retention`` entries by that key; a replica trims older ones when it
  appends, so every replica shows the same list once synced.
* ``registers`` (Map): key ``name \\x1f replica`` → JSON ``{"v", "t": [wall ms, logical]}``. The value is
  the slot with the greatest (HLC, replica); a write stamps after every slot it has seen and removes them.

Values are stored as JSON strings: pycrdt returns numbers as floats, JSON keeps ints exact.
A replica id is a fresh random client id for every process start (reusing one after losing unsynced
writes corrupts merges).
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
from collections.abc import Callable, Iterator
from typing import Any

from pycrdt import Doc, Map

from .framing import EMPTY_UPDATE, FrameError, decode_state_vector
from .hlc import HLC, Stamp

SEP = "\x1f"
MAX_NAME = 200


class RejectedUpdate(ValueError):
    """An update from outside that the document refused; the document is unchanged."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
        raise ValueError(f"invalid name {name!r}: 1..{MAX_NAME} printable characters")
    return name


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not finite")
    return value


def new_client_id() -> int:
    return secrets.randbits(52) + 1


class StateDoc:
    def __init__(self, retention: int = 1000, client_id: int | None = None, hlc: HLC | None = None) -> None:
        if retention < 1:
            raise ValueError("retention must be >= 1")
        self.retention = retention
        self.doc: Doc = Doc(client_id=client_id if client_id is not None else new_client_id())
        self.replica = format(self.doc.client_id, "x")
        self.hlc = hlc or HLC()
        self.counters: Map = self.doc.get("counters", type=Map)
        self.registers: Map = self.doc.get("registers", type=Map)
        self._logs: dict[str, Map] = {}
        self._listeners: list[Callable[[bytes], None]] = []
        self._muted = False
        self.applying_remote = False
        self._sub = self.doc.observe(self._on_transaction)

    # -- updates out -------------------------------------------------------------------------------
    def on_update(self, callback: Callable[[bytes], None]) -> None:
        """``callback(update)`` after every transaction that changed the document (local or remote)."""
        self._listeners.append(callback)

    def _on_transaction(self, event: Any) -> None:
        update = event.update
        if self._muted or update == EMPTY_UPDATE:
            return
        for callback in self._listeners:
            callback(update)

    # -- typed writes ------------------------------------------------------------------------------
    def increment(self, name: str, by: int | float = 1) -> None:
        check_name(name)
        by = _number(by)
        key = name + SEP + self.replica
        raw = self.counters.get(key)
        slot = json.loads(raw) if raw else {"p": 0, "n": 0, "c": 0, "min": by, "max": by}
        if by >= 0:
            slot["p"] += by
        else:
            slot["n"] -= by
        slot["c"] += 1
        slot["min"], slot["max"] = min(slot["min"], by), max(slot["max"], by)
        self.counters[key] = json.dumps(slot, separators=(",", ":"))

    def increment_many(self, amounts: dict[str, int | float]) -> None:
        """Several counters in one transaction (one update)."""
        with self.doc.transaction():
            for name, by in amounts.items():
                self.increment(name, by)

    def _log(self, name: str) -> Map:
        log = self._logs.get(name)
        if log is None:
            log = self._logs[name] = self.doc.get("events/" + name, type=Map)
        return log

    def append_event(self, log_name: str, event: Any) -> str:
        check_name(log_name)
        data = json.dumps(event, separators=(",", ":"), allow_nan=False)
        log = self._log(log_name)
        wall, logical = self.hlc.now()
        key = f"{wall:013d}.{logical:06d}.{self.replica}"
        with self.doc.transaction():
            log[key] = data
            if len(log) > self.retention + max(16, self.retention // 4):
                for old in sorted(log.keys())[: len(log) - self.retention]:
                    del log[old]
        return key

    def append_events(self, log_name: str, events: list[Any]) -> None:
        with self.doc.transaction():
            for event in events:
                self.append_event(log_name, event)

    def set_register(self, name: str, value: Any) -> Stamp:
        check_name(name)
        data = json.dumps(value, separators=(",", ":"), allow_nan=False)
        prefix = name + SEP
        seen = [(k, json.loads(v)) for k, v in self.registers.items() if k.startswith(prefix)]
        latest = max(((int(s["t"][0]), int(s["t"][1])) for _, s in seen), default=None)
        stamp = self.hlc.now(latest)
        with self.doc.transaction():
            for key, _ in seen:  # dominated by the new stamp: drop them
                del self.registers[key]
            self.registers[prefix + self.replica] = json.dumps({"v": json.loads(data), "t": list(stamp)})
        return stamp

    # -- reads -------------------------------------------------------------------------------------
    def counter(self, name: str) -> dict[str, int | float | None]:
        agg = self._counters_view(only=name).get(name, {"value": 0, "count": 0, "min": None, "max": None})
        agg.pop("replicas", None)
        return agg

    def _counters_view(self, only: str | None = None) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for key in sorted(self.counters.keys()):  # sorted: every replica adds floats in the same order
            name, _, _replica = key.rpartition(SEP)
            if only is not None and name != only:
                continue
            slot = json.loads(self.counters[key])
            agg = out.setdefault(name, {"value": 0, "count": 0, "min": None, "max": None, "replicas": 0})
            agg["value"] += slot["p"] - slot["n"]
            agg["count"] += slot["c"]
            agg["min"] = slot["min"] if agg["min"] is None else min(agg["min"], slot["min"])
            agg["max"] = slot["max"] if agg["max"] is None else max(agg["max"], slot["max"])
            agg["replicas"] += 1
        return out

    def events(self, log_name: str) -> list[dict[str, Any]]:
        log = (
            self.doc.get("events/" + log_name, type=Map)
            if log_name not in self._logs
            else self._logs[log_name]
        )
        keys = sorted(log.keys())[-self.retention :]
        out = []
        for key in keys:
            wall, _logical, replica = key.split(".", 2)
            out.append({"time": int(wall) / 1000, "replica": replica, "event": json.loads(log[key])})
        return out

    def log_names(self) -> list[str]:
        return sorted(k[len("events/") :] for k in self.doc if k.startswith("events/"))

    def register(self, name: str, default: Any = None) -> Any:
        best = self._registers_view().get(name)
        return default if best is None else best

    def _registers_view(self) -> dict[str, Any]:
        best: dict[str, tuple[tuple[int, int, str], Any]] = {}
        for key, raw in self.registers.items():
            name, _, replica = key.rpartition(SEP)
            slot = json.loads(raw)
            rank = (int(slot["t"][0]), int(slot["t"][1]), replica)
            if name not in best or rank > best[name][0]:
                best[name] = (rank, slot["v"])
        return {name: value for name, (_, value) in sorted(best.items())}

    def to_json(self) -> dict[str, Any]:
        counters = self._counters_view()
        for agg in counters.values():
            agg.pop("replicas", None)
        return {
            "counters": counters,
            "events": {name: self.events(name) for name in self.log_names()},
            "registers": self._registers_view(),
        }

    def observe_clock(self) -> None:
        """Move the HLC past every stamp in the document (after a restart or a merge)."""
        for raw in self.registers.values():
            t = json.loads(raw)["t"]
            self.hlc.observe((int(t[0]), int(t[1])))
        for name in self.log_names():
            keys = self._log(name).keys()
            if keys:
                wall, logical, _ = max(keys).split(".", 2)
                self.hlc.observe((int(wall), int(logical)))

    # -- sync --------------------------------------------------------------------------------------
    def state_vector(self) -> bytes:
        return self.doc.get_state()

    def diff(self, state_vector: bytes | None = None) -> bytes:
        return self.doc.get_update(state_vector) if state_vector is not None else self.doc.get_update()

    def load(self, update: bytes) -> None:
        """Apply a stored update during recovery (no listeners fire: it is already on disk)."""
        muted, self._muted = self._muted, True
        try:
            _apply(self.doc, update)
        finally:
            self._muted = muted

    @contextlib.contextmanager
    def bulk_load(self) -> Iterator[None]:
        """Recovery in one transaction (about 40% faster for 100k updates); listeners stay silent."""
        muted, self._muted = self._muted, True
        try:
            with self.doc.transaction():
                yield
        finally:
            self._muted = muted

    def apply_remote(self, update: bytes) -> None:
        """Validate and apply an update from another replica; RejectedUpdate leaves the document unchanged.

        Refused: bytes that do not parse as an update, and any update claiming operations of this replica's
        client id beyond what this replica has written (they would collide with its next writes).
        """
        try:
            from pycrdt import get_state

            claimed = decode_state_vector(_guard(get_state, update))
        except (FrameError, RejectedUpdate, ValueError) as exc:
            raise RejectedUpdate(f"not a valid update: {exc}") from exc
        own = decode_state_vector(self.doc.get_state()).get(self.doc.client_id, 0)
        if claimed.get(self.doc.client_id, 0) > own:
            raise RejectedUpdate("update carries operations under this replica's client id")
        self.applying_remote = True
        try:
            _apply(self.doc, update)
        finally:
            self.applying_remote = False


def _guard(fn: Callable[[bytes], Any], data: bytes) -> Any:
    """Call into pycrdt with untrusted bytes: pyo3 panics are BaseException, turn them into RejectedUpdate."""
    try:
        return fn(data)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise RejectedUpdate(f"{type(exc).__name__}: {exc}") from None


def _apply(doc: Doc, update: bytes) -> None:
    _guard(doc.apply_update, update)
