"""Owned background tasks: named, referenced, failures logged, cancelled with a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class TaskSet:
    """Keeps a reference to every task it starts until the task ends.

    A task that ends with an exception is logged (nothing is fire-and-forget). `close()` cancels
    what is left and waits at most `timeout` seconds for it to finish.
    """

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self._owner}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task failed", task=task.get_name(), error=repr(exc),
                      exc_info=(type(exc), exc, exc.__traceback__))

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, timeout: float = 5.0) -> None:
        """Cancel every task still running and wait for them, at most `timeout` seconds."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            log.warning("task did not stop in time", task=task.get_name(), timeout_s=timeout)


async def cancel_and_wait(task: asyncio.Task[Any], timeout: float = 5.0) -> None:
    """Cancel one task and wait for it (at most `timeout` s); never raises its outcome."""
    task.cancel()
    await asyncio.wait([task], timeout=timeout)
