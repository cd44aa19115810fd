"""The worker's pure control core: fencing, orphan handling, drain."""

from __future__ import annotations

from protocol.control import Command, CommandAction, Hello, WorkerState
from workers.runtime.control_core import Effect, WorkerControl


def core() -> WorkerControl:
    return WorkerControl(worker_id="w", epoch=5, orphan_pause_s=10, orphan_exit_s=60,
                         drain_timeout_s=30, started_at=0.0)


def hello(manager_epoch: int = 2, worker_epoch: int = 5) -> Hello:
    return Hello(manager_id="m", manager_epoch=manager_epoch, worker_epoch=worker_epoch)


def test_pipe_for_another_epoch_is_refused() -> None:
    refusal = core().check_hello(hello(worker_epoch=4))
    assert refusal is not None and refusal.code == "stale_epoch"


def test_pipe_from_an_older_manager_generation_is_refused_after_a_newer_one() -> None:
    c = core()
    assert c.check_hello(hello(manager_epoch=3)) is None
    c.pipe_opened(hello(manager_epoch=3), 1.0)
    refusal = c.check_hello(hello(manager_epoch=2))
    assert refusal is not None and "older" in refusal.message
    assert c.check_hello(hello(manager_epoch=3)) is None  # same generation may reconnect
    assert c.check_hello(hello(manager_epoch=4)) is None  # a restarted manager re-adopts


def test_orphan_pauses_then_exits_and_readoption_resumes() -> None:
    c = core()
    c.pipe_opened(hello(), 0.0)
    assert c.state is WorkerState.UP and c.accepting
    c.pipe_closed(1.0)
    assert c.tick(5.0, has_work=False) == []
    assert c.tick(11.5, has_work=False) == [Effect.PAUSE]
    assert not c.accepting
    assert c.pipe_opened(hello(manager_epoch=3), 12.0) == [Effect.RESUME]
    assert c.accepting
    c.pipe_closed(20.0)
    c.tick(31.0, has_work=False)
    assert c.tick(81.0, has_work=False) == [Effect.EXIT]
    assert c.tick(90.0, has_work=False) == []  # exit is announced once


def test_worker_never_adopted_exits_after_orphan_timeout() -> None:
    c = core()
    assert c.tick(10.0, has_work=False) == [Effect.PAUSE]
    assert c.tick(60.0, has_work=False) == [Effect.EXIT]


def test_drain_waits_for_work_then_exits_and_never_accepts_again() -> None:
    c = core()
    c.pipe_opened(hello(), 0.0)
    effects = c.command(Command(command_id="1", action=CommandAction.DRAIN), 1.0)
    assert effects == [Effect.BEGIN_DRAIN]
    assert c.state is WorkerState.DRAINING and not c.accepting
    assert c.command(Command(command_id="2", action=CommandAction.DRAIN), 1.5) == []
    assert c.tick(2.0, has_work=True) == []
    assert c.tick(3.0, has_work=False) == [Effect.EXIT]


def test_drain_timeout_exits_even_with_work_left() -> None:
    c = core()
    c.pipe_opened(hello(), 0.0)
    c.command(Command(command_id="1", action=CommandAction.DRAIN), 1.0)
    assert c.tick(30.0, has_work=True) == []
    assert c.tick(31.0, has_work=True) == [Effect.EXIT]


def test_stop_command_exits() -> None:
    c = core()
    assert c.command(Command(command_id="1", action=CommandAction.STOP), 0.0) == [Effect.EXIT]
    assert not c.accepting
