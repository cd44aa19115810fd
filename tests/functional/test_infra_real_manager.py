"""The infra manager with a real `python -m managers` BrokerManager and real workers.

Covers the whole status path: the manager checks in, the infra manager opens the status pipe,
operator commands go through the infra manager, a killed manager makes its location
unreachable without anything being replaced, and a restarted manager (new epoch, new port) is
followed with its re-adopted workers.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.infra import InfraProcess, ManagerProcess, eventually

JOIN = "join-token-for-real-manager-tests-01"
OPERATOR = "operator-token-for-real-manager-tests-01"
SILENCE_S = 1.0

CONFIG = f"""
location = "harbour"

[managers.broker]
desired = 1

[timeouts]
silence_timeout_s = {SILENCE_S}
orphan_pause_s = 20.0
orphan_exit_s = 40.0

[security]
join_token = "{JOIN}"
operator_token = "{OPERATOR}"
"""

HEADERS = {"Authorization": f"Bearer {OPERATOR}"}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def infra(tmp_path: Path, config_file: Path) -> Iterator[InfraProcess]:
    process = InfraProcess(tmp_path / "infra", config_file)
    yield process
    process.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
def worker_pids() -> Iterator[set[int]]:
    """Every worker pid seen; any still running at the end is killed (no leftovers)."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


async def harbour(http: aiohttp.ClientSession, infra: InfraProcess,
                  pids: set[int]) -> dict[str, Any] | None:
    async with http.get(f"{infra.url}/v1/fleet", headers=HEADERS) as response:
        fleet = await response.json()
    loc = next((loc for loc in fleet["locations"] if loc["name"] == "harbour"), None)
    if loc:
        pids.update(w["pid"] for m in loc["managers"] for w in m["workers"] if w.get("pid"))
    return loc


def up_ids(loc: dict[str, Any] | None) -> list[str]:
    if not loc:
        return []
    return sorted(w["id"] for m in loc["managers"] for w in m["workers"] if w["state"] == "up")


@pytest.mark.timeout(120)
async def test_real_manager_through_the_infra_manager(
        http: aiohttp.ClientSession, infra: InfraProcess, tmp_path: Path, config_file: Path,
        worker_pids: set[int]) -> None:
    manager = ManagerProcess(tmp_path / "location", config_file, infra.url)
    try:
        async def one_up() -> dict[str, Any] | None:
            loc = await harbour(http, infra, worker_pids)
            return loc if len(up_ids(loc)) == 1 else None

        loc = await eventually(one_up, timeout=30, what="the configured broker worker up")
        (broker,) = loc["managers"]
        assert (broker["id"], broker["state"], broker["desired"]) == (
            "harbour-broker-manager", "up", 1)
        first_epoch = broker["epoch"]

        # Spawn one more through the infra manager.
        async with http.post(f"{infra.url}/v1/locations/harbour/broker/spawn",
                             json={"count": 1, "request_id": "real-1"},
                             headers=HEADERS) as response:
            assert response.status == 200, await response.text()
            (spawned,) = (await response.json())["workers"]

        async def two_up() -> list[str]:
            ids = up_ids(await harbour(http, infra, worker_pids))
            return ids if spawned in ids and len(ids) == 2 else []

        both = await eventually(two_up, timeout=30, what="the spawned worker up")

        # Drain the first through the infra manager: it drains, then leaves the view.
        drained = next(i for i in both if i != spawned)
        async with http.post(f"{infra.url}/v1/workers/{drained}/drain",
                             headers=HEADERS) as response:
            assert response.status == 200, await response.text()

        async def gone() -> bool:
            loc = await harbour(http, infra, worker_pids)
            return bool(loc) and drained not in [w["id"] for m in loc["managers"]  # type: ignore[index]
                                                for w in m["workers"]]

        await eventually(gone, timeout=30, what="the drained worker to leave")
        async with http.get(f"{infra.url}/v1/events", headers=HEADERS) as response:
            events = (await response.json())["events"]
        lifecycle = [(e["event"], e.get("worker_id")) for e in events]
        assert ("draining", drained) in lifecycle
        assert ("operator", drained) in lifecycle

        # kill -9 the manager: the location goes unreachable, nothing is replaced.
        manager.kill()

        async def unreachable() -> dict[str, Any] | None:
            loc = await harbour(http, infra, worker_pids)
            return loc if loc and loc["state"] == "unreachable" else None

        loc = await eventually(unreachable, timeout=SILENCE_S + 10, what="harbour unreachable")
        assert [w["state"] for w in loc["managers"][0]["workers"]] == ["unreachable"]
        assert loc["counts"]["unreachable"] == 1

        # Restarted, it re-adopts its worker and checks in again with a newer epoch.
        manager = ManagerProcess(tmp_path / "location", config_file, infra.url)

        async def readopted() -> dict[str, Any] | None:
            loc = await harbour(http, infra, worker_pids)
            ok = (loc and loc["state"] == "ok" and loc["managers"][0]["epoch"] > first_epoch
                  and up_ids(loc) == [spawned])
            return loc if ok else None

        await eventually(readopted, timeout=40, what="the worker re-adopted and shown up")
    finally:
        manager.stop()
