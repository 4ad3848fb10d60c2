"""The outbox: results, events, summaries and dead letters, durable on the volume before anything is
acknowledged or published (store-and-forward).

SQLite in WAL mode with ``synchronous=FULL`` (the state store's durability approach), one writer
thread doing group commits: every write queued when a commit starts shares its fsync. Records get
increasing sequence numbers when they are handed over (:meth:`Outbox.submit`, :meth:`Outbox.put`), are
committed in that order and published in that order; the publisher's acknowledged position (the
*watermark*) is saved in the same database, so a restart publishes again at most what was in flight
(marked as redelivered). Published records stay ``retain_published`` more records for deduplication
of source redeliveries, then are deleted.

A record handed over with ``early=True`` may be read by the publisher (:meth:`read` with
``early=True``) before its commit: the *written* mode of ``--ingest-publish-after``. It is never read
past an older record that may not be read yet, and the watermark never passes :attr:`durable_seq`
(a record counts as published only once it is both committed and acknowledged upstream). A failed
commit is retried with the same records and sequence numbers until it succeeds, so sequence numbers
have no gaps and a record read early is the record that becomes durable.

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
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continuum_worker.ingest.metrics import IngestMetrics

log = logging.getLogger("continuum.worker.ingest")

DB_NAME = "outbox.db"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS out (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
                                kind TEXT NOT NULL, msg_id TEXT, key TEXT, props TEXT);
CREATE INDEX IF NOT EXISTS out_key ON out(key) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
POLICIES = ("block", "drop-oldest")
TAIL_ROWS = 50_000  # unpublished records kept in memory too (beyond: read back from SQLite)
MAX_JOBS_PER_COMMIT = 512
WATERMARK_SAVE_SECONDS = 0.05
ROWS_PER_INSERT = 128  # 7 parameters a row: within SQLite's oldest limit of 999 per statement


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


@dataclass(slots=True)
class Row:
    seq: int
    topic: str
    payload: bytes
    kind: str
    msg_id: str | None
    props: str | None
    early: bool = False  # may be read before its commit


@dataclass
class _Job:
    records: list[Record]
    meta: dict[str, str]
    future: asyncio.Future[Any] | None
    drop_for: tuple[int, int] | None = None  # (records, bytes) to make room for
    seqs: list[int] = field(default_factory=list)  # assigned when handed over (event loop)


class Outbox:
    def __init__(
        self, directory: str | Path, *, max_messages: int = 1_000_000, max_bytes: int = 2**30,
        policy: str = "block", retain_published: int = 10_000, metrics: IngestMetrics | None = None,
        gather_seconds: float = 0.0,
    ) -> None:  # fmt: skip
        """``gather_seconds``: a commit waits this long after its first write for more to share its fsync
        (0: it starts at once). Worth it when nothing waits on the commit but acknowledgements."""
        if policy not in POLICIES:
            raise ValueError(f"outbox policy must be one of {POLICIES}, got {policy!r}")
        self.directory = Path(directory)
        self.max_messages, self.max_bytes, self.policy = max_messages, max_bytes, policy
        self.retain_published = retain_published
        self.gather_seconds = gather_seconds
        self.metrics = metrics or IngestMetrics()
        self.last_seq = 0  # the newest record handed over
        self.durable_seq = 0  # every record up to it is committed
        self._next_seq = 1
        self.watermark = 0  # highest published seq (saved lazily; never above durable_seq)
        self.pending_count = 0
        self.pending_bytes = 0
        self.dropped = 0
        self.meta: dict[str, str] = {}
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._read: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._space = asyncio.Event()
        self._saved_watermark = 0
        self._watermark_saved_at = 0.0  # monotonic
        self._sizes: dict[int, int] = {}  # pending seq -> payload size (for exact byte accounting)
        self._tail: dict[int, Row] = {}  # records written by this process and not yet published: no read back
        self._put_times: collections.deque[tuple[int, float]] = (
            collections.deque()
        )  # (last seq of a put, when)
        self.wakers: set[asyncio.Event] = set()  # set on every commit (the publishers' wake-up)
        self.on_durable: Callable[[], None] | None = None  # called on the loop after each commit
        self.closed = True
        self._closing = False  # the writer stops retrying a failed commit

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
        self.durable_seq = self.last_seq
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
        # a statement per multi-row INSERT size (up to ROWS_PER_INSERT) stays prepared
        db = sqlite3.connect(self.directory / DB_NAME, isolation_level=None, check_same_thread=False,
                             cached_statements=ROWS_PER_INSERT + 32)  # fmt: skip
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._closing = True
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
    async def put(
        self, records: list[Record], meta: dict[str, str] | None = None, *, early: bool = False
    ) -> list[int]:
        """Durably append ``records`` (and set ``meta``) in one transaction; returns their sequence numbers
        once committed. Waits for room when full under the ``block`` policy."""
        drop_for = await self.reserve(records)
        seqs, future = self.submit(records, meta, early=early, drop_for=drop_for)
        await future
        return seqs

    async def reserve(self, records: list[Record]) -> tuple[int, int] | None:
        """Wait until ``records`` fit (``block``); under ``drop-oldest`` what :meth:`submit` must make room for."""
        fits, drop_for = self.try_reserve(records)
        if fits:
            return drop_for
        self.metrics.full_waits.inc()
        while not fits:
            self._space.clear()
            await self._space.wait()
            fits, drop_for = self.try_reserve(records)
        return drop_for

    def try_reserve(self, records: list[Record]) -> tuple[bool, tuple[int, int] | None]:
        """Without waiting: whether ``records`` may be handed over now (``block``: they fit, or nothing is
        pending), and what ``drop-oldest`` must make room for."""
        if self.closed:
            raise OutboxError("outbox is closed")
        size = sum(len(r.payload) for r in records)
        over = (
            self.pending_count + len(records) > self.max_messages
            or self.pending_bytes + size > self.max_bytes
        )
        if self.policy == "block":
            return not (over and self.pending_count), None
        return True, ((len(records), size) if over else None)

    def submit(
        self, records: list[Record], meta: dict[str, str] | None = None, *, early: bool = False,
        drop_for: tuple[int, int] | None = None,
    ) -> tuple[list[int], asyncio.Future[Any]]:  # fmt: skip
        """Hand ``records`` over now (sequence numbers in call order) and queue their commit; the future
        resolves once they are durable. ``early``: the publisher may send them before that (see the module
        docstring). Call :meth:`reserve` first for the size bounds."""
        if self.closed:
            raise OutboxError("outbox is closed")
        first = self._next_seq
        seqs = list(range(first, first + len(records)))
        self._next_seq += len(records)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.put(_Job(records, dict(meta or {}), future, drop_for, seqs))
        for r, seq in zip(records, seqs, strict=True):
            if len(self._tail) < TAIL_ROWS:
                self._tail[seq] = Row(seq, r.topic, r.payload, r.kind, r.msg_id, r.props, early)
            self._sizes[seq] = len(r.payload)
            self.pending_count += 1
            self.pending_bytes += len(r.payload)
        if seqs:
            self.last_seq = seqs[-1]
            self._put_times.append((seqs[-1], time.time()))
            # no wake-up for early records: the one who hands them over sends them (IngestService._hand_over)
        self.meta.update(meta or {})
        self._gauges()
        return seqs, future

    def _writer(self, db: sqlite3.Connection) -> None:
        stop = False
        backlog = False  # the last commit left jobs queued: no gathering for the next one
        while not stop:
            job = self._jobs.get()
            if job is None:
                break
            jobs = [job]
            if job.records and self.gather_seconds > 0 and not backlog:
                # sleep through the gathering window rather than wait on the queue: a put then wakes
                # nobody, and this thread takes the GIL once per commit, not once per write handed over
                time.sleep(self.gather_seconds)
            while len(jobs) < MAX_JOBS_PER_COMMIT:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            backlog = len(jobs) >= MAX_JOBS_PER_COMMIT
            backoff = 0.05
            while True:
                started = time.perf_counter()
                try:
                    dropped = self._commit(db, jobs)
                    break
                except Exception as exc:  # disk full, I/O: nothing is acknowledged; the same records again
                    if self._closing:  # fail the waiting writes: their sources redeliver after a restart
                        for j in jobs:
                            if j.future is not None:
                                self._resolve(j.future, exc)
                        jobs = []
                        break
                    log.error("outbox commit failed (%s); retrying in %.2fs", exc, backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
            if not jobs:
                continue
            self.metrics.commits.observe(time.perf_counter() - started)
            last = max((j.seqs[-1] for j in jobs if j.seqs), default=0)
            futures = [j.future for j in jobs if j.future is not None]
            if self._loop is not None:
                # one wake-up of the loop per commit: drops before the writers resume, durability, the futures
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                    self._loop.call_soon_threadsafe(self._committed, last, dropped, futures)
        db.close()

    def _committed(
        self, seq: int, dropped: tuple[int, list[int]] | None, futures: list[asyncio.Future[Any]]
    ) -> None:
        """A commit (event loop): what it dropped, that every record up to ``seq`` is durable, its writers."""
        if dropped:
            self._apply_drop(*dropped)
        for future in futures:
            if not future.done():
                future.set_result(None)
        if seq > self.durable_seq:
            self.durable_seq = seq
            for waker in self.wakers:
                waker.set()
            if self.on_durable is not None:
                self.on_durable()

    def _commit(self, db: sqlite3.Connection, jobs: list[_Job]) -> tuple[int, list[int]] | None:
        dropped: tuple[int, list[int]] | None = None
        saved = self._saved_watermark
        wm = self.watermark
        now = time.monotonic()
        # the watermark is saved at most every WATERMARK_SAVE_SECONDS while records flow (and by every commit
        # without records: flush_watermark, close): what a restart publishes again grows by at most that much
        save = wm != saved and (now - self._watermark_saved_at >= WATERMARK_SAVE_SECONDS
                                or not any(j.records for j in jobs))  # fmt: skip
        if not save and all(j.drop_for is None and not j.meta for j in jobs):
            only = [(seq, r.topic, r.payload, r.kind, r.msg_id, r.key, r.props)
                    for j in jobs for seq, r in zip(j.seqs, j.records, strict=True)]  # fmt: skip
            if len(only) <= ROWS_PER_INSERT:  # one statement is one transaction: no BEGIN, no COMMIT
                self._insert(db, only)
                return None
        db.execute("BEGIN IMMEDIATE")
        try:
            rows: list[Any] = []
            for j in jobs:
                if j.drop_for is not None:
                    self._insert(db, rows)  # what came before it counts in what it drops
                    rows = []
                    dropped = self._drop(db, *j.drop_for) or dropped
                rows.extend((seq, r.topic, r.payload, r.kind, r.msg_id, r.key, r.props)
                            for seq, r in zip(j.seqs, j.records, strict=True))  # fmt: skip
                for k, v in j.meta.items():
                    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (k, v))
            self._insert(db, rows)
            if wm != self._saved_watermark:  # in a transaction anyway: saved
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('watermark', ?)", (str(wm),))
                if wm // 1000 != self._saved_watermark // 1000:  # now and then: forget old published records
                    db.execute("DELETE FROM out WHERE seq <= ?", (wm - self.retain_published,))
                self._saved_watermark = wm
                self._watermark_saved_at = now
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._saved_watermark = saved
            raise
        return dropped

    @staticmethod
    def _insert(db: sqlite3.Connection, rows: list[Any]) -> None:
        """The rows in as few statements as possible: ``sqlite3`` releases the GIL around every step of a
        statement (every row of an ``executemany``) and this thread must win it back after each, from a
        busy event loop; one multi-row INSERT per :data:`ROWS_PER_INSERT` rows is one step."""
        for i in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[i : i + ROWS_PER_INSERT]
            db.execute(
                "INSERT INTO out (seq, topic, payload, kind, msg_id, key, props) VALUES "
                + ",".join(["(?,?,?,?,?,?,?)"] * len(chunk)),
                [x for row in chunk for x in row],
            )

    def _drop(self, db: sqlite3.Connection, records: int, size: int) -> tuple[int, list[int]] | None:
        """Delete the oldest unpublished records until ``records``/``size`` more fit (writer thread)."""
        wm = self.watermark
        # unpublished records in the database (records handed over and not yet committed do not count here)
        count, nbytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM out WHERE seq > ?", (wm,)
        ).fetchone()
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
    def read(self, after: int, limit: int, *, early: bool = False) -> list[Row]:
        """Up to ``limit`` records after ``after`` in sequence order: committed ones, and with ``early`` also
        records handed over with ``early=True`` and not yet committed (never past one that is not)."""
        assert self._read is not None
        after = max(after, self.watermark if self.policy == "drop-oldest" else after)
        durable = self.durable_seq
        cached: list[Row] = []
        while len(cached) < limit and (row := self._tail.get(after + 1 + len(cached))) is not None:
            if row.seq > durable and not (early and row.early):
                break
            cached.append(row)
        if cached or after >= durable:
            return cached
        rows = self._read.execute(
            "SELECT seq, topic, payload, kind, msg_id, props FROM out WHERE seq > ? AND seq <= ? "
            "ORDER BY seq LIMIT ?",
            (after, durable, limit),
        ).fetchall()
        return [Row(*r) for r in rows]

    def seen(self, key: str) -> bool:
        """Whether a record from a source message with this dedup key is already durable."""
        assert self._read is not None
        # fetchall: a half-read statement would keep this connection's read snapshot open (stale reads)
        return bool(self._read.execute("SELECT 1 FROM out WHERE key = ? LIMIT 1", (key,)).fetchall())

    def mark_published(self, seq: int) -> None:
        """Records up to ``seq`` are acknowledged upstream and committed (saved with the next commit, or by
        :meth:`flush_watermark`)."""
        if seq <= self.watermark:
            return
        if seq > self.durable_seq:
            raise OutboxError(
                f"record {seq} marked published before its commit (durable up to {self.durable_seq})"
            )
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
