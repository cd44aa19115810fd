"""A rate-controlled market-data source standing in for one Broker worker's venue side.

The fan-out and sessions benchmarks measure the Market worker, so the source must be able to
push more than the Market can take, at a rate the benchmark sets, while costing little CPU on a
two-core machine. No venue or paper exchange does that (the paper exchange's random walk is a
matching engine in Python). So this process plays the Broker worker's part of the link:

* `GET /v1/accounts` answers like the BrokerManager (the Market worker looks its Broker up
  there, with the service token);
* `WS /v1/link` speaks the Broker side of `protocol.link` (`link_hello` → `link_welcome`,
  `replay` → empty `replayed`, `md_subscribe`/`md_unsubscribe` counted per link), and writes
  market data through the Broker worker's own `workers.broker.link.MarketLink`: the same queue,
  the same writer task and the same `coalesce` into `market` frames as a real Broker;
* `WS /feed` gives the bare relay baseline the same thing: its frames are written by a
  `MarketLink` too, so the relay receives the same frames as the Market does.

`POST /rate {"rate": events_per_s, "target": "market" | "feed"}` starts (or, with 0, stops)
the emission: every millisecond the generator emits the trades due for BTC/USD (or, with
`--instruments K`, for S0/USD … S{K-1}/USD in turn, one stream per session), each with
`ts = time.time_ns()` when it is built, encodes it once and queues it on every target link.
`GET /stats` → events emitted and the links' backlog. Prints its URL on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time

import orjson
from aiohttp import WSMsgType, web

from tradefleet.service.web import listen
from workers.broker.link import MarketLink

TICK_S = 0.001
SPEC = {"instrument": "BTC/USD", "tick_size": "0.1", "lot_size": "0.0001", "min_qty": "0.0001"}


def instrument_names(count: int) -> list[str]:
    """The instruments the source trades: BTC/USD, or S0/USD … S{count-1}/USD."""
    return [f"S{i}/USD" for i in range(count)] if count > 0 else ["BTC/USD"]


class Source:
    def __init__(self, token: str, account: str, instruments: int = 0) -> None:
        self.instruments = instrument_names(instruments)
        self.specs = [{**SPEC, "instrument": name} for name in self.instruments]
        self.token = token
        self.account = account
        self.url = ""
        self.links: dict[str, list[MarketLink]] = {"market": [], "feed": []}
        self.subscribed: dict[int, int] = {}  # link id → md_subscribe count (trades of BTC/USD)
        self.rate = 0.0
        self.target = "market"
        self.emitted = 0
        self._ids = itertools.count(1)
        self._start = 0.0
        self._due_base = 0

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def accounts(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"accounts": {self.account: {
            "worker_id": "bench-source", "url": self.url, "epoch": 1, "state": "up"}}})

    async def link(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        hello = orjson.loads((await ws.receive(timeout=10)).data)
        link = MarketLink(ws, hello.get("market_id", "?"), max_backlog=10_000_000,
                          transport=request.transport)
        await ws.send_bytes(orjson.dumps({
            "type": "link_welcome", "account": self.account, "broker_id": "bench-source",
            "epoch": 1, "instruments": self.specs}))
        writer = asyncio.create_task(link.run_writer())
        self.links["market"].append(link)
        try:
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                data = orjson.loads(msg.data)
                kind = data.get("type")
                if kind == "replay":
                    link.send(orjson.dumps({"type": "replayed", "session_id": data["session_id"],
                                            "events": [], "last_seq": 0}))
                elif kind == "md_subscribe":
                    self.subscribed[link.id] = self.subscribed.get(link.id, 0) + 1
                elif kind == "md_unsubscribe":
                    self.subscribed[link.id] = self.subscribed.get(link.id, 0) - 1
        finally:
            self.links["market"].remove(link)
            writer.cancel()
        return ws

    async def feed(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        link = MarketLink(ws, "relay", max_backlog=10_000_000, transport=request.transport)
        writer = asyncio.create_task(link.run_writer())
        self.links["feed"].append(link)
        try:
            async for _msg in ws:
                pass
        finally:
            self.links["feed"].remove(link)
            writer.cancel()
        return ws

    async def set_rate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.rate = float(body["rate"])
        self.target = body.get("target", "market")
        self._start = time.monotonic()
        self._due_base = self.emitted
        return web.json_response({"rate": self.rate, "target": self.target})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({
            "emitted": self.emitted, "subscribed": sum(self.subscribed.values()),
            "backlog": {k: [link.backlog for link in v] for k, v in self.links.items()}})

    async def generate(self) -> None:
        trade_ids = itertools.count(1)
        dumps = orjson.dumps
        names, count = self.instruments, len(self.instruments)
        while True:
            await asyncio.sleep(TICK_S)
            if self.rate <= 0:
                continue
            due = self._due_base + int(self.rate * (time.monotonic() - self._start)) - self.emitted
            if due <= 0:
                continue
            links = self.links[self.target]
            sends = [link.send_market for link in links]
            for _ in range(due):
                n = next(trade_ids)
                data = dumps({"type": "trade", "instrument": names[n % count],
                              "trade_id": f"T{n}",
                              "price": f"{60000 + n % 200 / 10:.1f}", "qty": "0.0125",
                              "taker_side": "buy" if n & 1 else "sell", "ts": time.time_ns()})
                for send in sends:
                    send(data)
            self.emitted += due


async def main(token: str, account: str, instruments: int) -> None:
    source = Source(token, account, instruments)
    app = web.Application()
    app.router.add_get("/v1/accounts", source.accounts)
    app.router.add_get("/v1/link", source.link)
    app.router.add_get("/feed", source.feed)
    app.router.add_post("/rate", source.set_rate)
    app.router.add_get("/stats", source.stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = await listen(runner)
    source.url = f"http://127.0.0.1:{port}"
    print(source.url, flush=True)
    await source.generate()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--token", required=True)
    parser.add_argument("--account", default="paper-1")
    parser.add_argument("--instruments", type=int, default=0,
                        help="trade S0/USD ... S{K-1}/USD in turn instead of BTC/USD")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.run(main(args.token, args.account, args.instruments))
    except KeyboardInterrupt:
        sys.exit(0)
