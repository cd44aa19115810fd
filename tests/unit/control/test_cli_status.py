"""`tradefleet status` shows each hosted trader: its status and its own PnL, as its Trader
worker reports them (the report of a real `PnlLedger`)."""

from __future__ import annotations

from typing import Any

from tests.unit.trader.test_pnl import fill, filled
from tradefleet.cli.tables import render_traders
from workers.trader.pnl import PnlLedger


def fleet_with(*workers: dict[str, Any]) -> dict[str, Any]:
    return {"locations": [{"name": "east", "managers": [{"workers": list(workers)}]}]}


def test_a_trader_row_shows_its_status_position_and_pnl() -> None:
    ledger = PnlLedger()
    ledger.observe(filled(fill("buy", "2", "100", cid="c1")))
    ledger.observe(filled(fill("sell", "1", "110", cid="c2")))
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
