"""`GET /v1/stream`: the operators' live WebSocket of the fleet and the event log.

Frames sent (JSON text):

* `{"type": "welcome", "infra_id": ...}` once authenticated;
* `{"type": "fleet", "fleet": FleetView}` at connect, on every change (coalesced, at most one
  per `push_interval_s`) and at least once a second so ages stay fresh;
* `{"type": "events", "events": [...]}` with the event-log lines not yet sent (the recent log
  at connect);
* `{"type": "error", "code", "message"}` for a frame the server could not use.

Browsers cannot set headers on a WebSocket, so the operator token is accepted either as
`Authorization: Bearer` or as the first frame `{"type": "auth", "token": ...}`; a wrong token
closes the socket with 1008.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from infra_manager.hub import FleetHub, encode_view
from infra_manager.tasks import cancel_and_wait
from protocol.codec import CodecError, decode, encode
from protocol.errors import ErrorCode
from tradefleet.service.web import ApiError, bearer, tokens_equal

log = structlog.get_logger(__name__)

AUTH_TIMEOUT_S = 10.0
REFRESH_S = 1.0
RECENT_EVENTS = 200
MAX_BAD_FRAMES = 20
MAX_CLIENT_FRAME = 64 << 10


class OperatorStreams:
    """Serves operator streams and closes them all on shutdown."""

    def __init__(self, hub: FleetHub, operator_token: str, push_interval_s: float) -> None:
        self._hub = hub
        self._operator_token = operator_token
        self._push_interval_s = push_interval_s
        self._open: set[web.WebSocketResponse] = set()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        given = bearer(request)
        if given is not None and not tokens_equal(given, self._operator_token):
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "invalid token")
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_CLIENT_FRAME)
        await ws.prepare(request)
        self._open.add(ws)
        self._hub.metrics.operator_streams.inc()
        try:
            if given is None and not await self._authenticate(ws):
                return ws
            await _send(ws, encode({"type": "welcome", "infra_id": self._hub.state.infra_id}))
            await self._serve(ws)
        finally:
            self._open.discard(ws)
        return ws

    async def _authenticate(self, ws: web.WebSocketResponse) -> bool:
        try:
            msg = await ws.receive(timeout=AUTH_TIMEOUT_S)
        except TimeoutError:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"auth timeout")
            return False
        token = None
        if msg.type == WSMsgType.TEXT:
            try:
                frame = decode(msg.data)
            except CodecError:
                frame = {}
            if frame.get("type") == "auth" and isinstance(frame.get("token"), str):
                token = frame["token"]
        if token is None or not tokens_equal(token, self._operator_token):
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"invalid token")
            return False
        return True

    async def _serve(self, ws: web.WebSocketResponse) -> None:
        changed = self._hub.watch()
        sender = asyncio.get_running_loop().create_task(
            self._push(ws, changed), name="operator-stream:push")
        try:
            await self._read(ws)
        finally:
            self._hub.unwatch(changed)
            await cancel_and_wait(sender, timeout=2.0)

    async def _push(self, ws: web.WebSocketResponse, changed: asyncio.Event) -> None:
        """Send the fleet and new events whenever something changed, at a bounded rate."""
        try:
            await self._push_until_closed(ws, changed)
        except ConnectionResetError:
            pass  # the operator went away; the read loop ends the same way

    async def _push_until_closed(self, ws: web.WebSocketResponse, changed: asyncio.Event) -> None:
        state = self._hub.state
        last_seq = max(0, state.last_event_seq - RECENT_EVENTS)
        while not ws.closed:
            changed.clear()
            await _send(ws, self._hub.fleet_frame(time.monotonic()))
            events = state.events_since(last_seq, limit=RECENT_EVENTS)
            if events:
                last_seq = events[-1]["seq"]
                await _send(ws, encode_view({"type": "events", "events": events}))
            await asyncio.sleep(self._push_interval_s)
            try:
                await asyncio.wait_for(changed.wait(), REFRESH_S)
            except TimeoutError:
                pass

    async def _read(self, ws: web.WebSocketResponse) -> None:
        """Operators have nothing to send after auth; answer anything else with a coded error."""
        bad = 0
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                frame: dict[str, Any] = decode(msg.data)
            except CodecError as exc:
                reply = _error(ErrorCode.BAD_JSON, str(exc))
            else:
                if frame.get("type") in ("auth", "ping"):
                    if frame.get("type") == "ping":
                        await _send(ws, encode({"type": "pong"}))
                    continue
                reply = _error(ErrorCode.UNKNOWN_TYPE,
                               f"unknown frame type {frame.get('type')!r}; nothing is expected "
                               "from operators on this stream")
            bad += 1
            if bad > MAX_BAD_FRAMES:
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"too many bad frames")
                return
            await _send(ws, reply)

    async def close_all(self) -> None:
        for ws in list(self._open):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"infra manager stopping")


async def _send(ws: web.WebSocketResponse, data: bytes) -> None:
    await ws.send_str(data.decode())  # text frames: what a browser reads most simply


def _error(code: ErrorCode, message: str) -> bytes:
    return encode({"type": "error", "code": code.value, "message": message})
