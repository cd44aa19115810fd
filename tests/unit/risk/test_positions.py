"""Positions from fills: exact averages, realized PnL, flips through zero, fees, daily loss."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import decode, encode
from protocol.market import MAX_DECIMAL_CHARS
from protocol.orders import Fill, Position, PositionsSnapshot
from protocol.session import parse_server_message
from workers.broker.risk.positions import DAY_NS, PositionBook, utc_day

from .common import ACCOUNT, START_NS

D = Decimal
_ids = iter(range(1, 1_000_000))


def fill(side: str, qty: str, price: str, *, fee: str = "0", fee_currency: str = "USD",
         instrument: str = "BTC/USD", ts: int = START_NS, fill_id: str | None = None) -> Fill:
    return Fill(fill_id=fill_id or f"f{next(_ids)}", account=ACCOUNT, client_order_id="c",
                instrument=instrument, side=side, qty=qty, price=price, fee=fee,
                fee_currency=fee_currency, liquidity="taker", ts=ts)


def book(*fills: Fill) -> PositionBook:
    b = PositionBook(ACCOUNT)
    for f in fills:
        b.apply(f)
    return b


def test_buys_average_and_a_sell_realizes_exactly() -> None:
    b = book(fill("buy", "1", "100"), fill("buy", "2", "101"))
    p = b.get("BTC/USD")
    assert p is not None and p.qty == 3
    assert b.positions()[0].avg_price == D("100.6666666666666666666666667")  # shown, 28 digits
    b.apply(fill("sell", "1", "102"))
    b.apply(fill("sell", "2", "102"))
    assert b.positions() == [Position(account=ACCOUNT, instrument="BTC/USD", qty=D(0),
                                      avg_price=None, realized_pnl=D(4))]


def test_an_average_without_a_finite_expansion_is_shown_to_28_digits() -> None:
    # 7800031/130: a quotient rounded to 160 digits and multiplied back by 130 gives
    # 7800031 again, which once passed for "exact" and put a 160-digit price on the wire.
    b = book(fill("buy", "0.01", "60000.5"), fill("buy", "0.0017", "59998.7"))
    [p] = b.positions()
    assert p.avg_price == D("60000.23846153846153846153846")
    held = b.get("BTC/USD")
    assert held is not None
    assert held.unrealized(D("60001")) == D("0.00891")  # 0.0117 * 99/130: exact
    answer = PositionsSnapshot(account=ACCOUNT, positions=b.positions(), ts=1)
    assert parse_server_message(decode(encode(answer))) == answer


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["buy", "sell"]),
                          st.integers(1, 10**6), st.integers(1, 10**8)), min_size=1,
                max_size=12),
       st.integers(1, 10**8))
def test_every_position_figure_can_be_sent(fills: list[tuple[str, int, int]], mark: int) -> None:
    """Whatever the fills (qty in 1e-4 lots, price in 0.1 ticks), every figure the book
    reports fits the wire and reads back equal, and an exact figure is not rounded."""
    b = book(*(fill(side, str(D(qty).scaleb(-4)), str(D(price).scaleb(-1)))
               for side, qty, price in fills))
    position = b.get("BTC/USD")
    assert position is not None
    unrealized = position.unrealized(D(mark).scaleb(-1))
    answer = PositionsSnapshot(account=ACCOUNT, positions=b.positions(), ts=1)
    assert parse_server_message(decode(encode(answer))) == answer
    for figure in [unrealized, *(f for p in answer.positions
                                 for f in (p.avg_price, p.realized_pnl) if f is not None)]:
        assert len(format(figure, "f")) <= MAX_DECIMAL_CHARS
    if position.avg_price is not None and position.avg_price.denominator in (1, 2, 4, 5, 8):
        assert Fraction(answer.positions[0].avg_price) == position.avg_price  # type: ignore[arg-type]


def test_a_flip_through_zero_closes_at_the_average_and_opens_at_the_fill() -> None:
    b = book(fill("buy", "2", "100"), fill("sell", "5", "110"))
    [p] = b.positions()
    assert (p.qty, p.avg_price, p.realized_pnl) == (D(-3), D(110), D(20))
    b.apply(fill("buy", "4", "105"))  # covers 3 short at 110 (+15), then long 1 at 105
    [p] = b.positions()
    assert (p.qty, p.avg_price, p.realized_pnl) == (D(1), D(105), D(35))


def test_short_positions_realize_the_other_way() -> None:
    b = book(fill("sell", "2", "100"), fill("buy", "1", "90"))
    [p] = b.positions()
    assert (p.qty, p.avg_price, p.realized_pnl) == (D(-1), D(100), D(10))
    assert b.get("BTC/USD").unrealized(D(95)) == D(5)  # type: ignore[union-attr]
    assert b.get("BTC/USD").unrealized(D(120)) == D(-20)  # type: ignore[union-attr]


def test_a_fill_is_counted_once() -> None:
    b = PositionBook(ACCOUNT)
    twice = fill("buy", "1", "100", fill_id="same")
    assert b.apply(twice) is True
    assert b.apply(twice) is False
    assert b.qty("BTC/USD") == 1


def test_fees_per_currency_and_in_the_daily_net() -> None:
    b = book(fill("buy", "1", "100", fee="0.5"),
             fill("sell", "1", "99", fee="0.01", fee_currency="BTC"),
             fill("buy", "1", "100", fee="3", fee_currency="KFEE"))
    p = b.get("BTC/USD")
    assert p is not None and p.fees == {"USD": D("0.5"), "BTC": D("0.01"), "KFEE": D(3)}
    # -1 realized, -0.5 USD fee, -0.01 BTC at 99 = -0.99; a KFEE fee has no USD value here.
    assert b.daily_realized(START_NS, "USD") == D("-2.49")
    assert b.daily_loss(START_NS, "USD") == D("2.49")


def test_the_daily_loss_starts_again_at_midnight_utc() -> None:
    midnight = (utc_day(START_NS) + 1) * DAY_NS
    b = book(fill("buy", "1", "100", ts=midnight - 1), fill("sell", "1", "90", ts=midnight - 1))
    assert b.daily_loss(midnight - 1, "USD") == D(10)
    assert b.daily_loss(midnight, "USD") == 0
    b.apply(fill("buy", "1", "100", ts=midnight + 5))
    b.apply(fill("sell", "1", "97", ts=midnight + 6))
    assert b.daily_loss(midnight + 7, "USD") == D(3)
    assert book(fill("buy", "1", "100"), fill("sell", "1", "120")).daily_loss(START_NS, "USD") == 0


def test_snapshot_and_restore() -> None:
    b = book(fill("buy", "1", "100"), fill("buy", "2", "101"), fill("sell", "1", "103", fee="1"),
             fill("sell", "2", "10", instrument="ETH/USD"))
    again = PositionBook.restore(ACCOUNT, b.snapshot())
    assert again.snapshot() == b.snapshot()
    assert again.positions() == b.positions()
    # The exact average survives: 7/3 realized before, 8/3 now, exactly 5 in all.
    again.apply(fill("sell", "2", "102"))
    assert again.get("BTC/USD").realized == 5  # type: ignore[union-attr]
