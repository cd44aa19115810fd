"""A real Market worker service (`workers.market.service.MarketService`) in its own process,
for the fan-out and sessions benchmarks: the worker's own session endpoint and Broker link code
on uvloop, as the worker runtime runs it, without a manager's control pipe (it plays no part in
the data path). Looks its Broker up through `DATA_DIR/run/broker-manager.url`.

`python -m bench.market_proc --data-dir D --token T` prints `URL PID` on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from aiohttp import web

from protocol.control import WorkerKind
from tradefleet.config import FleetConfig
from tradefleet.service.logs import configure
from tradefleet.service.loop import run
from tradefleet.service.web import listen, make_app
from workers.market.service import MarketService
from workers.runtime.service import WorkerContext


async def serve(stop: asyncio.Event, data_dir: Path, token: str) -> int:
    config = FleetConfig()
    ctx = WorkerContext(worker_id="market-bench", kind=WorkerKind.MARKET, epoch=1,
                        location="bench", manager_url="http://127.0.0.1:9", data_dir=data_dir,
                        config=config)
    service = MarketService(ctx, service_token=token, settings=config.market)
    app = make_app()
    service.add_routes(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    port = await listen(runner)
    await service.start()
    print(f"http://127.0.0.1:{port} {os.getpid()}", flush=True)
    await stop.wait()
    await service.stop()
    await runner.cleanup()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    configure("WARNING", worker_id="market-bench", kind="market")
    sys.exit(run(lambda stop: serve(stop, args.data_dir, args.token)))
