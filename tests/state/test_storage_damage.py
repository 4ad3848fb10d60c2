"""Torn and corrupt storage: recovery cuts back to the last good record instead of failing."""

from __future__ import annotations

import random
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from continuum_worker.state.compaction import compact
from continuum_worker.state.doc import StateDoc
from continuum_worker.state.framing import frame_record
from continuum_worker.state.store import DB_NAME, Store, StoreLockedError, StoreWriteError


def _open(path: Path, **kwargs) -> tuple[StateDoc, Store]:
    doc = StateDoc(retention=100_000)
    store = Store(path, **kwargs)
    store.open(doc.load)
    doc.on_update(store.submit)
    return doc, store


def _ids(doc: StateDoc) -> list[int]:
    return [e["event"]["id"] for e in doc.events("log")]


def _copy_volume(src: Path, dst: Path) -> None:
    """What a crash leaves: the database and its WAL as they are on disk right now (no checkpoint)."""
    dst.mkdir()
    for suffix in ("", "-wal"):
        if (src / (DB_NAME + suffix)).exists():
            shutil.copyfile(src / (DB_NAME + suffix), dst / (DB_NAME + suffix))


def _recovered_ids(path: Path) -> tuple[list[int], Store]:
    doc, store = _open(path)
    store.close()
    return _ids(doc), store


def test_truncated_wal_keeps_every_record_whose_commit_survived(tmp_path: Path) -> None:
    live = tmp_path / "live"
    doc, store = _open(live)
    wal = live / (DB_NAME + "-wal")
    ends = []  # WAL size once record i was acknowledged
    for i in range(12):
        doc.append_event("log", {"id": i, "pad": "y" * (i * 37)})
        store.wait()
        ends.append(wal.stat().st_size)
    crashed = tmp_path / "crashed"
    _copy_volume(live, crashed)
    store.close()
    size = (crashed / (DB_NAME + "-wal")).stat().st_size
    start = ends[-4]  # the last three records' frames: every byte near frame edges, a stride inside
    offsets = set(range(start, size + 1, 53))
    for end in ends[-4:]:
        offsets.update(range(max(start, end - 40), min(size, end + 40) + 1))
    frame = 24 + 4096
    offsets.update(o for base in range(32, size, frame) for o in range(base, base + 30) if start <= o <= size)
    assert len(offsets) > 300
    for n, offset in enumerate(sorted(offsets)):
        case = tmp_path / f"cut{n}"
        _copy_volume(crashed, case)
        with open(case / (DB_NAME + "-wal"), "r+b") as f:
            f.truncate(offset)
        ids, _ = _recovered_ids(case)
        survived = sum(1 for end in ends if end <= offset)
        assert ids == list(range(len(ids))), f"not a prefix at offset {offset}"
        assert len(ids) >= survived, f"offset {offset}: lost a record whose commit was complete"
        shutil.rmtree(case)


def _checkpointed_volume(path: Path, n: int, compactions: tuple[int, ...] = ()) -> list[bytes]:
    doc, store = _open(path)
    updates: list[bytes] = []
    doc.on_update(updates.append)
    for i in range(n):
        doc.append_event("log", {"id": i, "pad": f"{i:04d}" * 8})
        if i in compactions:
            store.wait()
            compact(doc.doc, store)
            store.flush()
    store.close()  # checkpoints the WAL into the database file
    return updates


