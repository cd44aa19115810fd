"""Shared builders for the data-plane unit tests: a fake clock and a small engine."""

from __future__ import annotations

from decimal import Decimal

import pytest

from protocol.market import InstrumentSpec
from protocol.orders import NewOrder
from workers.broker.adapters.paper.engine import MatchingEngine

START_NS = 1_700_000_000_000_000_000


class FakeClock:
    """Advances 1 µs per reading, so every event has a distinct, reproducible time."""

    def __init__(self, start: int = START_NS, step: int = 1_000) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> int:
        self.now += self.step
        return self.now


SPEC = InstrumentSpec(
    instrument="BTC/USD", tick_size=Decimal("0.5"), lot_size=Decimal("0.1"), min_qty=Decimal("0.2")
)


def make_engine(
    *, maker_bps: str = "0", taker_bps: str = "0", accounts: tuple[str, ...] = ("a", "b", "c")
) -> MatchingEngine:
    engine = MatchingEngine(
        [SPEC],
        maker_fee_bps=Decimal(maker_bps),
        taker_fee_bps=Decimal(taker_bps),
        clock=FakeClock(),
    )
    for account in accounts:
        engine.open_account(account, {"USD": Decimal(10_000)})
    return engine


def order(
    cid: str,
    account: str,
    side: str,
    qty: str,
    price: str | None = None,
    *,
    tif: str = "GTC",
    instrument: str = "BTC/USD",
) -> NewOrder:
    """A limit order when `price` is given, else a market order."""
    return NewOrder(
        client_order_id=cid,
        account=account,
        instrument=instrument,
        side=side,
        order_type="limit" if price is not None else "market",
        qty=qty,
        price=price,
        time_in_force=tif,
    )


@pytest.fixture
def engine() -> MatchingEngine:
    return make_engine()


@pytest.fixture
def fees_engine() -> MatchingEngine:
    return make_engine(maker_bps="10", taker_bps="20")
