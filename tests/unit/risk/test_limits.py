"""The risk engine, one rule at a time, with the exact sentences an algo reads."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from protocol.errors import ErrorCode
from protocol.market import Side
from protocol.orders import ModifyOrder, NewOrder
from protocol.risk import RiskLimits
from workers.broker.risk.limits import (
    ACCEPT,
    AccountView,
    Holding,
    Refuse,
    RiskEngine,
    Verdict,
    WorkingOrder,
    worst_case,
)

from .common import ACCOUNT, SECOND, START_NS, order

D = Decimal
NOW = START_NS


class Prices:
    def __init__(self, **by_base: str) -> None:
        self._prices = {f"{k}/USD": D(v) for k, v in by_base.items()}

    def reference_price(self, instrument: str) -> Decimal | None:
        return self._prices.get(instrument)


BTC_100 = Prices(BTC="100", ETH="10", SOL="1")


def working(cid: str, side: str, qty: str, price: str | None, instrument: str = "BTC/USD",
            filled: str = "0") -> WorkingOrder:
    return WorkingOrder(cid, instrument, Side(side), D(qty), D(filled),
                        None if price is None else D(price))


def check(limits: RiskLimits, new_order: NewOrder | None = None, state: AccountView | None = None,
          prices: Prices = BTC_100, tag: str | None = None) -> Verdict:
    return RiskEngine(limits).check(new_order or order(), state or AccountView(), prices, NOW,
                                    trader_tag=tag)


def test_no_limits_accepts_anything() -> None:
    assert check(RiskLimits(), order(qty="1000000", price="1")) == ACCEPT
    # No price, no state: nothing is valued when nothing is limited; a kill switch still wins.
    assert check(RiskLimits(), order(instrument="NEW/USD"), prices=Prices()) == ACCEPT
    assert check(RiskLimits(), state=AccountView(kill_switch="the account kill switch (ops)")
                 ).code is ErrorCode.KILL_SWITCH  # type: ignore[union-attr]


def test_an_engine_knows_whether_any_limit_is_set() -> None:
    assert not RiskEngine(RiskLimits()).restricts
    assert not RiskEngine(RiskLimits(currency="EUR", max_position_qty={})).restricts
    assert RiskEngine(RiskLimits(max_open_positions=0)).restricts
    assert RiskEngine(RiskLimits(allowed_instruments=frozenset())).restricts  # allows nothing
    tagged = RiskLimits.model_validate({"trader_tags": {"mm": {"max_open_positions": 1}}})
    assert RiskEngine(tagged).restricts
    engine = RiskEngine(tagged)
    engine.update(RiskLimits())
    assert not engine.restricts and engine.longest_rate_window_ns == 0
    rates = RiskLimits.model_validate({
        "max_order_rate": {"max_orders": 5, "window_seconds": "1"},
        "trader_tags": {"mm": {"max_order_rate": {"max_orders": 50, "window_seconds": "120"}}}})
    assert RiskEngine(rates).longest_rate_window_ns == 120 * SECOND


def test_limits_are_strict_config() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        RiskLimits.model_validate({"max_order_notionl": "1"})
    with pytest.raises(ValidationError, match="floats are not exact"):
        RiskLimits.model_validate({"max_order_notional": 1.5})
    with pytest.raises(ValidationError, match="between 0 and 1"):
        RiskLimits.model_validate({"price_band": "5"})
    limits = RiskLimits.model_validate({"max_order_notional": "10000"})
    with pytest.raises(ValidationError):
        limits.max_order_notional = D(1)  # type: ignore[misc]
    assert all(f.description for f in RiskLimits.model_fields.values())


def test_order_notional() -> None:
    limits = RiskLimits(max_order_notional=D("10000"))
    assert check(limits, order(qty="100", price="100")) == ACCEPT
    assert check(limits, order(qty="125", price="100")) == Refuse(
        ErrorCode.RISK_ORDER_NOTIONAL,
        "order notional 12,500.00 USD exceeds max_order_notional 10,000.00",
    )


def test_a_market_order_is_valued_at_the_upper_band_edge() -> None:
    limits = RiskLimits(max_order_notional=D("10000"), price_band=D("0.05"))
    # 100 lots at the reference 100 would be 10,000; at the band edge 105 it is 10,500.
    assert check(limits, order(qty="100", price=None)) == Refuse(
        ErrorCode.RISK_ORDER_NOTIONAL,
        "order notional 10,500.00 USD exceeds max_order_notional 10,000.00",
    )
    assert check(limits, order(qty="95", price=None)) == ACCEPT


def test_a_market_order_without_any_price_cannot_be_valued() -> None:
    limits = RiskLimits(max_order_notional=D("10000"))
    assert check(limits, order(price=None), prices=Prices()) == Refuse(
        ErrorCode.RISK_NO_PRICE,
        "no trade or quote of BTC/USD has been seen yet, so its exposure cannot be valued "
        "against the limits",
    )


def test_price_band_against_the_reference() -> None:
    limits = RiskLimits(price_band=D("0.05"))
    assert check(limits, order(price="105")) == ACCEPT
    assert check(limits, order(side="sell", price="95")) == ACCEPT
    assert check(limits, order(price="105.5")) == Refuse(
        ErrorCode.RISK_PRICE_BAND,
        "price 105.5 is 5.50% away from the BTC/USD reference price 100, beyond price_band 5.00%",
    )
    assert check(limits, order(side="sell", price="90")).code is ErrorCode.RISK_PRICE_BAND  # type: ignore[union-attr]
    assert check(limits, order(), prices=Prices()) == Refuse(
        ErrorCode.RISK_NO_PRICE,
        "no trade or quote of BTC/USD has been seen yet to check price_band against",
    )


def test_allowed_instruments() -> None:
    limits = RiskLimits(allowed_instruments=frozenset({"BTC/USD", "SOL/USD"}))
    assert check(limits) == ACCEPT
    assert check(limits, order(instrument="ETH/USD", price="10")) == Refuse(
        ErrorCode.RISK_INSTRUMENT_NOT_ALLOWED,
        "ETH/USD is not in allowed_instruments (BTC/USD, SOL/USD)",
    )


def test_notional_limits_need_one_quote_currency() -> None:
    limits = RiskLimits(max_gross_exposure=D("1000"))
    assert check(limits, order(instrument="ETH/BTC", price="0.05")) == Refuse(
        ErrorCode.RISK_INSTRUMENT_NOT_ALLOWED,
        "ETH/BTC is quoted in BTC, but the notional limits are counted in USD",
    )
    assert check(RiskLimits(), order(instrument="ETH/BTC", price="0.05")) == ACCEPT


def test_order_rate_counts_a_sliding_window() -> None:
    limits = RiskLimits.model_validate({"max_order_rate": {"max_orders": 3,
                                                           "window_seconds": "1"}})
    recent = AccountView(admitted_at=(NOW - 2 * SECOND, NOW - SECOND // 2, NOW - 10, NOW))
    assert check(limits, state=recent) == Refuse(
        ErrorCode.RISK_ORDER_RATE,
        "3 orders were accepted in the last 1 s, the most max_order_rate allows (3 per 1 s)",
    )
    older = AccountView(admitted_at=(NOW - 2 * SECOND, NOW - SECOND, NOW - 10))
    assert check(limits, state=older) == ACCEPT  # the one at exactly -1 s has left the window
    # A long history before the window changes nothing; the count stops at the limit.
    history = tuple(NOW - 10 * SECOND + i for i in range(10_000))
    assert check(limits, state=AccountView(admitted_at=history + (NOW - 10,))) == ACCEPT
    assert check(limits, state=AccountView(admitted_at=history + (NOW,) * 5)) == Refuse(
        ErrorCode.RISK_ORDER_RATE,
        "3 orders were accepted in the last 1 s, the most max_order_rate allows (3 per 1 s)",
    )


def test_max_open_positions_counts_working_orders() -> None:
    limits = RiskLimits(max_open_positions=2)
    state = AccountView(holdings={"BTC/USD": Holding(D(1), D(100))},
                        working=[working("w1", "buy", "1", "10", "ETH/USD")])
    assert check(limits, order(instrument="BTC/USD"), state) == ACCEPT
    assert check(limits, order(instrument="SOL/USD", price="1"), state) == Refuse(
        ErrorCode.RISK_MAX_POSITIONS,
        "instruments with a position or working order would number 3, above "
        "max_open_positions 2",
    )


def test_position_size_assumes_every_working_buy_fills() -> None:
    limits = RiskLimits(max_position_qty={"BTC/USD": D("5")})
    state = AccountView(holdings={"BTC/USD": Holding(D(3), D(100))},
                        working=[working("w1", "buy", "1.5", "99")])
    assert check(limits, order(qty="0.5"), state) == ACCEPT
    assert check(limits, order(qty="0.51"), state) == Refuse(
        ErrorCode.RISK_POSITION_SIZE,
        "BTC/USD position could reach 5.01 if working orders fill, beyond max_position_qty 5",
    )


def test_position_size_on_the_short_side() -> None:
    limits = RiskLimits(max_position_qty={"BTC/USD": D("5")})
    state = AccountView(holdings={"BTC/USD": Holding(D(1), D(100))},
                        working=[working("w1", "sell", "4", "101")])
    assert check(limits, order(side="sell", qty="2", price="101"), state) == ACCEPT  # -5
    assert check(limits, order(side="sell", qty="3", price="101"), state) == Refuse(
        ErrorCode.RISK_POSITION_SIZE,
        "BTC/USD position could reach -6 if working orders fill, beyond max_position_qty 5",
    )
    # A buy moves the other end of the range, which stays within the limit.
    assert check(limits, order(side="buy", qty="2"), state) == ACCEPT


def test_an_order_that_reduces_an_oversize_position_is_accepted() -> None:
    limits = RiskLimits(max_position_qty={"BTC/USD": D("5")}, max_position_notional=D("100"))
    state = AccountView(holdings={"BTC/USD": Holding(D(8), D(100))})
    assert check(limits, order(side="sell", qty="3"), state) == ACCEPT
    # Through zero to -8 is no worse than +8; one lot further is.
    assert check(limits, order(side="sell", qty="16"), state) == ACCEPT
    assert check(limits, order(side="sell", qty="16.01"), state).code is (  # type: ignore[union-attr]
        ErrorCode.RISK_POSITION_SIZE)
    assert check(limits, order(side="buy", qty="0.01"), state).code is (  # type: ignore[union-attr]
        ErrorCode.RISK_POSITION_SIZE)


def test_position_notional_at_the_highest_price_involved() -> None:
    limits = RiskLimits(max_position_notional=D("1000"))
    # 8 at mark 100 plus a working buy of 1 at 110: worst 9 valued at 110 = 990.
    state = AccountView(holdings={"BTC/USD": Holding(D(8), D(90))},
                        working=[working("w1", "buy", "1", "110")])
    assert check(limits, order(qty="0.09", price="100"), state) == ACCEPT
    assert check(limits, order(qty="0.1", price="100"), state) == Refuse(
        ErrorCode.RISK_POSITION_NOTIONAL,
        "BTC/USD position could reach 1,001.00 USD if working orders fill, above "
        "max_position_notional 1,000.00",
    )


def test_gross_exposure_sums_the_instruments() -> None:
    limits = RiskLimits(max_gross_exposure=D("1000"))
    state = AccountView(holdings={"BTC/USD": Holding(D(5), D(100)),
                                  "ETH/USD": Holding(D(-30), D(10))})
    assert check(limits, order(qty="2"), state) == ACCEPT  # 700 + 300 = 1000
    assert check(limits, order(qty="2.01"), state) == Refuse(
        ErrorCode.RISK_GROSS_EXPOSURE,
        "gross exposure could reach 1,001.00 USD if working orders fill, above "
        "max_gross_exposure 1,000.00",
    )
    assert check(limits, order(instrument="ETH/USD", qty="40", price="10"), state) == ACCEPT


def test_daily_loss_allows_only_reducing_orders() -> None:
    limits = RiskLimits(daily_loss_limit=D("1000"))
    state = AccountView(holdings={"BTC/USD": Holding(D(2), D(100))}, daily_loss=D("1250"))
    assert check(limits, order(qty="1"), state) == Refuse(
        ErrorCode.RISK_DAILY_LOSS,
        "today's loss 1,250.00 USD has reached daily_loss_limit 1,000.00; only orders that "
        "reduce a position are accepted",
    )
    assert check(limits, order(side="sell", qty="2"), state) == ACCEPT
    under = AccountView(holdings=state.holdings, daily_loss=D("999.99"))
    assert check(limits, order(qty="1"), under) == ACCEPT


def test_kill_switch_refuses_everything() -> None:
    state = AccountView(kill_switch="the account kill switch (ops: runaway algo)")
    assert check(RiskLimits(), order(side="sell"), state) == Refuse(
        ErrorCode.KILL_SWITCH,
        "trading is stopped by the account kill switch (ops: runaway algo); new orders are "
        "refused until an operator clears it",
    )


def test_trader_tag_limits_apply_on_top_of_the_account_limits() -> None:
    limits = RiskLimits.model_validate({
        "max_order_notional": "10000",
        "trader_tags": {"scalper": {"max_order_notional": "1000"}},
    })
    assert check(limits, order(qty="50")) == ACCEPT
    assert check(limits, order(qty="50"), tag="scalper") == Refuse(
        ErrorCode.RISK_ORDER_NOTIONAL,
        "order notional 5,000.00 USD exceeds max_order_notional of trader tag scalper 1,000.00",
    )
    assert check(limits, order(qty="200"), tag="scalper") == Refuse(
        ErrorCode.RISK_ORDER_NOTIONAL,
        "order notional 20,000.00 USD exceeds max_order_notional 10,000.00",
    )
    assert check(limits, order(qty="200"), tag="other").code is ErrorCode.RISK_ORDER_NOTIONAL  # type: ignore[union-attr]


def test_a_modify_is_checked_at_its_old_and_new_size() -> None:
    limits = RiskLimits(max_position_qty={"BTC/USD": D("5")}, price_band=D("0.1"))
    state = AccountView(working=[working("w1", "buy", "4", "100", filled="1")])
    engine = RiskEngine(limits)

    def modify(**fields: str) -> ModifyOrder:
        return ModifyOrder.model_validate({"client_order_id": "w1", "account": ACCOUNT, **fields})

    assert engine.check_modify(modify(qty="5"), state, BTC_100, NOW) == ACCEPT
    # 6 in total with 1 filled: 5 may still fill, exactly the limit.
    assert engine.check_modify(modify(qty="6"), state, BTC_100, NOW) == ACCEPT
    assert engine.check_modify(modify(qty="6.01"), state, BTC_100, NOW).code is (  # type: ignore[union-attr]
        ErrorCode.RISK_POSITION_SIZE)
    assert engine.check_modify(modify(price="111"), state, BTC_100, NOW).code is (  # type: ignore[union-attr]
        ErrorCode.RISK_PRICE_BAND)
    assert engine.check_modify(modify(qty="2"), state, BTC_100, NOW) == ACCEPT


def test_a_modify_on_its_way_counts_at_its_larger_size() -> None:
    limits = RiskLimits(max_position_qty={"BTC/USD": D("5")})
    pending = WorkingOrder("w1", "BTC/USD", Side.BUY, D(1), D(0), D(100),
                           alternative=(D(4), D(100)))
    state = AccountView(working=[pending])
    assert check(limits, order(qty="1"), state) == ACCEPT
    assert check(limits, order(qty="1.01"), state).code is ErrorCode.RISK_POSITION_SIZE  # type: ignore[union-attr]


def test_hot_changed_limits_apply_to_the_next_check() -> None:
    engine = RiskEngine(RiskLimits())
    assert engine.check(order(qty="500"), AccountView(), BTC_100, NOW) == ACCEPT
    engine.update(RiskLimits(max_order_notional=D("100")))
    assert isinstance(engine.check(order(qty="500"), AccountView(), BTC_100, NOW), Refuse)


def test_worst_case_figures() -> None:
    state = AccountView(holdings={"BTC/USD": Holding(D(2), D(90))},
                        working=[working("b", "buy", "1", "101"), working("s", "sell", "5", "99"),
                                 working("m", "buy", "1", None)])
    # Long end 4 at the market buy's band edge 105; short end -3 at the mark 100.
    assert worst_case(state, BTC_100, D("0.05")) == {"BTC/USD": (D(-3), D(4), D(420))}


def test_a_take_profit_sell_does_not_inflate_the_long_it_reduces() -> None:
    limits = RiskLimits(max_position_notional=D("1000"))
    state = AccountView(holdings={"BTC/USD": Holding(D(9), D(95))})
    assert check(limits, order(side="sell", qty="9", price="120"), state) == ACCEPT
    # Selling beyond the position opens a short valued at the sell's price: 1 × 120.
    assert check(limits, order(side="sell", qty="10", price="120"), state) == ACCEPT
    assert worst_case(AccountView(holdings=state.holdings,
                                  working=[working("s", "sell", "18", "120")]),
                      BTC_100, None) == {"BTC/USD": (D(-9), D(9), D(1080))}
