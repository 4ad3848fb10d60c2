"""Durable store for one CRDT document on the state volume: SQLite in WAL mode with ``synchronous=FULL``.

* ``log(seq, rec)``: one framed record (length + CRC32 over seq and payload) per Yjs update, appended in
  sequence order by one writer thread. ``submit`` never blocks on disk; ``wait``/``wait_async`` return
  once the record's transaction has committed (group commit: records arriving within ``commit_window``
  seconds share one fsync).
* ``snapshot(covered_seq, rec)``: the two newest full-state snapshots. A compaction inserts a snapshot
  covering everything up to ``covered_seq`` and, in the same transaction, drops the log up to the
  *previous* snapshot and every older snapshot, so a corrupt newest snapshot falls back to the one before it
  plus the log after it.
* ``meta(key, value)``: small facts such as the sequence number the upstream has acknowledged.

Recovery applies the newest intact snapshot and then the log in sequence order; at the first record
that is missing, fails its checksum or is refused by the document it cuts the log back (deletes that
record and every later one) instead of failing. A database SQLite cannot read is moved aside and
salvaged record by record. A ``LOCK`` file held with ``flock`` keeps a second process (or a second
store in this one) off the volume. Write errors (disk full, I/O) fail the waiting writes and are
retried with backoff: records are never dropped, so the log has no holes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .framing import FrameError, frame_record, unframe_record

DB_NAME = "state.db"
LOCK_NAME = "LOCK"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, rec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot (covered_seq INTEGER PRIMARY KEY, rec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class StoreError(RuntimeError):
    pass


class StoreLockedError(StoreError):
    """Another process (or store) holds the volume."""


class StoreWriteError(StoreError):
    """A write did not become durable (disk full, I/O error, store closed)."""


@dataclass
class Recovery:
    snapshot_seq: int = 0
    snapshot_fallback: bool = False
    records: int = 0
    dropped: int = 0
    salvaged: bool = False
    damage: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Job:
    kind: str  # "snapshot" | "meta"
    seq: int
    data: bytes = b""
    key: str = ""
    value: int = 0
    cum_bytes: int = 0


class Store:
    def __init__(
        self,
        directory: str | Path,
        *,
        commit_window: float = 0.0,
        max_batch: int = 20000,
        synchronous: str = "FULL",
        on_commit: Callable[[int, int, float], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DB_NAME
        self.commit_window = commit_window
        self.max_batch = max_batch
        self.synchronous = synchronous
        self.on_commit = on_commit  # (records, bytes, seconds) after every commit, on the writer thread
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._cv = threading.Condition()
        self._commit_lock = threading.Lock()  # held around every commit; see append()
        self._pending: list[tuple[int, bytes] | _Job] = []
        self._retry: list[tuple[int, bytes] | _Job] = []
        self._last_seq = 0
        self._durable_seq = 0
        self._failed_upto = 0  # waiters up to this seq got the last error
        self._error: BaseException | None = None
        self._closing = False
        self._queued = 0  # items ever queued (records and jobs)
        self._done = 0  # items ever committed
        self._thread: threading.Thread | None = None
        self._waiters: dict[asyncio.AbstractEventLoop, list[tuple[int, asyncio.Future[None]]]] = {}
        self.meta: dict[str, int] = {}
        # byte accounting: cumulative record bytes, and where the two newest snapshots cut
        self._cum_bytes = 0
        self._cum_at_cover = 0
        self._cum_at_prev_cover = 0
        self._snapshot_seqs: list[int] = []
        self.snapshot_bytes = 0
        self.compactions = 0
        self.commits = 0
        self.recovery = Recovery()

    # -- opening and recovery ----------------------------------------------------------------------
    def open(self, apply: Callable[[bytes], None]) -> Recovery:
        """Lock the volume, replay snapshot and log through ``apply`` and start the writer thread.

        ``apply`` raises when it refuses an update; the log is cut back at that record.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock()
        started = time.perf_counter()
        try:
            try:
                report = self._recover(apply)
            except sqlite3.DatabaseError as exc:
                self._close_conn()
                salvage = self._salvage(str(exc))
                report = self._recover(apply)
                report.salvaged = True
                report.damage = salvage + report.damage
        except BaseException:
            self._close_conn()
            self._unlock()
            raise
        report.seconds = time.perf_counter() - started
        self.recovery = report
        self._thread = threading.Thread(
            target=self._writer, name=f"state-store-{self.directory.name}", daemon=True
        )
        self._thread.start()
        return report

    def _lock(self) -> None:
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreLockedError(f"{self.directory} is in use by another writer") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _connect(self, path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.executescript(_SCHEMA)
        return conn

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _recover(self, apply: Callable[[bytes], None]) -> Recovery:
        report = Recovery()
        conn = self._conn = self._connect(self.path)
        self.meta = {k: int(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        snapshots = conn.execute("SELECT covered_seq, rec FROM snapshot ORDER BY covered_seq DESC").fetchall()
        self._snapshot_seqs = sorted(seq for seq, _ in snapshots)
        base = 0
        for index, (covered, blob) in enumerate(snapshots):
            try:
                apply(unframe_record(covered, blob))
            except FrameError as exc:
                report.damage.append(f"snapshot {covered}: {exc}")
                continue
            except Exception as exc:  # the document refused it
                report.damage.append(f"snapshot {covered}: refused: {exc}")
                continue
            base, report.snapshot_seq, report.snapshot_fallback = covered, covered, index > 0
            self.snapshot_bytes = len(blob)
            break
        else:
            if snapshots:
                report.damage.append("no intact snapshot; replaying the log alone")
        expected = base + 1
        cut: int | None = None
        if not snapshots:
            first = conn.execute("SELECT MIN(seq) FROM log").fetchone()[0]
            expected = first if first is not None else 1
        for seq, blob in conn.execute("SELECT seq, rec FROM log WHERE seq > ? ORDER BY seq", (base,)):
            if seq != expected:
                report.damage.append(f"log gap: expected record {expected}, found {seq}")
                cut = expected
                break
            try:
                apply(unframe_record(seq, blob))
            except FrameError as exc:
                report.damage.append(str(exc))
                cut = seq
                break
            except Exception as exc:
                report.damage.append(f"record {seq} refused: {exc}")
                cut = seq
                break
            report.records += 1
            expected = seq + 1
        if cut is not None:
            conn.execute("BEGIN IMMEDIATE")
            report.dropped = conn.execute("DELETE FROM log WHERE seq >= ?", (cut,)).rowcount
            conn.execute("COMMIT")
        last = conn.execute("SELECT MAX(seq) FROM log").fetchone()[0] or 0
        self._last_seq = self._durable_seq = max(last, base, max(self._snapshot_seqs, default=0))
        covered = self._snapshot_seqs[-1] if self._snapshot_seqs else 0
        below = conn.execute(
            "SELECT COALESCE(SUM(length(rec)), 0) FROM log WHERE seq <= ?", (covered,)
        ).fetchone()[0]
        above = conn.execute(
            "SELECT COALESCE(SUM(length(rec)), 0) FROM log WHERE seq > ?", (covered,)
        ).fetchone()[0]
        self._cum_at_prev_cover, self._cum_at_cover, self._cum_bytes = 0, below, below + above
        return report

    def _salvage(self, reason: str) -> list[str]:
        """Move an unreadable database aside and rebuild it from what can still be read, in order."""
        notes = [f"database unreadable ({reason}); salvaging"]
        aside = self.directory / f"corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        aside.mkdir(exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            src = self.directory / (DB_NAME + suffix)
            if src.exists():
                src.rename(aside / (DB_NAME + suffix))
        snapshots: list[tuple[int, bytes]] = []
        records: list[tuple[int, bytes]] = []
        try:
            old = sqlite3.connect(aside / DB_NAME, isolation_level=None)
        except sqlite3.Error as exc:
            notes.append(f"cannot open the old database: {exc}")
            old = None
        if old is not None:
            try:
                with contextlib.suppress(sqlite3.Error):
                    for covered, blob in old.execute(
                        "SELECT covered_seq, rec FROM snapshot ORDER BY covered_seq"
                    ):
                        with contextlib.suppress(FrameError):
                            unframe_record(covered, blob)
                            snapshots.append((covered, blob))
                start = 1
                with contextlib.suppress(sqlite3.Error):
                    first = old.execute("SELECT MIN(seq) FROM log").fetchone()[0]
                    start = first if first is not None else 1
                seq = start
                while True:
                    try:
                        row = old.execute("SELECT rec FROM log WHERE seq = ?", (seq,)).fetchone()
                    except sqlite3.Error as exc:
                        notes.append(f"log unreadable from record {seq}: {exc}")
                        break
                    if row is None:
                        break
                    records.append((seq, row[0]))
                    seq += 1
            finally:
                old.close()
        conn = self._connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO snapshot VALUES (?, ?)", snapshots)
            conn.executemany("INSERT INTO log VALUES (?, ?)", records)
            conn.execute("COMMIT")
        finally:
            conn.close()
        notes.append(
            f"salvaged {len(snapshots)} snapshot(s) and {len(records)} record(s); old files in {aside.name}"
        )
        return notes

    # -- writing -------------------------------------------------------------------------------------
    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def log_bytes(self) -> int:
        """Bytes of log records on disk (those after the older of the two snapshots)."""
        return self._cum_bytes - self._cum_at_prev_cover

    @property
    def uncompacted_bytes(self) -> int:
        """Bytes of log records the newest snapshot does not cover: what the next compaction folds in."""
        return self._cum_bytes - self._cum_at_cover

    def submit(self, payload: bytes) -> int:
        """Queue one update; returns its sequence number at once (durable after ``wait``)."""
        with self._cv:
            self._check_open()
            self._last_seq += 1
            seq = self._last_seq
            rec = frame_record(seq, payload)
            self._cum_bytes += len(rec)
            self._pending.append((seq, rec))
            self._queued += 1
            if len(self._pending) == 1 or len(self._pending) >= self.max_batch:
                self._cv.notify_all()
            return seq

    def submit_snapshot(self, snapshot: bytes, covered_seq: int | None = None) -> int:
        """Queue a compaction: ``snapshot`` holds every update up to ``covered_seq`` (default: all queued)."""
        with self._cv:
            self._check_open()
            covered = self._last_seq if covered_seq is None else covered_seq
            if covered > self._last_seq or (self._snapshot_seqs and covered <= self._snapshot_seqs[-1]):
                raise ValueError(f"snapshot covering {covered} does not advance the log")
            self._pending.append(
                _Job("snapshot", covered, frame_record(covered, snapshot), cum_bytes=self._cum_bytes)
            )
            self._queued += 1
            self._cv.notify_all()
            return covered

    def set_meta(self, key: str, value: int) -> int:
        """Queue a durable meta write; returns the sequence number to wait for."""
        with self._cv:
            self._check_open()
            self.meta[key] = value
            self._pending.append(_Job("meta", self._last_seq, key=key, value=value))
            self._queued += 1
            self._cv.notify_all()
            return self._last_seq

    def append(self, payload: bytes, timeout: float | None = None) -> int:
        """Write one update and return once it is durable (one commit per call when nothing else is queued).

        Fast path: when nothing is queued, the caller commits the record itself instead of handing it to
        the writer thread and waiting to be woken (two thread switches, about half the time of a commit
        on fast flash). ``_commit_lock`` is taken before the sequence number is assigned, by this path and
        by the writer alike, so records are committed in sequence order and the log never has a gap."""
        with self._commit_lock:
            with self._cv:
                self._check_open()
                inline = not self._pending and not self._retry
                if inline:
                    self._last_seq += 1
                    seq = self._last_seq
                    rec = frame_record(seq, payload)
                    self._cum_bytes += len(rec)
                    self._queued += 1
            if inline:
                started = time.perf_counter()
                try:
                    self._commit([(seq, rec)])
                except Exception as exc:
                    with self._cv:  # never dropped: the writer retries it, the caller learns it failed
                        self._retry = [(seq, rec)]
                        self._error, self._failed_upto = exc, seq
                        self._wake(exc, seq)
                    raise StoreWriteError(f"write failed: {exc}") from exc
                with self._cv:
                    self._durable_seq = max(self._durable_seq, seq)
                    self._error = None
                    self._done += 1
                    self.commits += 1
                    self._wake(None, 0)
                if self.on_commit is not None:
                    self.on_commit(1, len(rec), time.perf_counter() - started)
                return seq
        seq = self.submit(payload)
        self.wait(seq, timeout)
        return seq

    def _check_open(self) -> None:
        if self._closing or self._thread is None:
            raise StoreWriteError("store is not open")

    def wait(self, seq: int | None = None, timeout: float | None = None) -> None:
        """Block until record ``seq`` (default: everything queued so far) is durable."""
        with self._cv:
            target = self._last_seq if seq is None else seq
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._durable_seq < target:
                if self._failed_upto >= target and self._error is not None:
                    raise StoreWriteError(f"write failed: {self._error}") from self._error
                if self._thread is None or not self._thread.is_alive():
                    raise StoreWriteError("store closed before the write was durable")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"record {target} not durable after {timeout} s")
                self._cv.wait(remaining if remaining is not None else 1.0)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything queued so far (records, snapshots, meta) is committed."""
        with self._cv:
            target = self._queued
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._done < target:
                if self._error is not None and self._retry:
                    raise StoreWriteError(f"write failed: {self._error}") from self._error
                if self._thread is None or not self._thread.is_alive():
                    raise StoreWriteError("store closed before everything was durable")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"store not flushed after {timeout} s")
                self._cv.wait(remaining if remaining is not None else 1.0)

    async def wait_async(self, seq: int | None = None) -> None:
        """Like ``wait`` without blocking the event loop: resolved by the writer thread after the commit."""
        loop = asyncio.get_running_loop()
        with self._cv:
            target = self._last_seq if seq is None else seq
            if self._durable_seq >= target:
                return
            if self._thread is None or not self._thread.is_alive():
                raise StoreWriteError("store is not open")
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(loop, []).append((target, future))
        await future

    def _wake(self, failed: BaseException | None, failed_upto: int) -> None:
        """On the writer thread, with ``_cv`` held: tell every waiting loop what became durable or failed."""
        self._cv.notify_all()
        for loop, waiters in list(self._waiters.items()):
            ready = [
                w
                for w in waiters
                if w[0] <= self._durable_seq or (failed is not None and w[0] <= failed_upto)
            ]
            if not ready:
                continue
            self._waiters[loop] = [w for w in waiters if w not in ready]
            if not self._waiters[loop]:
                del self._waiters[loop]
            durable = self._durable_seq
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, ready, durable, failed)

    def _writer(self) -> None:
        backoff = 0.0
        while True:
            with self._cv:
                while not self._pending and not self._retry and not self._closing:
                    self._cv.wait()
                if self.commit_window > 0 and not self._closing and not self._retry:
                    deadline = time.monotonic() + self.commit_window
                    while len(self._pending) < self.max_batch and not self._closing:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cv.wait(remaining)
            # Take the commit lock before the batch, so an inline append (see ``append``) can never
            # commit a later sequence number ahead of this batch.
            with self._commit_lock:
                with self._cv:
                    batch = self._retry + self._pending
                    self._retry, self._pending = [], []
                    closing = self._closing
                if not batch:
                    if closing:
                        return
                    continue
                started = time.perf_counter()
                try:
                    self._commit(batch)
                    failure = None
                except Exception as exc:
                    failure = exc
            if failure is not None:
                exc = failure
                upto = max((item[0] if isinstance(item, tuple) else item.seq) for item in batch)
                with self._cv:
                    self._retry = batch
                    self._error, self._failed_upto = exc, upto
                    self._wake(exc, upto)
                if closing:
                    return
                backoff = min(1.0, backoff * 2 or 0.05)
                time.sleep(backoff)
                continue
            backoff = 0.0
            records = [item for item in batch if isinstance(item, tuple)]
            with self._cv:
                if records:
                    self._durable_seq = max(self._durable_seq, records[-1][0])
                for item in batch:
                    if isinstance(item, _Job) and item.kind == "snapshot":
                        self._cum_at_prev_cover, self._cum_at_cover = self._cum_at_cover, item.cum_bytes
                        self._snapshot_seqs = [*self._snapshot_seqs[-1:], item.seq]
                        self.snapshot_bytes = len(item.data)
                        self.compactions += 1
                self._error = None
                self._done += len(batch)
                self.commits += 1
                self._wake(None, 0)
            if self.on_commit is not None:
                self.on_commit(len(records), sum(len(r[1]) for r in records), time.perf_counter() - started)

    def _commit(self, batch: list[tuple[int, bytes] | _Job]) -> None:
        conn = self._conn
        if conn is None:
            raise StoreWriteError("store is closed")
        conn.execute("BEGIN IMMEDIATE")
        try:
            run: list[tuple[int, bytes]] = []
            for item in batch:
                if isinstance(item, tuple):
                    run.append(item)
                    continue
                if run:
                    conn.executemany("INSERT OR REPLACE INTO log VALUES (?, ?)", run)
                    run = []
                if item.kind == "snapshot":
                    conn.execute("INSERT OR REPLACE INTO snapshot VALUES (?, ?)", (item.seq, item.data))
                    previous = conn.execute(
                        "SELECT MAX(covered_seq) FROM snapshot WHERE covered_seq < ?", (item.seq,)
                    ).fetchone()[0]
                    if previous is not None:
                        conn.execute("DELETE FROM log WHERE seq <= ?", (previous,))
                        conn.execute("DELETE FROM snapshot WHERE covered_seq < ?", (previous,))
                else:
                    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (item.key, item.value))
            if run:
                conn.executemany("INSERT OR REPLACE INTO log VALUES (?, ?)", run)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    # -- closing ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Commit what is queued, stop the writer, release the volume. Raises if the last commit failed."""
        with self._cv:
            if self._closing:
                return
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._cv:
            unsaved = self._retry + self._pending
            self._pending, self._retry = [], []
            self._wake(StoreWriteError("store closed"), self._last_seq)
        error = self._error
        self._close_conn()
        self._unlock()
        if unsaved:
            raise StoreWriteError(f"closed with {len(unsaved)} unsaved item(s): {error}")


def _resolve(
    ready: list[tuple[int, asyncio.Future[None]]], durable: int, failed: BaseException | None
) -> None:
    for seq, future in ready:
        if future.done():
            continue
        if seq <= durable:
            future.set_result(None)
        else:
            future.set_exception(StoreWriteError(f"write failed: {failed}"))
