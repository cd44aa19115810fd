"""A worker whose manager dies: it stops taking work, is re-adopted, or exits on its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fleet import FAST_CONFIG, REPO, Http, pid_alive, wait_for

pytestmark = pytest.mark.timeout(120)

ORPHAN_CONFIG = FAST_CONFIG.replace("orphan_pause_s = 5", "orphan_pause_s = 1").replace(
    "orphan_exit_s = 60", "orphan_exit_s = 6") + "\n[managers.trader]\ndesired = 1\n"


def start_manager(tmp: Path) -> tuple[subprocess.Popen[bytes], Http]:
    url_file = tmp / "run" / "trader-manager.url"
    url_file.unlink(missing_ok=True)
    with open(tmp / "manager.log", "ab") as log:  # the child keeps its own copy
        proc = subprocess.Popen([sys.executable, "-m", "managers", "--kind", "trader",
                                 "--port", "0", "--data-dir", str(tmp),
                                 "--config", str(tmp / "fleet.toml")],
                                stdout=log, stderr=log, cwd=REPO)
    wait_for(lambda: url_file.exists(), 30, "manager to listen")
    token = json.loads((tmp / "secrets.json").read_text())["operator_token"]
    return proc, Http(url_file.read_text().strip(), token)


def test_orphan_pauses_is_readopted_then_exits_when_abandoned(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text(ORPHAN_CONFIG)
    started: list[subprocess.Popen[bytes]] = []
    try:
        _orphan_scenario(tmp_path, started)
    finally:
        for proc in started:  # never leave a manager (and so its workers) behind on failure
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


def _orphan_scenario(tmp_path: Path, started: list[subprocess.Popen[bytes]]) -> None:
    proc, manager = start_manager(tmp_path)
    started.append(proc)
    worker = wait_for(lambda: [w for w in manager.get("/v1/manager")["workers"]
                               if w["state"] == "up"], 30, "worker up")[0]
    wh = Http(worker["url"])
    assert wh.call("GET", "/ready")[0] == 200

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    # No pipe: after orphan_pause_s the worker stops taking new work.
    wait_for(lambda: wh.call("GET", "/ready")[0] == 503, 10, "orphaned worker to pause")
    assert wh.get("/v1/status")["load"]["accepting"] is False

    proc, manager = start_manager(tmp_path)
    started.append(proc)
    readopted = wait_for(lambda: [w for w in manager.get("/v1/manager")["workers"]
                                  if w["state"] == "up"], 30, "worker re-adopted")
    assert [w["id"] for w in readopted] == [worker["id"]]
    wait_for(lambda: wh.call("GET", "/ready")[0] == 200, 10, "re-adopted worker to resume")
    assert wh.get("/v1/status")["load"]["accepting"] is True
    events = wait_for(lambda: [e["event"] for e in manager.get("/v1/events")["events"]
                               if e["event"] == "readopted"] and
                      [e["event"] for e in manager.get("/v1/events")["events"]], 10,
                      "readopted event")
    assert "spawned" not in events, "re-adoption must not spawn a duplicate"

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    # Abandoned for good: the worker exits by itself after orphan_exit_s.
    wait_for(lambda: not pid_alive(worker["pid"]), 30, "abandoned worker to exit")
