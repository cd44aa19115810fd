"""The hosted strategy's client: every event reaches the strategy and the ledger, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from protocol.orders import Fill
from tests.unit.trader.test_pnl import fill, filled
from tradefleet.strategy import Strategy, run_strategy
from workers.trader.pnl import PnlLedger
from workers.trader.service import LedgerClient


class ScriptedClient:
    """Stands in for the SDK's `MarketClient`: a fixed list of events, then the end."""

    def __init__(self, events: list[Any]) -> None:
        self._events = events
        self.placed: list[str] = []

    def events(self) -> Any:
        async def gen() -> Any:
            for event in self._events:
                yield event
        return gen()

    async def place_order(self, *args: Any) -> str:
        self.placed.append(" ".join(map(str, args)))
        return "handle"


class Recorder(Strategy):
    def __init__(self, client: Any, **params: Any) -> None:
        super().__init__(client, **params)
        self.seen: list[Any] = []

    async def on_event(self, event: Any) -> None:
        self.seen.append(event)
        if isinstance(event, Fill):
            # A simulated strategy bug, not a type check: which exception does not matter.
            raise RuntimeError("a strategy bug does not stop the bookkeeping")  # noqa: TRY004
        await self.client.place_order("BTC/USD", "buy", "1")


async def test_the_ledger_sees_what_the_strategy_sees() -> None:
    first = fill("buy", "1", "100")
    events = [filled(first), first, filled(fill("sell", "1", "110"))]
    inner = ScriptedClient(events)
    ledger = PnlLedger()
    client = LedgerClient(inner, ledger)
    strategy = Recorder(client)
    await asyncio.wait_for(run_strategy(strategy, client), 5)
    assert strategy.seen == events and strategy.errors == 1
    assert len(inner.placed) == 2  # everything else passes straight to the SDK client
    assert ledger.report()["instruments"]["BTC/USD"]["realized_pnl"] == "10"
