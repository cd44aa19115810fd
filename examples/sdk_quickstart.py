"""Trade from your own script through a running fleet (start one with `make up` first).

    .venv/bin/python examples/sdk_quickstart.py [--data-dir .tradefleet]

Connects through the MarketManager with the `demo` customer's API token (generated into the
data dir by `tradefleet up`), reads the BTC/USD book, buys 0.01 at market, then rests a bid
below the market and cancels it, printing every step and the account's positions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from decimal import Decimal
from pathlib import Path

from tradefleet.client import MarketClient


async def main(data_dir: Path) -> None:
    manager_url = (data_dir / "run" / "market-manager.url").read_text().strip()
    token = json.loads((data_dir / "secrets.json").read_text())["api_token.demo"]

    async with await MarketClient.connect(manager_url, token) as client:
        print(f"session {client.session_id} on account {client.account}")
        await client.subscribe("BTC/USD", "book", depth=5)
        async for event in client.events():
            if event.type == "book_snapshot":
                best_bid = Decimal(event.bids[0][0])
                print(f"best bid {best_bid}, best ask {event.asks[0][0]}")
                break

        bought = await client.place_order("BTC/USD", "buy", "0.01", order_type="market",
                                          time_in_force="IOC")
        await bought.filled(timeout=10)
        print(f"bought {bought.filled_qty} at {bought.avg_price}")

        resting = await client.place_order("BTC/USD", "buy", "0.01", best_bid - 100)
        await resting.accepted(timeout=10)
        await client.cancel_order(resting.client_order_id)
        await resting.done(timeout=10)
        print(f"resting bid {resting.client_order_id}: {resting.status.value}")

        for position in (await client.positions()).positions:
            print(f"position {position.instrument}: {position.qty} @ {position.avg_price}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path(".tradefleet"))
    asyncio.run(main(parser.parse_args().data_dir))
