"""The worker's side of the control protocol, as pure code.

Feed it pipe events, commands and the passage of time; it answers with what to do. No sockets,
no clock: `now` is always passed in, so every rule is unit-tested without I/O.

Rules:
- A pipe is accepted only for this worker's own epoch, and only from a manager generation at
  least as new as the newest one seen (fencing: a zombie manager can never command us).
- With no pipe for `orphan_pause_s` the worker stops taking new work; after `orphan_exit_s` it
  exits, unless a manager re-adopts it first.
- `drain` stops new work and exits once work is finished or `drain_timeout_s` has passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from protocol.control import Command, CommandAction, Hello, WorkerState


class Effect(StrEnum):
    BEGIN_DRAIN = "begin_drain"  # tell clients to go elsewhere, stop taking work
    PAUSE = "pause"  # orphaned: stop taking new work
    RESUME = "resume"  # re-adopted: take work again
    EXIT = "exit"  # finish and leave the process


@dataclass(frozen=True)
class PipeRefusal:
    code: str
    message: str


@dataclass
class WorkerControl:
    worker_id: str
    epoch: int
    orphan_pause_s: float
    orphan_exit_s: float
    drain_timeout_s: float
    started_at: float
    state: WorkerState = WorkerState.STARTING
    newest_manager_epoch: int = 0
    pipe_open: bool = False
    pipe_lost_at: float | None = None
    paused: bool = False
    drain_started_at: float | None = None
    exiting: bool = False
    _pending: list[Effect] = field(default_factory=list)

    @property
    def accepting(self) -> bool:
        """Whether new work (sessions, subscriptions, orders) may be taken."""
        return not (self.paused or self.exiting or self.state is WorkerState.DRAINING)

    def check_hello(self, hello: Hello) -> PipeRefusal | None:
        """Decide whether a pipe opening with `hello` may become our control pipe."""
        if hello.worker_epoch != self.epoch:
            return PipeRefusal("stale_epoch", f"pipe is for epoch {hello.worker_epoch}, "
                                              f"this worker is epoch {self.epoch}")
        if hello.manager_epoch < self.newest_manager_epoch:
            return PipeRefusal("stale_epoch", f"manager epoch {hello.manager_epoch} is older "
                                              f"than {self.newest_manager_epoch}")
        return None

    def pipe_opened(self, hello: Hello, now: float) -> list[Effect]:
        """Record an accepted pipe (call after `check_hello` returned None)."""
        self.newest_manager_epoch = hello.manager_epoch
        self.pipe_open = True
        self.pipe_lost_at = None
        if self.state is WorkerState.STARTING:
            self.state = WorkerState.UP
        if self.paused:
            self.paused = False
            return [Effect.RESUME]
        return []

    def pipe_closed(self, now: float) -> None:
        self.pipe_open = False
        self.pipe_lost_at = now

    def command(self, cmd: Command, now: float) -> list[Effect]:
        if cmd.action is CommandAction.DRAIN:
            if self.state is WorkerState.DRAINING:
                return []
            self.state = WorkerState.DRAINING
            self.drain_started_at = now
            return [Effect.BEGIN_DRAIN]
        if cmd.action is CommandAction.STOP:
            return self._exit()
        return []

    def tick(self, now: float, has_work: bool) -> list[Effect]:
        """Advance time. `has_work` says whether sessions or orders are still in flight."""
        if self.exiting:
            return []
        if self.state is WorkerState.DRAINING and self.drain_started_at is not None and (
                not has_work or now - self.drain_started_at >= self.drain_timeout_s):
            return self._exit()
        if not self.pipe_open:
            since = self.pipe_lost_at if self.pipe_lost_at is not None else self.started_at
            silent = now - since
            if silent >= self.orphan_exit_s:
                return self._exit()
            if silent >= self.orphan_pause_s and not self.paused:
                self.paused = True
                return [Effect.PAUSE]
        return []

    def _exit(self) -> list[Effect]:
        self.exiting = True
        return [Effect.EXIT]
