"""A real manager process and its real workers on loopback: API errors, auth and fencing."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support.fleet import FAST_CONFIG, REPO, Http, wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def manager(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(FAST_CONFIG + "\n[managers.broker]\ndesired = 0\n")
    with open(tmp_path / "manager.log", "wb") as log:  # the child keeps its own copy
        proc = subprocess.Popen([sys.executable, "-m", "managers", "--kind", "broker",
                                 "--port", "0", "--data-dir", str(tmp_path), "--config", str(cfg)],
                                stdout=log, stderr=log, cwd=REPO)
    url_file = tmp_path / "run" / "broker-manager.url"
    wait_for(lambda: url_file.exists(), 30, "manager to listen")
    token = json.loads((tmp_path / "secrets.json").read_text())["operator_token"]
    http = Http(url_file.read_text().strip(), token)
    http.data_dir = tmp_path  # type: ignore[attr-defined]
    try:
        yield http
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mutating_calls_need_the_operator_token(manager: Http) -> None:
    status, body = manager.call("POST", "/v1/workers/spawn", {"count": 1, "request_id": "a"},
                                token="")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = manager.call("POST", "/v1/workers/spawn", {"count": 1, "request_id": "a"},
                                token="wrong-token-wrong-token")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = manager.call("PUT", "/v1/desired", {"desired": 1}, token="")
    assert status == 401


def test_bad_bodies_get_400_naming_the_field(manager: Http) -> None:
    status, body = manager.call("POST", "/v1/workers/spawn",
                                {"count": 1, "request_id": "a", "bogus": 1})
    assert status == 400 and body["error"] == {"code": "unknown_field",
                                               "message": "unknown field 'bogus'",
                                               "field": "bogus"}
    status, body = manager.call("POST", "/v1/workers/spawn", {"request_id": "a"})
    assert status == 400 and body["error"]["code"] == "missing_field"
    assert body["error"]["field"] == "count"
    status, body = manager.call("POST", "/v1/workers/spawn", {"count": 0, "request_id": "a"})
    assert status == 400 and body["error"]["field"] == "count"
    status, body = manager.call("POST", "/v1/workers/spawn", raw=b"{not json")
    assert status == 400 and body["error"]["code"] == "bad_json"
    status, body = manager.call("POST", "/v1/workers/nobody/drain")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = manager.call("GET", "/v1/no-such-route")
    assert status == 404 and "Traceback" not in json.dumps(body)


def test_checkin_with_a_forged_spawn_token_is_refused(manager: Http) -> None:
    manager.call("POST", "/v1/workers/spawn", {"count": 1, "request_id": "s"})
    worker = wait_for(lambda: [w for w in manager.get("/v1/manager")["workers"]
                               if w["state"] == "up"], 30, "worker up")[0]
    status, body = manager.call("POST", "/v1/workers/checkin", {
        "worker_id": worker["id"], "kind": "broker", "epoch": worker["epoch"],
        "url": "http://127.0.0.1:1", "pid": 1, "version": "x", "spawn_token": "f" * 40})
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = manager.call("POST", "/v1/workers/checkin", {"worker_id": "w"})
    assert status == 400 and body["error"]["code"] == "missing_field"


async def test_worker_pipe_needs_its_token_and_refuses_another_epoch(
        manager: Http) -> None:
    manager.call("POST", "/v1/workers/spawn", {"count": 1, "request_id": "p"})
    worker = wait_for(lambda: [w for w in manager.get("/v1/manager")["workers"]
                               if w["state"] == "up"], 30, "worker up")[0]
    db = sqlite3.connect(manager.data_dir / "managers" / "broker.sqlite")  # type: ignore[attr-defined]
    doc = json.loads(db.execute("SELECT doc FROM workers WHERE id=?", (worker["id"],))
                     .fetchone()[0])
    control_token = doc["control_token"]
    async with aiohttp.ClientSession() as session:
        async with session.get(worker["url"] + "/v1/control") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
        headers = {"Authorization": f"Bearer {control_token}"}
        async with session.ws_connect(worker["url"] + "/v1/control", headers=headers) as ws:
            await ws.send_json({"type": "hello", "manager_id": "zombie", "manager_epoch": 1,
                                "worker_epoch": worker["epoch"] + 1})
            refusal = json.loads((await ws.receive(timeout=5)).data)
            assert refusal["type"] == "error" and refusal["code"] == "stale_epoch"
            closing = await ws.receive(timeout=5)
            assert ws.close_code == 1008 or closing.type == aiohttp.WSMsgType.CLOSE
        # The real manager's pipe is unaffected by the zombie's attempt.
        async with session.get(worker["url"] + "/health") as resp:
            assert resp.status == 200
        async with session.get(worker["url"] + "/metrics") as resp:
            assert resp.status == 200
            assert "tradefleet_worker_pipes_opened" in await resp.text()
    assert [w["state"] for w in manager.get("/v1/manager")["workers"]] == ["up"]


def test_the_fleet_wide_kill_switch_is_kept_in_the_registry(manager: Http) -> None:
    status, body = manager.call("POST", "/v1/kill-switch", {"active": True, "bogus": 1})
    assert status == 400 and body["error"]["field"] == "bogus"
    status, body = manager.call("POST", "/v1/kill-switch", {"reason": "no state"})
    assert status == 400 and body["error"] == {
        "code": "missing_field", "message": "missing field 'active'", "field": "active"}
    status, body = manager.call("POST", "/v1/kill-switch", {"active": True, "reason": "halt"},
                                token="")
    assert status == 401

    status, body = manager.call("POST", "/v1/kill-switch", {"active": True, "reason": "halt"})
    # paper-1 (the default account) takes it now, later (no owner yet) or after its owner
    # answers: every account is named once, and the switch is stored either way.
    assert status in (200, 207), body
    named = [*body["accounts"], *body["pending"], *body["failed"]]
    assert named == ["paper-1"]
    assert body["fleet_kill_switch"]["active"] is True
    switch = manager.get("/v1/accounts")["fleet_kill_switch"]
    assert (switch["active"], switch["reason"], switch["by"]) == (True, "halt", "operator")
    assert manager.get("/v1/manager")["info"]["fleet_kill_switch"]["reason"] == "halt"
    registry = manager.data_dir / "managers" / "broker.sqlite"  # type: ignore[attr-defined]
    with sqlite3.connect(f"file:{registry}?mode=ro", uri=True) as db:
        (stored,) = db.execute(
            "SELECT doc FROM settings WHERE key='fleet_kill_switch'").fetchone()
    assert json.loads(stored)["active"] is True
    events = manager.get("/v1/events")["events"]
    assert any(e["event"] == "fleet_kill_switch" and e["category"] == "risk" for e in events)
