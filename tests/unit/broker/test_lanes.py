"""Session lanes: in order within a session, side by side across sessions, bounded."""

from __future__ import annotations

import asyncio

from workers.broker.lanes import SessionLanes


async def test_a_session_s_jobs_run_in_order_while_another_session_goes_ahead() -> None:
    lanes = SessionLanes()
    done: list[str] = []
    venue = asyncio.Event()  # session a's first request waits on a slow venue

    async def job(name: str, wait: asyncio.Event | None = None) -> None:
        if wait is not None:
            await wait.wait()
        done.append(name)

    lanes.submit("a", lambda: job("a1", venue))
    lanes.submit("a", lambda: job("a2"))
    lanes.submit("b", lambda: job("b1"))
    async with asyncio.timeout(2):
        while "b1" not in done:
            await asyncio.sleep(0)
    assert done == ["b1"]  # b did not wait for a's venue; a2 waits behind a1
    venue.set()
    async with asyncio.timeout(2):
        while len(done) < 3:
            await asyncio.sleep(0)
    assert done == ["b1", "a1", "a2"]
    assert lanes.pending == 0 and lanes.active == 0


async def test_a_failing_job_does_not_stall_its_lane() -> None:
    lanes = SessionLanes()
    done: list[int] = []

    async def boom() -> None:
        raise RuntimeError("a bug while routing")

    async def ok() -> None:
        done.append(1)

    lanes.submit("s", boom)
    lanes.submit("s", ok)
    async with asyncio.timeout(2):
        while not done:
            await asyncio.sleep(0)
    assert lanes.pending == 0


async def test_the_reader_waits_for_room_when_too_much_is_queued() -> None:
    lanes = SessionLanes(max_pending=2)
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    for n in range(3):
        lanes.submit(f"s{n}", slow)
    room = asyncio.create_task(lanes.room())
    await asyncio.sleep(0)
    assert not room.done() and lanes.pending == 3
    gate.set()
    await asyncio.wait_for(room, 2)


async def never_finishes() -> None:
    await asyncio.Event().wait()


async def test_close_cancels_what_does_not_finish() -> None:
    lanes = SessionLanes()
    lanes.submit("s", never_finishes)
    lanes.submit("s", never_finishes)
    await asyncio.sleep(0)
    await lanes.close(timeout=0.05)
    assert lanes.active == 0 and lanes.pending == 0
