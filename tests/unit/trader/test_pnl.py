"""The Trader worker's PnL ledger, fed real `protocol` events; no sockets."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from protocol.market import Ticker, Trade
from protocol.orders import Fill, OrderFilled, OrderPartiallyFilled
from workers.trader.pnl import PnlLedger

D = Decimal
TS = 1_700_000_000_000_000_000
_ids = iter(range(1, 1_000_000))


def fill(side: str, qty: str, price: str, fee: str = "0", instrument: str = "BTC/USD",
         cid: str = "c1", fill_id: str | None = None) -> Fill:
    return Fill(fill_id=fill_id or f"f{next(_ids)}", account="acct", client_order_id=cid,
                instrument=instrument, side=side, qty=qty, price=price, fee=fee,
                fee_currency="USD", liquidity="taker", ts=TS)


def filled(f: Fill, seq: int = 1) -> OrderFilled:
    return OrderFilled(account="acct", client_order_id=f.client_order_id,
                       instrument=f.instrument, side=f.side, order_type="market", qty=f.qty,
                       time_in_force="IOC", status="filled", filled_qty=f.qty,
                       remaining_qty="0", avg_price=f.price, seq=seq, ts=TS, fill=f)


def report(ledger: PnlLedger, instrument: str = "BTC/USD") -> dict[str, Any]:
    return ledger.report()["instruments"][instrument]  # type: ignore[no-any-return]


def test_average_cost_realized_and_unrealized_at_the_last_fill() -> None:
    ledger = PnlLedger()
    assert ledger.observe(filled(fill("buy", "1", "100", fee="0.1")))
    ledger.observe(filled(fill("buy", "3", "120", fee="0.3")))
    line = report(ledger)
    assert (line["position"], line["avg_cost"]) == ("4", "115")
    assert line["unrealized_pnl"] == "20"  # marked at the last fill, 120: (120-115)*4
    assert line["mark_source"] == "fill"
    ledger.observe(filled(fill("sell", "1", "130", fee="0.13")))
    line = report(ledger)
    assert (line["position"], line["avg_cost"], line["realized_pnl"]) == ("3", "115", "15")
    assert line["fees"] == {"USD": "0.53"}
    assert ledger.report()["totals"] == {"USD": {"realized": "15", "unrealized": "45"}}


def test_the_market_marks_the_position_once_it_is_seen() -> None:
    ledger = PnlLedger()
    ledger.observe(Trade(instrument="BTC/USD", trade_id="t1", price="99", qty="1",
                         taker_side="buy", ts=TS))
    ledger.observe(filled(fill("buy", "2", "100")))
    assert report(ledger)["unrealized_pnl"] == "-2"  # the market's 99, not the fill's 100
    ledger.observe(Ticker(instrument="BTC/USD", bid="104", ask="106", ts=TS))
    assert (report(ledger)["mark"], report(ledger)["unrealized_pnl"]) == ("105", "10")
    ledger.observe(Ticker(instrument="BTC/USD", bid="104", ask="106", last="107", ts=TS))
    assert report(ledger)["unrealized_pnl"] == "14"
    ledger.observe(Ticker(instrument="BTC/USD", ts=TS))  # an empty book: mark unchanged
    assert report(ledger)["mark"] == "107"
    # Prices of an instrument never traded do not make a line of their own.
    ledger.observe(Trade(instrument="ETH/USD", trade_id="t2", price="5", qty="1",
                         taker_side="sell", ts=TS))
    assert list(ledger.report()["instruments"]) == ["BTC/USD"]


def test_shorts_and_going_through_zero() -> None:
    ledger = PnlLedger()
    ledger.observe(filled(fill("sell", "2", "50")))
    assert (report(ledger)["position"], report(ledger)["avg_cost"]) == ("-2", "50")
    ledger.observe(filled(fill("buy", "3", "40")))  # closes 2 (+20), opens 1 long at 40
    line = report(ledger)
    assert (line["position"], line["avg_cost"], line["realized_pnl"]) == ("1", "40", "20")
    ledger.observe(filled(fill("sell", "1", "45")))
    line = report(ledger)
    assert (line["position"], line["avg_cost"], line["realized_pnl"]) == ("0", None, "25")
    assert line["unrealized_pnl"] == "0"


def test_a_fill_is_counted_once_however_it_arrives() -> None:
    ledger = PnlLedger()
    first = fill("buy", "0.5", "100", fill_id="x1", cid="a")
    partial = OrderPartiallyFilled(
        account="acct", client_order_id="a", instrument="BTC/USD", side="buy",
        order_type="limit", qty="1", price="100", time_in_force="GTC",
        status="partially_filled", filled_qty="0.5", remaining_qty="0.5", avg_price="100",
        ts=TS, fill=first)
    assert ledger.observe(partial)
    assert not ledger.observe(first)  # the standalone copy
    assert not ledger.observe(partial)  # a replay after a reconnect
    # The same venue fill id on another order is another fill.
    assert ledger.observe(fill("buy", "0.5", "100", fill_id="x1", cid="b"))
    assert report(ledger)["position"] == "1" and ledger.duplicates == 2


def test_other_events_are_ignored_and_quotes_are_kept_apart() -> None:
    ledger = PnlLedger()
    assert not ledger.observe(object())
    assert not ledger.observe({"type": "order_filled"})  # no fill on it: nothing to count
    ledger.observe(filled(fill("buy", "1", "10", instrument="ETH/EUR", fee="0.01")))
    ledger.observe(filled(fill("buy", "1", "100")))
    totals = ledger.report()["totals"]
    assert set(totals) == {"EUR", "USD"}
    assert ledger.report()["fees"] == {"USD": "0.01"}
    assert ledger.report()["fills"] == 2


@given(st.lists(st.tuples(st.sampled_from(["buy", "sell"]),
                          st.integers(min_value=1, max_value=50),
                          st.integers(min_value=1, max_value=2000)), min_size=1, max_size=40),
       st.integers(min_value=1, max_value=2000))
def test_pnl_adds_up_to_the_cash_flows(trades: list[tuple[str, int, int]], mark: int) -> None:
    """Realized + unrealized equals what selling everything at the mark would have earned:
    the cash of every fill plus the position valued at the mark."""
    ledger = PnlLedger()
    cash = D(0)
    position = D(0)
    for side, lots, ticks in trades:
        qty, price = D(lots) / 10, D(ticks) / 4
        ledger.observe(filled(fill(side, str(qty), str(price))))
        cash += -qty * price if side == "buy" else qty * price
        position += qty if side == "buy" else -qty
    ledger.observe(Trade(instrument="BTC/USD", trade_id="m", price=str(D(mark) / 4), qty="1",
                         taker_side="buy", ts=TS))
    entry = ledger.instruments["BTC/USD"]
    assert entry.position == position
    unrealized = entry.unrealized
    assert unrealized is not None
    expected = cash + position * D(mark) / 4
    assert abs(entry.realized + unrealized - expected) < D("1e-18")
