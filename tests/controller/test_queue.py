"""The work queue: coalescing, one worker per key, urgent lane, delayed adds, backoff, close."""

from __future__ import annotations

import asyncio

import pytest
from continuum.controller.queue import WorkQueue


async def test_a_key_is_queued_once_and_urgent_keys_jump_the_routine_lane():
    q = WorkQueue()
    for key in ("a", "b", "a", "c"):
        q.add(key)
    q.add("c", urgent=True)  # promoted: served before a and b, and only once
    assert len(q) == 3
    got = [await q.get() for _ in range(3)]
    assert got == ["c", "a", "b"]
    assert len(q) == 0


async def test_a_key_added_while_processing_is_requeued_when_done_never_handed_out_twice():
    q = WorkQueue()
    q.add("k")
    key = await q.get()
    q.add("k", urgent=True)  # a new event arrives while a worker reconciles k
    assert len(q) == 0  # not handed to a second worker
    q.done(key)
    assert len(q) == 1 and await q.get() == "k"


async def test_the_echo_of_a_passs_own_write_does_not_repeat_the_pass():
    q = WorkQueue()
    q.add("k")
    key = await q.get()
    q.add("k", version="7")  # the watch event of the pass's own write, before the write's answer
    q.wrote("k", "7")  # the answer
    q.done(key)
    assert len(q) == 0  # nothing but its own write was seen: not reconciled again
    q.add("k")
    key = await q.get()
    q.wrote("k", "9")
    q.add("k", version="8")  # someone else's change while the pass ran
    q.add("k", version="9", urgent=True)
    q.done(key)
    assert len(q) == 1 and await q.get() == "k"
    q.add("k", version="10")  # another event while processing, nothing written
    q.wrote("j", "10")  # another key's write (not processing) counts for nothing
    q.done("k")
    assert len(q) == 1 and await q.get() == "k"
    q.done("k")
    q.wrote("k", "11")  # after the pass: forgotten, does not hide a later event
    q.add("k", version="11")
    assert len(q) == 1


async def test_add_after_keeps_the_earliest_deadline():
    q = WorkQueue()
    q.add_after("k", 0.05)
    q.add_after("k", 10.0)  # later: ignored
    assert q.pending == 1 and len(q) == 0
    assert await asyncio.wait_for(q.get(), 5.0) == "k"
    q.done("k")
    q.add_after("j", 10.0)
    q.add_after("j", 0.01)  # earlier: replaces the later one
    assert await asyncio.wait_for(q.get(), 5.0) == "j"


async def test_retry_backs_off_exponentially_until_forgotten():
    q = WorkQueue(base_delay=0.01, max_delay=0.04)
    assert [q.retry("k") for _ in range(4)] == [0.01, 0.02, 0.04, 0.04]
    assert q.failures("k") == 4
    q.forget("k")
    assert q.failures("k") == 0 and q.retry("k") == 0.01


async def test_close_wakes_waiting_workers_and_drops_timers():
    q = WorkQueue()
    q.add_after("k", 10.0)
    waiter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiter, 1.0)
    assert q.pending == 0
    q.add("x")  # ignored once closed
    assert len(q) == 0