def test_bit_flip_in_a_log_record_cuts_back_to_the_record_before(tmp_path: Path) -> None:
    rng = random.Random(1)
    volume = tmp_path / "v"
    updates = _checkpointed_volume(volume, 40)
    pristine = (volume / DB_NAME).read_bytes()
    for bad in [0, 1, 17, 25, 38, 39]:
        record = frame_record(bad + 1, updates[bad])
        at = pristine.find(record)
        assert at >= 0
        for _ in range(3):
            data = bytearray(pristine)
            bit = rng.randrange(len(record) * 8)
            data[at + bit // 8] ^= 1 << (bit % 8)
            (volume / DB_NAME).write_bytes(bytes(data))
            ids, store = _recovered_ids(volume)
            assert ids == list(range(bad)), f"flip in record {bad + 1}"
            assert store.recovery.dropped == 40 - bad
            assert store.recovery.damage
    # a second recovery from the cut-back volume is clean
    ids, store = _recovered_ids(volume)
    assert store.recovery.damage == [] and ids == list(range(39))


def test_bit_flip_in_the_newest_snapshot_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    rng = random.Random(2)
    volume = tmp_path / "v"
    _checkpointed_volume(volume, 60, compactions=(19, 39))
    with sqlite3.connect(volume / DB_NAME) as conn:
        snaps = conn.execute("SELECT covered_seq, rec FROM snapshot ORDER BY covered_seq").fetchall()
    assert [s for s, _ in snaps] == [20, 40]
    pristine = (volume / DB_NAME).read_bytes()
    newest = snaps[-1][1]
    at = pristine.find(newest)
    assert at >= 0
    for _ in range(8):
        data = bytearray(pristine)
        bit = rng.randrange(len(newest) * 8)
        data[at + bit // 8] ^= 1 << (bit % 8)
        (volume / DB_NAME).write_bytes(bytes(data))
        ids, store = _recovered_ids(volume)
        assert ids == list(range(60))
        assert store.recovery.snapshot_fallback and store.recovery.snapshot_seq == 20
    # both snapshots damaged: recovery still opens, keeps the log it has, and says so
    data = bytearray(pristine)
    for _, blob in snaps:
        data[pristine.find(blob) + len(blob) // 2] ^= 0x04
    (volume / DB_NAME).write_bytes(bytes(data))
    ids, store = _recovered_ids(volume)
    assert "no intact snapshot; replaying the log alone" in store.recovery.damage
    assert len(store.recovery.damage) >= 3


def test_random_bit_flips_anywhere_never_fail_recovery_and_keep_a_prefix(tmp_path: Path) -> None:
    rng = random.Random(3)
    volume = tmp_path / "v"
    _checkpointed_volume(volume, 50)
    pristine = (volume / DB_NAME).read_bytes()
    for n in range(30):
        case = tmp_path / f"c{n}"
        case.mkdir()
        data = bytearray(pristine)
        for _ in range(rng.choice([1, 1, 2, 8])):
            bit = rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
        (case / DB_NAME).write_bytes(bytes(data))
        ids, _ = _recovered_ids(case)
        assert ids == list(range(len(ids)))
        shutil.rmtree(case)


def test_unreadable_database_is_moved_aside_and_salvaged(tmp_path: Path) -> None:
    volume = tmp_path / "v"
    _checkpointed_volume(volume, 10)
    data = bytearray((volume / DB_NAME).read_bytes())
    data[0:16] = b"not a database!!"
    (volume / DB_NAME).write_bytes(bytes(data))
    doc, store = _open(volume)
    assert store.recovery.salvaged
    doc.append_event("log", {"id": 0})
    store.wait()
    store.close()
    assert list(volume.glob("corrupt-*/" + DB_NAME))
    ids, store = _recovered_ids(volume)
    assert ids == [0] and not store.recovery.damage


def test_failed_compaction_is_rolled_back_and_write_errors_are_raised(tmp_path: Path) -> None:
    doc, store = _open(tmp_path)
    for i in range(30):
        doc.append_event("log", {"id": i, "pad": "z" * 200})
    store.wait()
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count={pages}")  # the disk is full now
    for i in range(30, 60):
        doc.append_event("log", {"id": i, "pad": "z" * 2000})
    compact(doc.doc, store)
    with pytest.raises(StoreWriteError, match="full"):
        store.wait()
    with pytest.raises(StoreWriteError):
        store.flush()
    assert store.compactions == 0
    # what was durable before is still there, untouched by the failed transaction
    snapshot = tmp_path / "during"
    _copy_volume(tmp_path, snapshot)
    ids, _ = _recovered_ids(snapshot)
    assert ids == list(range(30))
    # space again: the queued records and the compaction commit, nothing was dropped
    store._conn.execute("PRAGMA max_page_count=1073741823")
    deadline = time.monotonic() + 10
    while True:  # the writer retries with backoff; until it has, flush reports the last error
        try:
            store.flush(timeout=10)
            break
        except StoreWriteError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert store.compactions == 1
    store.close()
    ids, store = _recovered_ids(tmp_path)
    assert ids == list(range(60)) and store.recovery.snapshot_seq == 60


def test_a_second_writer_cannot_open_the_volume(tmp_path: Path) -> None:
    _doc, store = _open(tmp_path)
    with pytest.raises(StoreLockedError):
        Store(tmp_path).open(StateDoc().load)
    store.close()
    _, again = _open(tmp_path)
    again.close()


def test_compaction_bounds_the_log_and_recovery_is_exact(tmp_path: Path) -> None:
    doc, store = _open(tmp_path)
    for round_ in range(4):
        for i in range(200):
            doc.increment("n", 1)
            doc.append_event("log", {"id": round_ * 200 + i})
        store.wait()
        before = store.uncompacted_bytes
        compact(doc.doc, store)
        store.flush()
        assert store.uncompacted_bytes == 0 < before
    with sqlite3.connect(tmp_path / DB_NAME) as conn:
        assert conn.execute("SELECT COUNT(*) FROM snapshot").fetchone()[0] == 2
        assert conn.execute("SELECT MIN(seq) FROM log").fetchone()[0] > 1200  # older records dropped
    expected = doc.to_json()
    store.close()
    doc2, store2 = _open(tmp_path)
    assert doc2.to_json() == expected and doc2.counter("n")["value"] == 800
    store2.close()
