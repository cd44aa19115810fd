"""Positions checked against the venue's after a (re)connect: a difference is corrected by a
journaled record, so the rebuilt manager holds the same positions; nothing is invented for
instruments the venue does not report or that have orders working."""

from __future__ import annotations

from decimal import Decimal

from protocol.orders import Position
from protocol.signals import Signal
from workers.broker.risk.manager import Journal, SignalRequest
from workers.broker.risk.records import RISK_RECORD, PositionCorrected

from .common import ACCOUNT, order
from .desk import Desk

D = Decimal


def venue(instrument: str, qty: str, avg: str | None = None) -> Position:
    return Position(account=ACCOUNT, instrument=instrument, qty=D(qty),
                    avg_price=None if avg is None else D(avg), realized_pnl=D(0))


def test_a_different_venue_position_is_corrected_journaled_and_rebuilt() -> None:
    desk = Desk()
    desk.place(order("c1", qty="1", price="100"))
    desk.fill("c1", "100")
    assert desk.position() == 1
    check = desk.manager.check_positions([venue("BTC/USD", "1.5", "102")], desk.now)
    [effect] = check.effects
    assert isinstance(effect, Journal) and isinstance(effect.record, PositionCorrected)
    record = effect.record
    assert (record.instrument, record.ours_qty, record.venue_qty) == ("BTC/USD", D(1), D("1.5"))
    assert RISK_RECORD.validate_python(record.model_dump(mode="json")) == record
    assert desk.position() == D("1.5")
    assert desk.manager.positions.positions()[0].avg_price == D(102)
    desk.journal.append(record)
    desk.restart()  # asserts the rebuilt state equals the live one
    # Agreeing now: nothing more to correct.
    assert desk.manager.check_positions([venue("BTC/USD", "1.5")], desk.now).effects == []
    # Selling it all goes flat from the corrected quantity.
    desk.place(order("c2", side="sell", qty="1.5", price="103"))
    desk.fill("c2", "103")
    assert desk.position() == 0


def test_unreported_and_busy_instruments_are_left_alone() -> None:
    desk = Desk()
    desk.place(order("c1", qty="1", price="100"))
    desk.fill("c1", "100")
    desk.place(order("e1", qty="1", price="10", instrument="ETH/USD"))  # working
    spot = desk.manager.check_positions([], desk.now)  # a spot venue: no positions at all
    assert spot.effects == [] and spot.unreported == ["BTC/USD"]
    busy = desk.manager.check_positions([venue("ETH/USD", "3")], desk.now)
    assert busy.effects == [] and busy.working == ["ETH/USD"]
    assert desk.manager.positions.qty("ETH/USD") == 0


def test_a_correction_to_flat_retires_the_exit_plan_and_a_position_without_price_reduces() \
        -> None:
    desk = Desk()
    desk.quote("99", "101")
    desk.send(SignalRequest(Signal(signal_id="s1", account=ACCOUNT, instrument="BTC/USD",
                                   direction="long", qty="1", stop_loss="90"), "s1"))
    [entry] = desk.submitted()
    desk.fill(entry.client_order_id, "101")
    assert desk.manager.exits.active_for("BTC/USD") is not None
    desk.manager.check_positions([venue("BTC/USD", "0")], desk.now)
    assert desk.manager.exits.active_for("BTC/USD") is None  # nothing left to protect
    # The venue says short 2, without a price: a later buy reduces at its own price.
    desk.manager.check_positions([venue("BTC/USD", "-2")], desk.now)
    desk.place(order("c9", qty="1", price="100"))
    desk.fill("c9", "100")
    assert desk.position() == -1
