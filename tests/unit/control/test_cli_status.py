"""`tradefleet status` shows each hosted trader: its status and its own PnL, as its Trader
worker reports them (the report of a real `PnlLedger`)."""

from __future__ import annotations

from typing import Any

from protocol.orders import Fill, OrderFilled
from tradefleet.cli.tables import render_traders
from workers.trader.pnl import PnlLedger

TS = 1_700_000_000_000_000_000


def filled(cid: str, side: str, qty: str, price: str) -> OrderFilled:
    fill = Fill(fill_id=f"f-{cid}", account="acct", client_order_id=cid, instrument="BTC/USD",
                side=side, qty=qty, price=price, fee="0", fee_currency="USD",
                liquidity="maker", ts=TS)
    return OrderFilled(account="acct", client_order_id=cid, instrument="BTC/USD", side=side,
                       order_type="limit", qty=qty, price=price, time_in_force="GTC",
                       status="filled", filled_qty=qty, remaining_qty="0", avg_price=price,
                       seq=1, ts=TS, fill=fill)


def fleet_with(*workers: dict[str, Any]) -> dict[str, Any]:
    return {"locations": [{"name": "east", "managers": [{"workers": list(workers)}]}]}


def test_a_trader_row_shows_its_status_position_and_pnl() -> None:
    ledger = PnlLedger()
    ledger.observe(filled("c1", "buy", "2", "100"))
    ledger.observe(filled("c2", "sell", "1", "110"))
    info = {"trader": "quoter", "account": "paper-1", "status": "running",
            "pnl": ledger.report()}
    text = render_traders(fleet_with({"id": "t-1", "kind": "trader", "info": info},
                                     {"id": "b-1", "kind": "broker",
                                      "info": {"account": "paper-1"}}))
    header, _, row = text.splitlines()
    assert header.split() == ["TRADER", "LOCATION", "WORKER", "ACCOUNT", "STATUS", "FILLS",
                              "POSITIONS", "REALIZED", "UNREALIZED"]
    assert row.split()[:6] == ["quoter", "east", "t-1", "paper-1", "running", "2"]
    assert "BTC/USD 1 @ 100" in row and "10 USD" in row


def test_a_failing_trader_says_why_and_no_trader_means_no_table() -> None:
    info = {"trader": "ma", "account": "paper-1", "status": "failed",
            "last_error": "boom in on_event"}
    text = render_traders(fleet_with({"id": "t-2", "kind": "trader", "info": info}))
    assert "failed (boom in on_event)" in text and "flat" in text
    assert render_traders(fleet_with({"id": "t-3", "kind": "trader",
                                      "info": {"status": "standby"}})) == ""
