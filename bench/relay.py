"""A bare WebSocket hop for the round-trip baseline: forwards every frame to the next hop and
every answer back, with nothing else (no parsing, no journal, no routing).

`python -m bench.relay --next ws://...` relays; `python -m bench.relay --answer` is the last hop,
answering each frame with a canned ack of the platform's ack size. Prints its URL on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import aiohttp
from aiohttp import web

ACK = (b'{"type":"batch","events":[{"type":"order_accepted","account":"bench-1",'
       b'"client_order_id":"c","order_id":"P-0000000001","instrument":"BTC/USD","side":"buy",'
       b'"order_type":"limit","qty":"0.01","price":"1000.0","time_in_force":"GTC",'
       b'"status":"accepted","filled_qty":"0","remaining_qty":"0.01","seq":1,'
       b'"ts":1795261422156253092}]}')


async def main(next_url: str | None) -> None:
    session = aiohttp.ClientSession()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if next_url is None:
            async for msg in ws:
                await ws.send_bytes(ACK)
            return ws
        upstream = await session.ws_connect(next_url)

        async def back() -> None:
            async for msg in upstream:
                await ws.send_bytes(msg.data if isinstance(msg.data, bytes)
                                    else msg.data.encode())

        task = asyncio.create_task(back())
        async for msg in ws:
            await upstream.send_bytes(msg.data if isinstance(msg.data, bytes)
                                      else msg.data.encode())
        task.cancel()
        await upstream.close()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"ws://127.0.0.1:{port}/", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--next", default=None)
    parser.add_argument("--answer", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.run(main(None if args.answer else args.next))
    except KeyboardInterrupt:
        sys.exit(0)
