"""The infrastructure manager's aiohttp application: check-ins, fleet, operator commands, dashboard.

Built by `create_app(settings)`; background work (status pipes, the silence ticker, the HTTP
client) starts and stops in `cleanup_ctx`, torn down in reverse order.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from yarl import URL

from infra_manager.clock import Clock, SystemClock
from infra_manager.commands import (
    CommandForwarder,
    DesiredRequest,
    ManagerUnavailable,
    SpawnRequest,
)
from infra_manager.fleet_state import FleetState, ManagerLink, StaleCheckin
from infra_manager.hub import FleetHub, encode_view
from infra_manager.metrics import InfraMetrics
from infra_manager.operator_stream import OperatorStreams
from infra_manager.settings import InfraSettings
from infra_manager.status_pipe import StatusPipes
from infra_manager.tasks import TaskSet
from protocol.codec import CodecError, decode
from protocol.control import ManagerCheckin, ManagerCheckinAccepted, WorkerKind
from protocol.errors import ErrorCode
from tradefleet.service import metrics as service_metrics
from tradefleet.service.web import ApiError, json_response, make_app, read_model, require_token

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

SETTINGS = web.AppKey("settings", InfraSettings)
HUB = web.AppKey("hub", FleetHub)
STREAMS = web.AppKey("operator_streams", OperatorStreams)
PIPES = web.AppKey("status_pipes", StatusPipes)
FORWARDER = web.AppKey("forwarder", CommandForwarder)
BACKGROUND = web.AppKey("background", TaskSet)

# Everything the dashboard loads comes from this server; nothing from a CDN.
CONTENT_SECURITY_POLICY = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                           "style-src 'self'; script-src 'self'; frame-ancestors 'none'")


def create_app(settings: InfraSettings, clock: Clock | None = None) -> web.Application:
    """The application for one infrastructure manager. `clock` is injectable for tests."""
    app = make_app()
    state = FleetState(settings.infra_id, settings.silence_timeout_s, clock or SystemClock())
    registry = CollectorRegistry()
    hub = FleetHub(state, InfraMetrics(registry, state.view))
    app[SETTINGS] = settings
    app[HUB] = hub
    app[STREAMS] = OperatorStreams(hub, settings.operator_token, settings.push_interval_s)
    service_metrics.install(app, registry)
    app.cleanup_ctx.append(_client_side)
    app.on_shutdown.append(_close_operator_streams)
    app.on_response_prepare.append(_security_headers)

    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_post("/v1/managers/checkin", manager_checkin)
    app.router.add_get("/v1/fleet", fleet)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/v1/stream", app[STREAMS].handle)
    app.router.add_post("/v1/locations/{location}/{kind}/spawn", spawn)
    app.router.add_put("/v1/locations/{location}/{kind}/desired", set_desired)
    app.router.add_post("/v1/workers/{worker_id}/drain", drain_worker)
    app.router.add_post("/v1/workers/{worker_id}/stop", stop_worker)
    app.router.add_post("/v1/locations/{location}/accounts/{account}/kill-switch",
                        account_kill_switch)
    app.router.add_post("/v1/kill-switch", fleet_kill_switch)
    app.router.add_get("/", dashboard)
    app.router.add_static("/static/", STATIC_DIR, follow_symlinks=False)
    return app


async def _client_side(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client, status pipes and silence ticker; all stopped on shutdown."""
    settings = app[SETTINGS]
    hub = app[HUB]
    # Connecting must fail fast (the manager is down); reads are bounded per use.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=3.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        pipes = StatusPipes(session, settings.infra_id, settings.join_token, hub.receive_frame,
                            stale_after_s=max(settings.silence_timeout_s,
                                              2 * settings.heartbeat_interval_s),
                            on_connect=hub.metrics.pipe_connects.inc)
        background = TaskSet("infra")
        app[PIPES] = pipes
        app[FORWARDER] = CommandForwarder(session, settings.operator_token,
                                          settings.command_timeout_s)
        app[BACKGROUND] = background
        background.start("silence-ticker", _tick_forever(hub, settings.silence_timeout_s))
        try:
            yield
        finally:
            await background.close(timeout=2.0)
            await pipes.close(timeout=5.0)


async def _tick_forever(hub: FleetHub, silence_timeout_s: float) -> None:
    # Fine enough that "silent" shows within a few percent of the timeout, coarse enough to idle.
    interval = max(0.02, min(0.25, silence_timeout_s / 10))
    while True:
        hub.tick()
        await asyncio.sleep(interval)


async def _close_operator_streams(app: web.Application) -> None:
    await app[STREAMS].close_all()


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("Referrer-Policy", "no-referrer")


