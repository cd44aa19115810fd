"""The real `python -m infra_manager` process on loopback, talking to fake managers.

One infra manager process serves the whole module (each test uses its own location names);
tests that stop or restart an infra manager start their own.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from protocol.control import WorkerKind, WorkerState
from tests.support.infra import FakeManager, InfraProcess, eventually, worker_view

JOIN = "join-token-for-functional-tests-0001"
OPERATOR = "operator-token-for-functional-tests-0001"
SILENCE_S = 0.8

CONFIG = f"""
[timeouts]
silence_timeout_s = {SILENCE_S}
heartbeat_interval_s = 0.2

[security]
join_token = "{JOIN}"
operator_token = "{OPERATOR}"
"""


def operator_headers(token: str = OPERATOR) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("infra-config") / "fleet.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory, config_file: Path) -> Iterator[InfraProcess]:
    process = InfraProcess(tmp_path_factory.mktemp("infra-data"), config_file)
    yield process
    process.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
async def fake_managers() -> AsyncIterator[list[FakeManager]]:
    made: list[FakeManager] = []
    yield made
    for manager in made:
        await manager.stop()


async def start_fake(made: list[FakeManager], manager_id: str, location: str,
                     kind: WorkerKind = WorkerKind.BROKER) -> FakeManager:
    manager = FakeManager(manager_id, location, kind, JOIN, OPERATOR)
    await manager.start()
    made.append(manager)
    return manager


async def check_in(http: aiohttp.ClientSession, infra: InfraProcess,
                   body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{infra.url}/v1/managers/checkin", json=body,
                         headers={"Authorization": f"Bearer {JOIN}"}) as response:
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]


async def fleet(http: aiohttp.ClientSession, infra: InfraProcess) -> dict[str, Any]:
    async with http.get(f"{infra.url}/v1/fleet", headers=operator_headers()) as response:
        assert response.status == 200
        return await response.json()  # type: ignore[no-any-return]


async def location(http: aiohttp.ClientSession, infra: InfraProcess,
                   name: str) -> dict[str, Any] | None:
    view = await fleet(http, infra)
    return next((loc for loc in view["locations"] if loc["name"] == name), None)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------- auth and input


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/managers/checkin"),
    ("GET", "/v1/fleet"),
    ("GET", "/v1/events"),
    ("POST", "/v1/locations/x/broker/spawn"),
    ("PUT", "/v1/locations/x/broker/desired"),
    ("POST", "/v1/workers/w/drain"),
    ("POST", "/v1/workers/w/stop"),
])
async def test_every_protected_endpoint_answers_401_json_without_a_token(
        http: aiohttp.ClientSession, infra: InfraProcess, method: str, path: str) -> None:
    async with http.request(method, infra.url + path, json={}) as response:
        assert response.status == 401
        assert response.content_type == "application/json"
        assert (await response.json())["error"]["code"] == "unauthorized"


async def test_wrong_tokens_are_refused(http: aiohttp.ClientSession, infra: InfraProcess) -> None:
    # The operator token does not admit a manager, and the join token does not admit operators.
    async with http.post(f"{infra.url}/v1/managers/checkin", json={},
                         headers=operator_headers()) as response:
        assert response.status == 401
    async with http.get(f"{infra.url}/v1/fleet", headers=operator_headers(JOIN)) as response:
        assert response.status == 401
        assert (await response.json())["error"] == {"code": "unauthorized",
                                                    "message": "invalid token"}


@pytest.mark.parametrize(("body", "code", "field"), [
    ({"manager_id": "m", "location": "l", "kind": "broker", "url": "http://127.0.0.1:1",
      "epoch": 1, "version": "1", "colour": "red"}, "unknown_field", "colour"),
    ({"manager_id": "m", "location": "l", "kind": "broker", "url": "http://127.0.0.1:1",
      "epoch": 1}, "missing_field", "version"),
    ({"manager_id": "m", "location": "l", "kind": "plumber", "url": "http://127.0.0.1:1",
      "epoch": 1, "version": "1"}, "invalid_field", "kind"),
    ({"manager_id": "m", "location": "l", "kind": "broker", "url": "http://127.0.0.1:1",
      "epoch": 0, "version": "1"}, "invalid_field", "epoch"),
    ({"manager_id": "m", "location": "l", "kind": "broker", "url": "ftp://somewhere",
      "epoch": 1, "version": "1"}, "invalid_field", "url"),
])
async def test_bad_checkin_bodies_get_400_naming_the_field(
        http: aiohttp.ClientSession, infra: InfraProcess, body: dict[str, Any], code: str,
        field: str) -> None:
    async with http.post(f"{infra.url}/v1/managers/checkin", json=body,
                         headers={"Authorization": f"Bearer {JOIN}"}) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert field in error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe"])
async def test_malformed_checkin_json_gets_400_bad_json(
        http: aiohttp.ClientSession, infra: InfraProcess, raw: bytes) -> None:
    async with http.post(f"{infra.url}/v1/managers/checkin", data=raw,
                         headers={"Authorization": f"Bearer {JOIN}",
                                  "Content-Type": "application/json"}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "bad_json"
    async with http.get(f"{infra.url}/health") as response:
        assert response.status == 200  # and the process is still serving


async def test_service_endpoints(http: aiohttp.ClientSession, infra: InfraProcess) -> None:
    async with http.get(f"{infra.url}/health") as response:
        assert await response.json() == {"status": "ok", "infra_id": infra.infra_id,
                                         "pid": infra.proc.pid}
    async with http.get(f"{infra.url}/ready") as response:
        assert response.status == 200
        assert (await response.json())["ready"] is True
    async with http.get(f"{infra.url}/metrics") as response:
        text = await response.text()
    for name in ("tradefleet_infra_managers", "tradefleet_infra_workers",
                 "tradefleet_infra_status_frames_total"):
        assert name in text
    async with http.get(f"{infra.url}/no/such/page") as response:
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"


def test_url_file_names_the_listening_address(infra: InfraProcess) -> None:
    assert (infra.data_dir / "run" / "infra.url").read_text().strip() == infra.url


# ------------------------------------------------------------------------- silence


async def test_manager_whose_stream_cannot_be_reached_turns_silent(
        http: aiohttp.ClientSession, infra: InfraProcess) -> None:
    body = {"manager_id": "ghost-broker", "location": "ghost-town", "kind": "broker",
            "url": f"http://127.0.0.1:{closed_port()}", "epoch": 1, "version": "0.1.0"}
    accepted = await check_in(http, infra, body)
    assert accepted == {"infra_id": infra.infra_id}
    loc = await location(http, infra, "ghost-town")
    assert loc is not None and loc["managers"][0]["id"] == "ghost-broker"

    async def silent() -> dict[str, Any] | None:
        loc = await location(http, infra, "ghost-town")
        return loc if loc and loc["managers"][0]["state"] == "silent" else None

    loc = await eventually(silent, timeout=SILENCE_S + 5, what="the manager to turn silent")
    assert loc["managers"][0]["last_seen_age_s"] >= SILENCE_S
    assert loc["state"] == "unreachable"


# ------------------------------------------------------------------------- with a fake manager


async def test_status_pipe_brings_the_managers_workers_into_the_fleet(
        http: aiohttp.ClientSession, infra: InfraProcess, fake_managers: list[FakeManager]
        ) -> None:
    manager = await start_fake(fake_managers, "lisbon-broker", "lisbon")
    manager.workers = [worker_view("lisbon-b-1", WorkerKind.BROKER),
                       worker_view("lisbon-b-2", WorkerKind.BROKER, WorkerState.STARTING, 2)]
    manager.desired = 2
    manager.pending_events = [{"ts": 1.0, "event": "spawned", "worker_id": "lisbon-b-2"}]
    await check_in(http, infra, manager.checkin_body())
    await asyncio.wait_for(manager.stream_opened.wait(), 10)
    headers = manager.stream_headers[-1]
    assert headers["Authorization"] == f"Bearer {JOIN}"
    assert headers["X-Tradefleet-Infra-Id"] == infra.infra_id

    async def workers_listed() -> dict[str, Any] | None:
        loc = await location(http, infra, "lisbon")
        return loc if loc and len(loc["managers"][0]["workers"]) == 2 else None

    loc = await eventually(workers_listed, what="the workers to appear")
    (broker,) = loc["managers"]
    assert (broker["state"], broker["desired"], broker["epoch"]) == ("up", 2, 1)
    first = broker["workers"][0]
    assert first["id"] == "lisbon-b-1" and first["state"] == "up"
    assert first["pid"] is None  # omitted by the manager's codec, explicit null here
    assert first["load"]["latency_p99_us"] == 900.0
    assert loc["counts"]["up"] == 1 and loc["counts"]["starting"] == 1
    async with http.get(f"{infra.url}/v1/events", headers=operator_headers()) as response:
        log = (await response.json())["events"]
    assert any(e["event"] == "spawned" and e["worker_id"] == "lisbon-b-2"
               and e["location"] == "lisbon" for e in log)


async def test_dropped_pipe_is_reopened_by_the_infra_manager(
        http: aiohttp.ClientSession, infra: InfraProcess, fake_managers: list[FakeManager]
        ) -> None:
    manager = await start_fake(fake_managers, "oslo-broker", "oslo")
    manager.workers = [worker_view("oslo-b-1", WorkerKind.BROKER)]
    await check_in(http, infra, manager.checkin_body())
    await asyncio.wait_for(manager.stream_opened.wait(), 10)
    port = manager.port

    await manager.stop()  # the manager's host vanishes: its whole location goes quiet

    async def unreachable() -> dict[str, Any] | None:
        loc = await location(http, infra, "oslo")
        return loc if loc and loc["state"] == "unreachable" else None

    loc = await eventually(unreachable, timeout=SILENCE_S + 5, what="oslo to be unreachable")
    assert loc["managers"][0]["workers"][0]["state"] == "unreachable"
    assert loc["counts"]["unreachable"] == 1 and loc["counts"]["up"] == 0

    # Back on the same address, without checking in again: the infra manager, which created
    # the pipe, re-establishes it.
    opened_before = len(manager.stream_headers)
    await manager.start(port)
    await asyncio.wait_for(manager.stream_opened.wait(), 10)
    assert len(manager.stream_headers) > opened_before

    async def back() -> dict[str, Any] | None:
        loc = await location(http, infra, "oslo")
        return loc if loc and loc["state"] == "ok" else None

    loc = await eventually(back, what="oslo to be back")
    assert loc["managers"][0]["workers"][0]["state"] == "up"


async def test_restarted_manager_with_a_higher_epoch_replaces_the_old_link(
        http: aiohttp.ClientSession, infra: InfraProcess, fake_managers: list[FakeManager]
        ) -> None:
    old = await start_fake(fake_managers, "rome-market", "rome", WorkerKind.MARKET)
    old.workers = [worker_view("rome-m-old", WorkerKind.MARKET)]
    await check_in(http, infra, old.checkin_body())
    await asyncio.wait_for(old.stream_opened.wait(), 10)

    new = await start_fake(fake_managers, "rome-market", "rome", WorkerKind.MARKET)
    new.epoch = 2
    new.workers = [worker_view("rome-m-new", WorkerKind.MARKET, epoch=3)]
    await check_in(http, infra, new.checkin_body())
    await asyncio.wait_for(new.stream_opened.wait(), 10)

    async def replaced() -> dict[str, Any] | None:
        loc = await location(http, infra, "rome")
        ids = [w["id"] for w in loc["managers"][0]["workers"]] if loc else []
        return loc if ids == ["rome-m-new"] else None

    loc = await eventually(replaced, what="the new generation's view")
    assert loc["managers"][0]["epoch"] == 2
    assert loc["managers"][0]["url"] == new.url

    # A zombie of the old generation may not take the place back.
    async with http.post(f"{infra.url}/v1/managers/checkin", json=old.checkin_body(),
                         headers={"Authorization": f"Bearer {JOIN}"}) as response:
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "stale_epoch"


# ------------------------------------------------------------------------- operator commands


async def test_operator_commands_are_forwarded_and_answers_relayed(
        http: aiohttp.ClientSession, infra: InfraProcess, fake_managers: list[FakeManager]
        ) -> None:
    manager = await start_fake(fake_managers, "madrid-trader", "madrid", WorkerKind.TRADER)
    manager.workers = [worker_view("madrid-t-1", WorkerKind.TRADER)]
    await check_in(http, infra, manager.checkin_body())

    async def owned() -> bool:
        loc = await location(http, infra, "madrid")
        return bool(loc and loc["managers"][0]["workers"])

    await eventually(owned, what="the worker to be known")
    base = f"{infra.url}/v1"
    async with http.post(f"{base}/locations/madrid/trader/spawn",
                         json={"count": 2, "request_id": "req-1"},
                         headers=operator_headers()) as response:
        assert response.status == 200
        assert await response.json() == {"request_id": "req-1", "workers": ["new-1"]}
    async with http.put(f"{base}/locations/madrid/trader/desired", json={"desired": 4},
                        headers=operator_headers()) as response:
        assert await response.json() == {"desired": 4}
    async with http.post(f"{base}/workers/madrid-t-1/drain",
                         headers=operator_headers()) as response:
        assert (await response.json())["action"] == "drain"
    async with http.post(f"{base}/workers/madrid-t-1/stop",
                         headers=operator_headers()) as response:
        assert (await response.json())["action"] == "stop"
    assert [(m, p, b) for m, p, b, _ in manager.commands] == [
        ("POST", "/v1/workers/spawn", {"count": 2, "request_id": "req-1"}),
        ("PUT", "/v1/desired", {"desired": 4}),
        ("POST", "/v1/workers/madrid-t-1/drain", None),
        ("POST", "/v1/workers/madrid-t-1/stop", None),
    ]
    assert {auth for *_, auth in manager.commands} == {f"Bearer {OPERATOR}"}

    # The manager's coded errors come back as they are.
    async def refuse(method: str, path: str) -> web.Response:
        return web.json_response({"error": {"code": "not_found",
                                            "message": "no live worker 'madrid-t-1'"}},
                                 status=404)

    manager.answer = refuse
    async with http.post(f"{base}/workers/madrid-t-1/drain",
                         headers=operator_headers()) as response:
        assert response.status == 404
        assert (await response.json())["error"]["message"] == "no live worker 'madrid-t-1'"

    async with http.get(f"{base}/events", headers=operator_headers()) as response:
        log = (await response.json())["events"]
    actions = [(e["action"], e["status"]) for e in log
               if e["event"] == "operator" and e.get("location") == "madrid"]
    assert actions == [("spawn", 200), ("set_desired", 200), ("drain", 200), ("stop", 200),
                       ("drain", 404)]


async def test_spawn_without_request_id_gets_one(
        http: aiohttp.ClientSession, infra: InfraProcess, fake_managers: list[FakeManager]
        ) -> None:
    manager = await start_fake(fake_managers, "bern-broker", "bern")
    await check_in(http, infra, manager.checkin_body())
    async with http.post(f"{infra.url}/v1/locations/bern/broker/spawn", json={"count": 1},
                         headers=operator_headers()) as response:
        assert response.status == 200
    (_, _, body, _), = manager.commands
    assert body is not None
    assert body["count"] == 1 and body["request_id"]


@pytest.mark.parametrize(("method", "path", "body", "status", "code", "field"), [
    ("POST", "/v1/locations/atlantis/broker/spawn", {"count": 1}, 404, "not_found", None),
    ("POST", "/v1/locations/vienna/plumber/spawn", {"count": 1}, 404, "not_found", None),
    ("POST", "/v1/locations/vienna/market/spawn", {"count": 1}, 404, "not_found", None),
    ("POST", "/v1/workers/nobody/drain", None, 404, "not_found", None),
    ("POST", "/v1/workers/nobody/stop", None, 404, "not_found", None),
    ("POST", "/v1/locations/vienna/broker/spawn", {"count": 0}, 400, "invalid_field", "count"),
    ("POST", "/v1/locations/vienna/broker/spawn", {"count": 1, "n": 1}, 400, "unknown_field",
     "n"),
    ("PUT", "/v1/locations/vienna/broker/desired", {}, 400, "missing_field", "desired"),
    ("PUT", "/v1/locations/vienna/broker/desired", {"desired": -1}, 400, "invalid_field",
     "desired"),
])
async def test_bad_operator_commands_get_coded_errors(
        http: aiohttp.ClientSession, infra: InfraProcess, fake_managers: list[FakeManager],
        method: str, path: str, body: dict[str, Any] | None, status: int, code: str,
        field: str | None) -> None:
    manager = await start_fake(fake_managers, "vienna-broker", "vienna")
    await check_in(http, infra, manager.checkin_body())
    async with http.request(method, infra.url + path, json=body,
                            headers=operator_headers()) as response:
        assert response.status == status
        error = (await response.json())["error"]
    assert error["code"] == code
    assert error.get("field") == field
    assert manager.commands == []


async def test_command_to_an_unreachable_manager_is_503(
        http: aiohttp.ClientSession, infra: InfraProcess) -> None:
    body = {"manager_id": "dublin-broker", "location": "dublin", "kind": "broker",
            "url": f"http://127.0.0.1:{closed_port()}", "epoch": 1, "version": "0.1.0"}
    await check_in(http, infra, body)
    async with http.post(f"{infra.url}/v1/locations/dublin/broker/spawn", json={"count": 1},
                         headers=operator_headers()) as response:
        assert response.status == 503
        error = (await response.json())["error"]
    assert error["code"] == "unavailable"
    assert "dublin-broker" in error["message"]


# ------------------------------------------------------------------------- operator stream


async def test_operator_stream_with_first_frame_auth_sends_fleet_and_changes(
        http: aiohttp.ClientSession, infra: InfraProcess, fake_managers: list[FakeManager]
        ) -> None:
    manager = await start_fake(fake_managers, "kyiv-broker", "kyiv")
    await check_in(http, infra, manager.checkin_body())
    async with http.ws_connect(f"{infra.url}/v1/stream") as ws:
        await ws.send_json({"type": "auth", "token": OPERATOR})
        welcome = await ws.receive_json(timeout=5)
        assert welcome == {"type": "welcome", "infra_id": infra.infra_id}
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "fleet"
        assert "kyiv" in [loc["name"] for loc in first["fleet"]["locations"]]

        await asyncio.wait_for(manager.stream_opened.wait(), 10)
        manager.workers = [worker_view("kyiv-b-9", WorkerKind.BROKER)]
        manager.pending_events = [{"ts": 2.0, "event": "checked_in", "worker_id": "kyiv-b-9"}]
        await manager.push()
        saw_worker = saw_event = False
        async with asyncio.timeout(15):
            while not (saw_worker and saw_event):
                frame = await ws.receive_json(timeout=5)
                if frame["type"] == "fleet":
                    saw_worker = saw_worker or any(
                        w["id"] == "kyiv-b-9" for loc in frame["fleet"]["locations"]
                        for m in loc["managers"] for w in m["workers"])
                elif frame["type"] == "events":
                    saw_event = saw_event or any(e.get("worker_id") == "kyiv-b-9"
                                                 for e in frame["events"])
        await ws.send_str("{oops")
        async with asyncio.timeout(15):
            while (frame := await ws.receive_json(timeout=5))["type"] != "error":
                pass
        assert frame["code"] == "bad_json"


async def test_operator_stream_accepts_the_bearer_header(
        http: aiohttp.ClientSession, infra: InfraProcess) -> None:
    async with http.ws_connect(f"{infra.url}/v1/stream", headers=operator_headers()) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        assert (await ws.receive_json(timeout=5))["type"] == "fleet"


@pytest.mark.parametrize("first", [{"type": "auth", "token": "wrong"},
                                   {"type": "auth", "token": JOIN},
                                   {"type": "hello"}])
async def test_operator_stream_closes_1008_on_a_bad_token(
        http: aiohttp.ClientSession, infra: InfraProcess, first: dict[str, Any]) -> None:
    async with http.ws_connect(f"{infra.url}/v1/stream") as ws:
        await ws.send_json(first)
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008


async def test_operator_stream_refuses_a_bad_bearer_header_with_401(
        http: aiohttp.ClientSession, infra: InfraProcess) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(f"{infra.url}/v1/stream", headers=operator_headers("nope"))
    assert info.value.status == 401


# ------------------------------------------------------------------------- several infra managers


async def test_two_infra_managers_each_see_the_fleet_and_one_stopping_changes_nothing(
        http: aiohttp.ClientSession, tmp_path: Path, config_file: Path,
        fake_managers: list[FakeManager]) -> None:
    first = InfraProcess(tmp_path / "a", config_file, infra_id="infra-a")
    second = InfraProcess(tmp_path / "b", config_file, infra_id="infra-b")
    try:
        manager = await start_fake(fake_managers, "seoul-broker", "seoul")
        manager.workers = [worker_view("seoul-b-1", WorkerKind.BROKER)]
        for infra in (first, second):
            assert (await check_in(http, infra, manager.checkin_body()))["infra_id"] == \
                infra.infra_id

        async def both_see_it() -> bool:
            locs = [await location(http, i, "seoul") for i in (first, second)]
            return all(loc and loc["managers"][0]["workers"] for loc in locs)

        await eventually(both_see_it, what="both infra managers to show the worker")
        assert first.stop() == 0
        assert not (first.data_dir / "run" / "infra.url").exists()
        await asyncio.sleep(SILENCE_S * 1.5)  # long enough for a silence to show, if any
        loc = await location(http, second, "seoul")
        assert loc is not None and loc["state"] == "ok"
        assert loc["managers"][0]["workers"][0]["state"] == "up"
    finally:
        first.stop()
        second.stop()


def test_tokens_come_from_the_data_dir_when_not_configured(tmp_path: Path) -> None:
    import json
    import urllib.error
    import urllib.request

    process = InfraProcess(tmp_path / "d", None)
    try:
        secrets = json.loads((tmp_path / "d" / "secrets.json").read_text())
        request = urllib.request.Request(f"{process.url}/v1/fleet", headers={
            "Authorization": f"Bearer {secrets['operator_token']}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read())["locations"] == []
        request = urllib.request.Request(f"{process.url}/v1/fleet", headers={
            "Authorization": f"Bearer {OPERATOR}"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == 401
        assert secrets["operator_token"] not in process.logs()
        assert secrets["join_token"] not in process.logs()
    finally:
        assert process.stop() == 0


def test_bad_config_exits_with_the_key_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[timeouts]\nsilence_timeot_s = 1\n")
    with pytest.raises(AssertionError):
        InfraProcess(tmp_path / "d", bad)
    assert "timeouts.silence_timeot_s: unknown key" in (tmp_path / "d" / "infra.log").read_text()
