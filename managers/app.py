"""The manager's REST and WebSocket API."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from typing import Any, Literal

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field

from managers.manager import CheckinError, Manager
from managers.sessions import SessionPlacer, SessionRefused, SessionRequest
from protocol.codec import encode
from protocol.control import DesiredRequest, SpawnRequest, WorkerCheckin, WorkerKind
from protocol.errors import ErrorCode
from protocol.fleet import ManagerSnapshot
from protocol.risk import RiskLimits
from tradefleet.service.web import (
    ApiError,
    bearer,
    json_response,
    make_app,
    read_model,
    require_token,
    tokens_equal,
)

MANAGER: web.AppKey[Manager] = web.AppKey("manager", Manager)
PLACER: web.AppKey[SessionPlacer] = web.AppKey("session_placer", SessionPlacer)


def _manager(request: web.Request) -> Manager:
    return request.app[MANAGER]


def _operator(request: web.Request) -> Manager:
    manager = _manager(request)
    require_token(request, manager.operator_token)
    return manager


async def health(request: web.Request) -> web.Response:
    manager = _manager(request)
    return json_response({"status": "ok", "manager_id": manager.id, "epoch": manager.epoch,
                          "pid": os.getpid()})


async def ready(request: web.Request) -> web.Response:
    return json_response({"ready": True})


async def checkin(request: web.Request) -> web.Response:
    body = await read_model(request, WorkerCheckin)
    try:
        accepted = _manager(request).accept_checkin(body)
    except CheckinError as exc:
        code = {401: ErrorCode.UNAUTHORIZED, 404: ErrorCode.NOT_FOUND}.get(exc.status,
                                                                            ErrorCode.CONFLICT)
        raise ApiError(exc.status, code, str(exc)) from exc
    return json_response(accepted)


async def get_manager(request: web.Request) -> web.Response:
    return json_response(_operator(request).view())


async def list_workers(request: web.Request) -> web.Response:
    return json_response({"workers": [w.model_dump(mode="json")
                                      for w in _operator(request).view().workers]})


async def events(request: web.Request) -> web.Response:
    return json_response({"events": list(_operator(request).recent_events)})


async def spawn(request: web.Request) -> web.Response:
    manager = _operator(request)
    body = await read_model(request, SpawnRequest)
    request_id = body.request_id or uuid.uuid4().hex
    ids = await manager.spawn(body.count, request_id)
    return json_response({"request_id": request_id, "workers": ids})


async def set_desired(request: web.Request) -> web.Response:
    manager = _operator(request)
    body = await read_model(request, DesiredRequest)
    manager.set_desired(body.desired)
    return json_response({"desired": body.desired})


def _worker_action(name: str):  # type: ignore[no-untyped-def]
    async def handler(request: web.Request) -> web.Response:
        manager = _operator(request)
        worker_id = request.match_info["worker_id"]
        try:
            getattr(manager, name)(worker_id)
        except KeyError:
            raise ApiError(404, ErrorCode.NOT_FOUND,
                           f"no live worker '{worker_id}' at this manager") from None
        return json_response({"worker_id": worker_id, "action": name, "accepted": True})
    return handler


async def stream(request: web.Request) -> web.StreamResponse:
    """Status pipe: full `ManagerSnapshot` on connect, then on every change and each heartbeat."""
    manager = _manager(request)
    require_token(request, manager.join_token, manager.operator_token)
    infra_id = request.headers.get("X-Tradefleet-Infra-Id")
    via_join = tokens_equal(bearer(request), manager.join_token)
    ws = web.WebSocketResponse(heartbeat=None)
    await ws.prepare(request)
    queue: asyncio.Queue[ManagerSnapshot] = asyncio.Queue()
    manager.subscribers.add(queue)
    key = id(ws)
    if via_join:
        manager.stream_infra_ids[key] = infra_id
    queue.put_nowait(ManagerSnapshot(manager=manager.view()))

    async def drain_incoming() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break

    reader = asyncio.create_task(drain_incoming(), name="stream-reader")
    try:
        while not ws.closed and not reader.done():
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            await ws.send_bytes(encode(getter.result()))
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        manager.subscribers.discard(queue)
        manager.stream_infra_ids.pop(key, None)
    return ws


async def create_session(request: web.Request) -> web.Response:
    """MarketManager: `POST /v1/sessions` with an algo API token."""
    manager = _manager(request)
    customer = manager.customers_by_token.get(bearer(request) or "")
    if customer is None:
        raise ApiError(401, ErrorCode.UNAUTHORIZED, "missing or unknown API token")
    body = await read_model(request, SessionRequest)
    try:
        answer = request.app[PLACER].place(customer, manager.config.customers[customer].accounts,
                                           body)
    except SessionRefused as exc:
        raise ApiError(exc.status, ErrorCode(exc.code), str(exc), exc.field) from exc
    return json_response(answer)


async def accounts(request: web.Request) -> web.Response:
    """BrokerManager: `GET /v1/accounts` — each account's order owner (service token), with
    the kill switch it reports, and the fleet-wide kill switch new owners inherit."""
    manager = _manager(request)
    require_token(request, manager.join_token, manager.operator_token)
    out: dict[str, Any] = {}
    for account in manager.sup.slots:
        owner = manager.sup.owner_of(account)
        out[account] = None if owner is None else {
            "worker_id": owner.id, "url": owner.url, "epoch": owner.slot_epoch or owner.epoch,
            "worker_epoch": owner.epoch,
            "state": owner.state.value, "ready": bool(owner.info.get("ready")),
            "kill_switch": owner.info.get("kill_switch")}
    fleet = manager.fleet_kill_switch or {"active": False}
    return json_response({"accounts": out, "fleet_kill_switch": fleet})


class KillSwitchBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    active: bool = Field(description="true: cancel every open order and refuse new ones.")
    reason: str = Field("", max_length=200, description="Why, for the journal and the algos.")
    scope: Literal["account", "fleet"] = Field(
        "account", description="fleet: the fleet-wide switch (kept apart from the account's).")


async def _to_account_owner(manager: Manager, account: str, risk: dict[str, Any]) -> None:
    """Hand a `risk` command to the account's current owner over its pipe."""
    if account not in manager.sup.slots:
        raise ApiError(404, ErrorCode.NOT_FOUND, f"no account {account!r} at this manager")
    owner = manager.sup.owner_of(account)
    if owner is None or owner.id not in manager.pipes:
        raise ApiError(503, ErrorCode.UNAVAILABLE,
                       f"account {account!r} has no owner right now; retry shortly")
    try:
        result = await manager.command(owner.id, {"risk": risk})
    except (KeyError, TimeoutError) as exc:
        raise ApiError(503, ErrorCode.UNAVAILABLE,
                       f"the owner of {account!r} did not answer; retry shortly") from exc
    if not result.ok:
        raise ApiError(400, ErrorCode.INVALID_FIELD, result.error or "refused by the owner")