# ---------------------------------------------------------------------- service endpoints


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "infra_id": request.app[SETTINGS].infra_id,
                          "pid": os.getpid()})


async def ready(request: web.Request) -> web.Response:
    """Ready once the background machinery (pipes, ticker) runs."""
    app = request.app
    running = BACKGROUND in app and len(app[BACKGROUND]) > 0
    body = {"ready": running, "infra_id": app[SETTINGS].infra_id,
            "managers": len(app[HUB].state.links())}
    return json_response(body, status=200 if running else 503)


async def dashboard(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------------- managers


async def manager_checkin(request: web.Request) -> web.Response:
    """A manager announces itself; we (re)open our status pipe to it."""
    app = request.app
    require_token(request, app[SETTINGS].join_token)
    checkin = await read_model(request, ManagerCheckin)
    url = URL(checkin.url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ApiError(400, ErrorCode.INVALID_FIELD,
                       "invalid field 'url': expected an http(s) base URL", "url")
    try:
        outcome = app[HUB].check_in(checkin)
    except StaleCheckin as exc:
        raise ApiError(409, ErrorCode.STALE_EPOCH, str(exc), "epoch") from exc
    link = app[HUB].state.link(checkin.manager_id)
    assert link is not None  # just checked in
    app[PIPES].ensure(link)
    log.info("manager checked in", manager_id=checkin.manager_id, location=checkin.location,
             kind=checkin.kind.value, epoch=checkin.epoch, url=checkin.url,
             outcome=outcome.value)
    return json_response(ManagerCheckinAccepted(infra_id=app[SETTINGS].infra_id))


# ---------------------------------------------------------------------- operators: reading


def _operator(request: web.Request) -> None:
    require_token(request, request.app[SETTINGS].operator_token)


async def fleet(request: web.Request) -> web.Response:
    _operator(request)
    view = request.app[HUB].state.view()
    return web.Response(body=encode_view(view), content_type="application/json")


async def events(request: web.Request) -> web.Response:
    """`GET /v1/events?since=SEQ&limit=N`: event-log lines after `since`, oldest first."""
    _operator(request)
    since = _int_query(request, "since", 0, minimum=0)
    limit = _int_query(request, "limit", 500, minimum=1, maximum=2000)
    state = request.app[HUB].state
    return web.Response(body=encode_view({"events": state.events_since(since, limit),
                                          "last_seq": state.last_event_seq}),
                        content_type="application/json")


def _int_query(request: web.Request, name: str, default: int, minimum: int,
               maximum: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum or (maximum is not None and value > maximum):
        bound = f" and at most {maximum}" if maximum is not None else ""
        raise ApiError(400, ErrorCode.INVALID_FIELD,
                       f"invalid field '{name}': expected an integer of at least {minimum}{bound}",
                       name)
    return value


# ---------------------------------------------------------------------- operators: commands


def _manager_at(request: web.Request) -> ManagerLink:
    location = request.match_info["location"]
    raw_kind = request.match_info["kind"]
    state = request.app[HUB].state
    if not state.has_location(location):
        raise ApiError(404, ErrorCode.NOT_FOUND, f"unknown location '{location}'")
    try:
        kind = WorkerKind(raw_kind)
    except ValueError:
        kinds = ", ".join(k.value for k in WorkerKind)
        raise ApiError(404, ErrorCode.NOT_FOUND,
                       f"unknown kind '{raw_kind}'; expected one of {kinds}") from None
    link = state.manager_for(location, kind)
    if link is None:
        raise ApiError(404, ErrorCode.NOT_FOUND,
                       f"no {kind.value} manager has checked in at location '{location}'")
    return link


def _owner(request: web.Request) -> tuple[str, ManagerLink]:
    worker_id = request.match_info["worker_id"]
    link = request.app[HUB].state.owner_of(worker_id)
    if link is None:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"unknown worker '{worker_id}'")
    return worker_id, link


async def spawn(request: web.Request) -> web.Response:
    _operator(request)
    link = _manager_at(request)
    body = await read_model(request, SpawnRequest)
    payload = {"count": body.count, "request_id": body.request_id or f"infra-{uuid.uuid4().hex}"}
    return await _forward(request, link, "POST", "/v1/workers/spawn", payload, "spawn",
                          count=body.count, request_id=payload["request_id"])


async def set_desired(request: web.Request) -> web.Response:
    _operator(request)
    link = _manager_at(request)
    body = await read_model(request, DesiredRequest)
    return await _forward(request, link, "PUT", "/v1/desired", {"desired": body.desired},
                          "set_desired", desired=body.desired)


async def drain_worker(request: web.Request) -> web.Response:
    _operator(request)
    worker_id, link = _owner(request)
    return await _forward(request, link, "POST", f"/v1/workers/{worker_id}/drain", None,
                          "drain", worker_id=worker_id)


async def stop_worker(request: web.Request) -> web.Response:
    _operator(request)
    worker_id, link = _owner(request)
    return await _forward(request, link, "POST", f"/v1/workers/{worker_id}/stop", None,
                          "stop", worker_id=worker_id)


async def _kill_switch_body(request: web.Request) -> dict[str, Any]:
    """The `{active, reason?}` body of a kill-switch command (the BrokerManager checks it
    again)."""
    raw = await request.read()
    try:
        body = decode(raw) if raw else {}
    except CodecError as exc:
        raise ApiError(400, ErrorCode.BAD_JSON, str(exc)) from exc
    if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
        raise ApiError(400, ErrorCode.MISSING_FIELD, "a kill switch needs active: true|false",
                       "active")
    return {"active": body["active"], "reason": str(body.get("reason") or "")[:200]}


async def account_kill_switch(request: web.Request) -> web.Response:
    """`POST /v1/locations/{location}/accounts/{account}/kill-switch` `{active, reason?}`:
    forwarded to the location's BrokerManager, which hands it to the account's owner."""
    _operator(request)
    location, account = request.match_info["location"], request.match_info["account"]
    if not request.app[HUB].state.has_location(location):
        raise ApiError(404, ErrorCode.NOT_FOUND, f"unknown location '{location}'")
    link = request.app[HUB].state.manager_for(location, WorkerKind.BROKER)
    if link is None:
        raise ApiError(404, ErrorCode.NOT_FOUND,
                       f"no broker manager has checked in at location '{location}'")
    body = await _kill_switch_body(request)
    return await _forward(request, link, "POST", f"/v1/accounts/{account}/kill-switch", body,
                          "kill_switch", account=account, active=body["active"])


async def fleet_kill_switch(request: web.Request) -> web.Response:
    """`POST /v1/kill-switch` `{active, reason?}`: the fleet-wide kill switch, sent to the
    BrokerManager of every location. 200 when every one took it, else 207 with the failures."""
    _operator(request)
    body = await _kill_switch_body(request)
    state = request.app[HUB].state
    locations = sorted({link.location for link in state.links()
                        if link.kind is WorkerKind.BROKER})
    results: dict[str, Any] = {}
    ok = True
    for location in locations:
        link = state.manager_for(location, WorkerKind.BROKER)
        if link is None:
            results[location] = {"status": 503, "error": "no broker manager is heard"}
            ok = False
            continue
        try:
            answer = await _forward(request, link, "POST", "/v1/kill-switch", body,
                                    "fleet_kill_switch", active=body["active"])
        except ApiError as exc:
            results[location] = {"status": exc.status, "error": exc.text}
            ok = False
            continue
        relayed = decode(answer.body) if isinstance(answer.body, bytes) else {}
        results[location] = {"status": answer.status,
                             **(relayed if isinstance(relayed, dict) else {})}
        ok = ok and answer.status == 200
    return json_response({"kill_switch": body["active"], "locations": results},
                         status=200 if ok else 207)


async def _forward(request: web.Request, link: ManagerLink, method: str, path: str,
                   payload: dict[str, Any] | None, action: str, **details: Any) -> web.Response:
    """Send the command to `link`'s manager and relay its answer (or a coded 503/502)."""
    app = request.app
    hub = app[HUB]
    target = {"location": link.location, "kind": link.kind.value, "manager_id": link.manager_id}
    try:
        relayed = await app[FORWARDER].send(link, method, path, payload)
    except ManagerUnavailable as exc:
        hub.metrics.operator_commands.labels(action, "503").inc()
        hub.record_operator_action(action, status=503, error=str(exc), **target, **details)
        log.warning("operator command failed", action=action, error=str(exc), **target)
        raise ApiError(503, ErrorCode.UNAVAILABLE, str(exc)) from exc
    try:
        answer = decode(relayed.body) if relayed.body else {}
    except CodecError:
        hub.metrics.operator_commands.labels(action, "502").inc()
        message = (f"manager {link.manager_id} answered HTTP {relayed.status} without a JSON "
                   "body")
        hub.record_operator_action(action, status=502, error=message, **target, **details)
        raise ApiError(502, ErrorCode.UNAVAILABLE, message) from None
    hub.metrics.operator_commands.labels(action, str(relayed.status)).inc()
    outcome: dict[str, Any] = {"status": relayed.status}
    error = answer.get("error")
    if isinstance(error, dict):
        outcome["error"] = error.get("code")
    hub.record_operator_action(action, **outcome, **target, **details)
    log.info("operator command forwarded", action=action, status=relayed.status, **target,
             **details)
    return web.Response(body=relayed.body or b"{}", status=relayed.status,
                        content_type="application/json")
