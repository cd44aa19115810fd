"""The bare relay baseline of the fan-out benchmark: one upstream WebSocket in, every frame
written as it came to each connected client, nothing parsed, nothing batched (aiohttp + uvloop,
one process, as plain as the platform's own stack allows).

`python -m bench.fanout_relay --upstream ws://.../feed` prints `URL PID` on stdout.

`--blast N` measures the clients instead: no upstream, the same pre-built `batch` frame of N
trade events is written to every client over and over (each write awaits the socket's drain),
so the clients, not this process, set the pace: that is the client processes' capacity.

`--route` is the bare baseline of a stream per session (the sessions benchmark's
`--streams own`): a client names its instrument in a first `{"instrument": ...}` message (it is
answered `{"type":"subscribed"}`), and each upstream event goes, alone in its frame, to the
client of its instrument. Frames are parsed to find the instrument, nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import aiohttp
import orjson
from aiohttp import WSMsgType, web


def blast_frame(events: int) -> bytes:
    trades = [b'{"type":"trade","instrument":"BTC/USD","trade_id":"T%d","price":"60012.3",'
              b'"qty":"0.0125","taker_side":"buy","ts":1795261422156253092}' % n
              for n in range(events)]
    return b'{"type":"batch","events":[' + b",".join(trades) + b"]}"


async def blast(clients: list[web.WebSocketResponse], events: int) -> None:
    frame = blast_frame(events)
    while True:
        if not clients:
            await asyncio.sleep(0.05)
        for ws in list(clients):
            try:
                await ws.send_frame(frame, WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                pass
        await asyncio.sleep(0)


async def main(upstream_url: str | None, blast_events: int, route: bool = False) -> None:
    clients: list[web.WebSocketResponse] = []
    routes: dict[str, web.WebSocketResponse] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if not route:
            clients.append(ws)
        mine: list[str] = []
        try:
            async for msg in ws:
                if route and msg.type is WSMsgType.TEXT:
                    instrument = orjson.loads(msg.data).get("instrument")
                    if isinstance(instrument, str):
                        routes[instrument] = ws
                        mine.append(instrument)
                        await ws.send_frame(b'{"type":"subscribed"}', WSMsgType.TEXT)
        finally:
            if ws in clients:
                clients.remove(ws)
            for instrument in mine:
                routes.pop(instrument, None)
        return ws

    async def route_pump(upstream: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in upstream:
            frame = orjson.loads(msg.data)
            for event in frame["events"] if frame.get("type") == "market" else [frame]:
                ws = routes.get(event.get("instrument"))
                if ws is not None:
                    try:
                        await ws.send_frame(orjson.dumps(event), WSMsgType.TEXT)
                    except (ConnectionError, RuntimeError):
                        pass

    async def pump() -> None:
        async with aiohttp.ClientSession() as http:
            assert upstream_url is not None, "pump() runs only with an upstream"
            upstream = await http.ws_connect(upstream_url, max_msg_size=1 << 26)
            if route:
                await route_pump(upstream)
                return
            async for msg in upstream:
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                for ws in list(clients):  # noqa: PERF101 - a copy: handlers add and remove
                    try:
                        await ws.send_frame(data, WSMsgType.TEXT)
                    except (ConnectionError, RuntimeError):
                        pass

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"ws://127.0.0.1:{port}/ {os.getpid()}", flush=True)
    if blast_events:
        await blast(clients, blast_events)
    else:
        await pump()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", default=None)
    parser.add_argument("--blast", type=int, default=0)
    parser.add_argument("--route", action="store_true",
                        help="each event to the one client that named its instrument")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.run(main(args.upstream, args.blast, args.route))
    except KeyboardInterrupt:
        sys.exit(0)
