"""The outbox: results, events, summaries and dead letters, durable on the volume before anything is
acknowledged or published (store-and-forward).

SQLite in WAL mode with ``synchronous=FULL`` (the state store's durability approach), one writer
thread doing group commits: every :meth:`Outbox.put` waiting when a commit starts shares its fsync.
Records get increasing sequence numbers in the order ``put`` was called and are published in that
order; the publisher's acknowledged position (the *watermark*) is saved in the same database, so a
restart publishes again at most what was in flight (marked as redelivered). Published records stay
``retain_published`` more records for deduplication of source redeliveries, then are deleted.

Bounded by ``max_messages`` and ``max_bytes`` of unpublished records. When full: ``block`` (default)
makes ``put`` wait, so the worker stops acknowledging and reading and the source broker holds the
rest; ``drop-oldest`` deletes the oldest unpublished records (counted) to make room.
A ``LOCK`` file held with ``flock`` keeps a second process off the directory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continuum_worker.ingest.metrics import IngestMetrics

DB_NAME = "outbox.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS out (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
                                kind TEXT NOT NULL, msg_id TEXT, key TEXT, props TEXT);
CREATE INDEX IF NOT EXISTS out_key ON out(key) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
POLICIES = ("block", "drop-oldest")
TAIL_ROWS = 50_000  # unpublished records kept in memory too (beyond: read back from SQLite)


class OutboxError(RuntimeError):
    pass


@dataclass
class Record:
    topic: str
    payload: bytes
    kind: str  # result | event | summary | dead_letter
    msg_id: str | None = None
    key: str | None = None  # source dedup key
    props: str | None = None  # JSON of extra MQTT 5 user properties


@dataclass
class Row:
    seq: int
    topic: str
    payload: bytes
    kind: str
    msg_id: str | None
    props: str | None


@dataclass
class _Job:
    records: list[Record]
    meta: dict[str, str]
    future: asyncio.Future[Any] | None
    drop_for: tuple[int, int] | None = None  # (records, bytes) to make room for
    seqs: list[int] = field(default_factory=list)


class Outbox:
    def __init__(
        self, directory: str | Path, *, max_messages: int = 1_000_000, max_bytes: int = 2**30,
        policy: str = "block", retain_published: int = 10_000, metrics: IngestMetrics | None = None,
    ) -> None:  # fmt: skip
        if policy not in POLICIES:
            raise ValueError(f"outbox policy must be one of {POLICIES}, got {policy!r}")
        self.directory = Path(directory)
        self.max_messages, self.max_bytes, self.policy = max_messages, max_bytes, policy
        self.retain_published = retain_published
        self.metrics = metrics or IngestMetrics()
        self.last_seq = 0
        self.watermark = 0  # highest published seq (saved lazily)
        self.pending_count = 0
        self.pending_bytes = 0
        self.dropped = 0
        self.meta: dict[str, str] = {}
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._read: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new = asyncio.Event()
        self._space = asyncio.Event()
        self._saved_watermark = 0
        self._sizes: dict[int, int] = {}  # pending seq -> payload size (for exact byte accounting)
        self._tail: dict[int, Row] = {}  # records written by this process and not yet published: no read back
        self._put_times: collections.deque[tuple[int, float]] = (
            collections.deque()
        )  # (last seq of a put, when)
        self.wakers: set[asyncio.Event] = set()  # set on every put (the publisher's one wake-up event)
        self.closed = True

    # -- lifecycle ---------------------------------------------------------------------------------
    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutboxError(f"outbox {self.directory} is in use by another process") from None
        self._lock_fd = fd
        db = self._connect()
        db.executescript(_SCHEMA)
        self.meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self.watermark = self._saved_watermark = int(self.meta.get("watermark", "0"))
        self.last_seq = max(self.watermark, db.execute("SELECT COALESCE(MAX(seq), 0) FROM out").fetchone()[0])
        # sequence numbers are assigned here, never reused (SQLite's rowid would restart below a deleted maximum)
        self._next_seq = self.last_seq + 1
        for seq, size in db.execute("SELECT seq, length(payload) FROM out WHERE seq > ?", (self.watermark,)):
            self._sizes[seq] = size
        self.pending_count, self.pending_bytes = len(self._sizes), sum(self._sizes.values())
        if self.pending_count:  # left by a previous run: their age counts from now
            self._put_times.append((self.last_seq, time.time()))
        self._loop = asyncio.get_running_loop()
        self._read = sqlite3.connect(self.directory / DB_NAME, isolation_level=None)
        self._thread = threading.Thread(target=self._writer, args=(db,), name="outbox-writer", daemon=True)
        self._thread.start()
        self.closed = False
        self._gauges()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.directory / DB_NAME, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._jobs.put(_Job([], {}, None))  # saves the watermark
        self._jobs.put(None)
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)
        if self._read is not None:
            self._read.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- writes ------------------------------------------------------------------------------------
    async def put(self, records: list[Record], meta: dict[str, str] | None = None) -> list[int]:
        """Durably append ``records`` (and set ``meta``) in one transaction; returns their sequence numbers.
        Waits for room when full under the ``block`` policy."""
        if self.closed:
            raise OutboxError("outbox is closed")
        size = sum(len(r.payload) for r in records)
        drop_for = None
        if self.policy == "block":
            waited = False
            while self.pending_count and (self.pending_count + len(records) > self.max_messages
                                          or self.pending_bytes + size > self.max_bytes):  # fmt: skip
                if not waited:
                    self.metrics.full_waits.inc()
                    waited = True
                self._space.clear()
                await self._space.wait()
                if self.closed:
                    raise OutboxError("outbox is closed")
        elif (
            self.pending_count + len(records) > self.max_messages
            or self.pending_bytes + size > self.max_bytes
        ):
            drop_for = (len(records), size)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        job = _Job(records, dict(meta or {}), future, drop_for)
        self._jobs.put(job)
        await future
        for r, seq in zip(records, job.seqs, strict=True):
            if seq > self.watermark:  # the publisher may have read and published it already
                if len(self._tail) < TAIL_ROWS:
                    self._tail[seq] = Row(seq, r.topic, r.payload, r.kind, r.msg_id, r.props)
                self._sizes[seq] = len(r.payload)
                self.pending_count += 1
                self.pending_bytes += len(r.payload)
        if job.seqs:
            self.last_seq = max(self.last_seq, job.seqs[-1])
            if job.seqs[-1] > self.watermark:
                self._put_times.append((job.seqs[-1], time.time()))
        self.meta.update(job.meta)
        self._gauges()
        self._new.set()
        for waker in self.wakers:
            waker.set()
        return job.seqs

    def _writer(self, db: sqlite3.Connection) -> None:
        stop = False
        while not stop:
            job = self._jobs.get()
            if job is None:
                break
            jobs = [job]
            while len(jobs) < 512:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            started = time.perf_counter()
            try:
                dropped = self._commit(db, jobs)
            except Exception as exc:  # disk full, I/O: fail the waiting writes (never acknowledged)
                for j in jobs:
                    if j.future is not None:
                        self._resolve(j.future, exc)
                time.sleep(0.05)
                continue
            self.metrics.commits.observe(time.perf_counter() - started)
            if dropped and self._loop is not None:  # before the writers resume (callbacks run in order)
                self._loop.call_soon_threadsafe(self._apply_drop, *dropped)
            for j in jobs:
                if j.future is not None:
                    self._resolve(j.future, None)
        db.close()

    def _commit(self, db: sqlite3.Connection, jobs: list[_Job]) -> tuple[int, list[int]] | None:
        dropped: tuple[int, list[int]] | None = None
        next_seq = self._next_seq
        db.execute("BEGIN IMMEDIATE")
        try:
            for j in jobs:
                if j.drop_for is not None:
                    dropped = self._drop(db, *j.drop_for) or dropped
                first = self._next_seq
                j.seqs = list(range(first, first + len(j.records)))
                self._next_seq += len(j.records)
                db.executemany(
                    "INSERT INTO out (seq, topic, payload, kind, msg_id, key, props) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(seq, r.topic, r.payload, r.kind, r.msg_id, r.key, r.props)
                     for seq, r in zip(j.seqs, j.records, strict=True)],
                )  # fmt: skip
                for k, v in j.meta.items():
                    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, v))
            wm = self.watermark
            if wm != self._saved_watermark:
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('watermark', ?)", (str(wm),))
                if wm // 1000 != self._saved_watermark // 1000:  # now and then: forget old published records
                    db.execute("DELETE FROM out WHERE seq <= ?", (wm - self.retain_published,))
                self._saved_watermark = wm
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._next_seq = next_seq
            raise
        return dropped

    def _drop(self, db: sqlite3.Connection, records: int, size: int) -> tuple[int, list[int]] | None:
        """Delete the oldest unpublished records until ``records``/``size`` more fit (writer thread)."""
        wm = self.watermark
        count, nbytes = self.pending_count, self.pending_bytes
        # drop at least 1 % of the capacity at a time so a full outbox does not drop on every put
        chunk = max(records, self.max_messages // 100, 1)
        victims: list[int] = []
        for seq, length in db.execute(
            "SELECT seq, length(payload) FROM out WHERE seq > ? ORDER BY seq", (wm,)
        ):
            if (count + records <= self.max_messages - (chunk - records) and nbytes + size <= self.max_bytes) or \
                    count == 0:  # fmt: skip
                break
            victims.append(seq)
            count -= 1
            nbytes -= length
        if not victims:
            return None
        db.execute("DELETE FROM out WHERE seq > ? AND seq <= ?", (wm, victims[-1]))
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('watermark', ?)", (str(victims[-1]),))
        self._saved_watermark = victims[-1]
        return victims[-1], victims

    def _apply_drop(self, new_watermark: int, victims: list[int]) -> None:
        self.watermark = max(self.watermark, new_watermark)
        self._forget_times()
        for seq in victims:
            self._tail.pop(seq, None)
            size = self._sizes.pop(seq, None)
            if size is not None:
                self.pending_count -= 1
                self.pending_bytes -= size
        self.dropped += len(victims)
        self.metrics.dropped.inc(len(victims))
        self._gauges()

    def _resolve(self, future: asyncio.Future[Any], exc: BaseException | None) -> None:
        assert self._loop is not None

        def done() -> None:
            if future.done():
                return
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(OutboxError(f"outbox write failed: {exc}"))

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(done)

    # -- reads (event loop thread) -----------------------------------------------------------------
    def read(self, after: int, limit: int) -> list[Row]:
        assert self._read is not None
        after = max(after, self.watermark if self.policy == "drop-oldest" else after)
        cached: list[Row] = []
        while len(cached) < limit and (row := self._tail.get(after + 1 + len(cached))) is not None:
            cached.append(row)
        if cached or after >= self.last_seq:
            return cached
        rows = self._read.execute(
            "SELECT seq, topic, payload, kind, msg_id, props FROM out WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Row(*r) for r in rows]

    def seen(self, key: str) -> bool:
        """Whether a record from a source message with this dedup key is already durable."""
        assert self._read is not None
        # fetchall: a half-read statement would keep this connection's read snapshot open (stale reads)
        return bool(self._read.execute("SELECT 1 FROM out WHERE key = ? LIMIT 1", (key,)).fetchall())

    async def wait_new(self, after: int, timeout: float) -> None:
        if self.last_seq > after:
            return
        self._new.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._new.wait(), timeout)

    def mark_published(self, seq: int) -> None:
        """Records up to ``seq`` are acknowledged upstream (saved with the next commit, or by :meth:`flush`)."""
        if seq <= self.watermark:
            return
        while self._sizes:  # insertion order is sequence order
            first = next(iter(self._sizes))
            if first > seq:
                break
            self.pending_bytes -= self._sizes.pop(first)
            self.pending_count -= 1
            self._tail.pop(first, None)
        self.watermark = seq
        self._forget_times()
        self._gauges()
        self._space.set()

    def _forget_times(self) -> None:
        while self._put_times and self._put_times[0][0] <= self.watermark:
            self._put_times.popleft()

    def oldest_pending_age(self) -> float:
        """Seconds since the oldest record not yet published upstream became durable (0: none pending)."""
        if not self.pending_count or not self._put_times:
            return 0.0
        return max(0.0, time.time() - self._put_times[0][1])

    def flush_watermark(self) -> None:
        """Queue a commit that saves the watermark (the publisher calls it when idle)."""
        if not self.closed and self.watermark != self._saved_watermark:
            self._jobs.put(_Job([], {}, None))

    def _gauges(self) -> None:
        self.metrics.last_seq.set(self.last_seq)
        self.metrics.published_seq.set(self.watermark)
        self.metrics.pending.set(self.pending_count)
        self.metrics.pending_bytes.set(self.pending_bytes)
