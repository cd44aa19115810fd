"""Strategies: the shape of a hosted algo, and the loop that runs one.

A strategy is a class taking a connected `MarketClient` and its parameters. The same class runs
as a hosted algo in a Trader worker (`[[traders]]` in the config) or from a plain script:

    async with await MarketClient.connect(url, token) as client:
        await run_strategy(MyStrategy(client, instrument="BTC/USD"), client)

Hooks are async and optional. An exception in a hook is logged and counted, never fatal to the
loop: a hosted algo keeps running through a bad tick.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class Strategy:
    """Base class of strategies. Subclasses override `on_start`, `on_event`, `on_stop`."""

    def __init__(self, client: Any, **params: Any) -> None:
        self.client = client
        self.params = params
        self.errors = 0

    async def on_start(self) -> None:
        """Subscribe and set up. Called once the client is connected."""

    async def on_event(self, event: Any) -> None:
        """Every event from the Market (market data, order events, errors), in order."""

    async def on_stop(self) -> None:
        """Called once before the strategy stops (cancel working orders here if you wish)."""

    def state(self) -> dict[str, Any]:
        """What an operator should see about this strategy (shown in the fleet view)."""
        return {}


def load_strategy_class(path: str, search: list[Path] | None = None) -> type[Strategy]:
    """Import `package.module:Class`. `search` directories are tried first (e.g. the project
    root holding `examples/`). Raises `ImportError`/`AttributeError` naming what is missing."""
    module_name, _, class_name = path.partition(":")
    for directory in search or []:
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"{path} is not a tradefleet.strategy.Strategy subclass")
    return cls


async def run_strategy(strategy: Strategy, client: Any, stop: asyncio.Event | None = None
                       ) -> None:
    """Drive `strategy` with `client`'s events until `stop` is set or the client closes."""
    stop = stop or asyncio.Event()
    await strategy.on_start()
    events = client.events().__aiter__()
    try:
        while not stop.is_set():
            next_event = asyncio.ensure_future(events.__anext__())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({next_event, stopper},
                                         return_when=asyncio.FIRST_COMPLETED)
            if next_event not in done:
                next_event.cancel()
                break
            stopper.cancel()
            try:
                event = next_event.result()
            except StopAsyncIteration:
                break
            try:
                await strategy.on_event(event)
            except Exception:  # a bad tick must not kill a hosted algo
                strategy.errors += 1
                log.exception("strategy hook failed", strategy=type(strategy).__name__)
    finally:
        await strategy.on_stop()