async def kill_switch(request: web.Request) -> web.Response:
    """BrokerManager: `POST /v1/accounts/{account}/kill-switch` `{active, reason?, scope?}`
    (operator token): the owner cancels every open order and refuses new ones until cleared.
    Journaled by the account's position manager, so it survives a failover."""
    manager = _operator(request)
    body = await read_model(request, KillSwitchBody)
    account = request.match_info["account"]
    await _to_account_owner(manager, account, {"kill_switch": {
        "active": body.active, "reason": body.reason, "scope": body.scope,
        "by": request.headers.get("X-Tradefleet-Operator", "operator")[:64]}})
    return json_response({"account": account, "kill_switch": body.active})


async def fleet_kill_switch(request: web.Request) -> web.Response:
    """BrokerManager: `POST /v1/kill-switch` `{active, reason?}`: the fleet-wide switch.

    Persisted first (the registry), so every account assigned later inherits it until it is
    cleared; then handed to the owner of every account this manager holds. Answers which
    accounts took it, which have no owner now (`pending`: they take it when one is assigned)
    and which owners did not answer (`failed`, 207)."""
    manager = _operator(request)
    body = await read_model(request, KillSwitchBody)
    by = request.headers.get("X-Tradefleet-Operator", "operator")[:64]
    state = manager.set_fleet_kill_switch(body.active, body.reason, by)
    command = {"kill_switch": {"active": body.active, "reason": body.reason, "scope": "fleet",
                               "by": by}}
    done: list[str] = []
    pending: list[str] = []
    failed: dict[str, str] = {}
    for account in sorted(manager.sup.slots):
        owner = manager.sup.owner_of(account)
        if owner is None or owner.id not in manager.pipes:
            pending.append(account)
            continue
        try:
            await _to_account_owner(manager, account, command)
            done.append(account)
        except ApiError as exc:
            failed[account] = exc.text or exc.reason
    # A draining worker still serves its account until the new owner fences it: tell it too.
    for rec in list(manager.sup.records.values()):
        if rec.slot is not None and rec.live and not rec.counts_toward_desired \
                and rec.id in manager.pipes:
            with contextlib.suppress(KeyError, TimeoutError):
                await manager.command(rec.id, {"risk": command}, timeout_s=3.0)
    status = 200 if not failed else 207
    return json_response({"kill_switch": body.active, "fleet_kill_switch": state,
                          "accounts": done, "pending": pending, "failed": failed},
                         status=status)


async def put_limits(request: web.Request) -> web.Response:
    """BrokerManager: `PUT /v1/accounts/{account}/limits` `{...RiskLimits}` (operator token):
    the account's new limits, journaled (they win over the config file after a restart)."""
    manager = _operator(request)
    body = await read_model(request, RiskLimits)
    account = request.match_info["account"]
    limits = body.model_dump(mode="json", exclude_none=True)
    await _to_account_owner(manager, account, {"limits": limits})
    return json_response({"account": account, "limits": limits})


def build_app(manager: Manager) -> web.Application:
    app = make_app()
    app[MANAGER] = manager
    if manager.kind is WorkerKind.MARKET:
        placer = SessionPlacer(manager)
        app[PLACER] = placer
        manager.status_listeners.append(placer.note_status)
        app.router.add_post("/v1/sessions", create_session)
    if manager.kind is WorkerKind.BROKER:
        app.router.add_get("/v1/accounts", accounts)
        app.router.add_post("/v1/accounts/{account}/kill-switch", kill_switch)
        app.router.add_put("/v1/accounts/{account}/limits", put_limits)
        app.router.add_post("/v1/kill-switch", fleet_kill_switch)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_post("/v1/workers/checkin", checkin)
    app.router.add_get("/v1/manager", get_manager)
    app.router.add_get("/v1/workers", list_workers)
    app.router.add_get("/v1/events", events)
    app.router.add_post("/v1/workers/spawn", spawn)
    app.router.add_put("/v1/desired", set_desired)
    app.router.add_post("/v1/workers/{worker_id}/drain", _worker_action("drain"))
    app.router.add_post("/v1/workers/{worker_id}/stop", _worker_action("stop"))
    app.router.add_get("/v1/stream", stream)
    return app
