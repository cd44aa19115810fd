"""The local-process spawner with real processes, including ones that misbehave on purpose."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from managers.spawner import LocalProcessSpawner, SpawnSpec, process_start_time
from tests.support.fleet import pid_alive

pytestmark = pytest.mark.timeout(60)

STUBBORN = """
import signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def spec(tmp_path: Path) -> SpawnSpec:
    return SpawnSpec(worker_id="w1", kind="broker", epoch=1, manager_url="http://127.0.0.1:1",
                     location="test", data_dir=tmp_path, config_path=None,
                     spawn_token="t" * 32)


def python(code: str):  # type: ignore[no-untyped-def]
    return lambda _spec: [sys.executable, "-c", code]


async def test_crashing_worker_reports_its_exit_code(tmp_path: Path) -> None:
    spawner = LocalProcessSpawner(python("import sys; sys.exit(3)"))
    await spawner.start(spec(tmp_path))
    for _ in range(200):
        code = await spawner.poll()
        if code is not None:
            break
        await __import__("asyncio").sleep(0.02)
    assert code == 3


async def test_stop_escalates_to_sigkill_for_a_worker_that_ignores_signals(tmp_path: Path
                                                                            ) -> None:
    spawner = LocalProcessSpawner(python(STUBBORN))
    await spawner.start(spec(tmp_path))
    log = Path(spawner.get_state()["log_path"])
    for _ in range(200):
        if "ready" in log.read_text():
            break
        await __import__("asyncio").sleep(0.02)
    assert await spawner.poll() is None
    await spawner.stop(grace_s=0.3)
    assert await spawner.poll() is not None
    assert not pid_alive(spawner.get_state()["pid"])


async def test_state_round_trip_readopts_and_detects_a_reused_pid(tmp_path: Path) -> None:
    first = LocalProcessSpawner(python("import time; time.sleep(30)"))
    await first.start(spec(tmp_path))
    state = first.get_state()
    assert state["start_time"] == process_start_time(state["pid"])

    adopted = LocalProcessSpawner()
    adopted.load_state(state)
    assert await adopted.poll() is None  # same pid, same start time: the same process

    impostor = LocalProcessSpawner()
    impostor.load_state({**state, "start_time": state["start_time"] - 1})
    assert await impostor.poll() == -1  # same pid, other start time: not our worker

    await adopted.stop(grace_s=2)
    assert await adopted.poll() is not None
    await first.poll()  # reap our own child


async def test_start_failure_is_a_spawn_error(tmp_path: Path) -> None:
    from managers.spawner import SpawnError
    spawner = LocalProcessSpawner(lambda _s: ["/nonexistent/python"])
    with pytest.raises(SpawnError):
        await spawner.start(spec(tmp_path))
