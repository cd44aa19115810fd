"""Per-session lanes: a session's requests run one after another, sessions run side by side.

A Market link carries many algo sessions. Carrying out a request can take a venue round trip
(milliseconds on a real exchange), so running a link's requests strictly one after another
would make every algo on that Market wait for every other algo's venue calls. Order still
matters within one session (a cancel must not overtake the new_order it cancels, a replay
must not overtake the requests before it), so each session gets a *lane*: its jobs run in
arrival order in one task, created on demand and gone when the lane is empty.

The reader that feeds the lanes awaits `room()` before each job: when more than `max_pending`
jobs are waiting across all lanes it stops reading, and TCP pushes back on the Market.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

Job = Callable[[], Awaitable[None]]


class SessionLanes:
    """Runs each session's jobs in order, different sessions concurrently."""

    def __init__(self, max_pending: int = 10_000) -> None:
        self.max_pending = max_pending
        self._lanes: dict[str, deque[Job]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._pending = 0
        self._room = asyncio.Event()
        self._room.set()

    @property
    def pending(self) -> int:
        """Jobs submitted and not finished yet, across every lane."""
        return self._pending

    @property
    def active(self) -> int:
        """Lanes with work right now."""
        return len(self._tasks)

    async def room(self) -> None:
        """Wait until the lanes hold at most `max_pending` jobs."""
        await self._room.wait()

    def submit(self, session_id: str, job: Job) -> None:
        """Queue `job` behind the session's earlier jobs."""
        lane = self._lanes.setdefault(session_id, deque())
        lane.append(job)
        self._pending += 1
        if self._pending > self.max_pending:
            self._room.clear()
        if session_id not in self._tasks:
            self._tasks[session_id] = asyncio.get_running_loop().create_task(
                self._run(session_id, lane), name=f"session-lane:{session_id}")

    async def _run(self, session_id: str, lane: deque[Job]) -> None:
        try:
            while lane:
                job = lane.popleft()
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception:  # one bad request must not stall the lane
                    log.exception("session_job_failed", session_id=session_id)
                finally:
                    self._pending -= 1
                    if self._pending <= self.max_pending:
                        self._room.set()
        finally:
            self._tasks.pop(session_id, None)
            if not lane:
                self._lanes.pop(session_id, None)
            else:  # cancelled with work left: that work is dropped with the lane
                self._pending -= len(lane)
                self._lanes.pop(session_id, None)
                if self._pending <= self.max_pending:
                    self._room.set()

    async def close(self, timeout: float = 2.0) -> None:
        """Let running jobs finish for up to `timeout`, then cancel what is left."""
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=timeout)
