"""The `signal` wire message and the position manager's answers to it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from protocol.errors import ErrorCode
from protocol.market import Side
from protocol.signals import (
    Direction,
    ExitFired,
    ExitKind,
    ExitLevels,
    Signal,
    SignalAccepted,
    SignalRejected,
)

BASE = {"type": "signal", "signal_id": "s-1", "account": "acct", "instrument": "BTC/USD"}


def signal(**fields: Any) -> Signal:
    return Signal.model_validate({**BASE, **fields})


def refusal(**fields: Any) -> list[tuple[str, tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        signal(**fields)
    return [(e["type"], e["loc"], e["msg"]) for e in info.value.errors()]


def test_a_full_signal_round_trips_with_decimals_as_strings() -> None:
    s = signal(direction="long", risk_fraction="0.01", entry_price="100.5", stop_loss="95",
               take_profit="120", trailing_distance="3.5", time_exit_at=1, expires_at=2)
    wire = orjson.loads(s.model_dump_json(exclude_none=True))
    assert wire == {**BASE, "direction": "long", "risk_fraction": "0.01",
                    "entry_price": "100.5", "stop_loss": "95", "take_profit": "120",
                    "trailing_distance": "3.5", "time_exit_at": 1, "expires_at": 2}
    assert Signal.model_validate(wire) == s
    assert s.target_side is Side.BUY and s.has_exits


def test_intent_forms() -> None:
    assert signal(direction="short", qty="2").target_side is Side.SELL
    assert signal(direction="flat").target_side is None
    assert signal(target_qty="-0.5").target_side is Side.SELL
    assert signal(target_qty="0").target_side is None
    assert signal(direction="long", qty="1").direction is Direction.LONG


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, ("missing_for_choice", ("target_qty",),
              "a signal needs a direction or a target_qty")),
        ({"direction": "long", "target_qty": "1", "qty": "1"},
         ("not_applicable", ("target_qty",), "give direction or target_qty, not both")),
        ({"direction": "long"}, ("missing_for_choice", ("risk_fraction",),
                                 "a long or short signal needs qty or risk_fraction")),
        ({"direction": "long", "qty": "1", "risk_fraction": "0.1", "stop_loss": "1"},
         ("not_applicable", ("risk_fraction",), "give qty or risk_fraction, not both")),
        ({"direction": "flat", "qty": "1"},
         ("not_applicable", ("qty",), "qty applies to direction long or short only")),
        ({"target_qty": "1", "risk_fraction": "0.1"},
         ("not_applicable", ("risk_fraction",),
          "risk_fraction applies to direction long or short only")),
        ({"direction": "long", "risk_fraction": "0.1"},
         ("missing_for_choice", ("stop_loss",), "sizing by risk_fraction needs a stop_loss")),
        ({"direction": "long", "qty": "1", "stop_loss": "10", "take_profit": "9"},
         ("not_applicable", ("take_profit",), "a long signal needs take_profit above stop_loss")),
        ({"direction": "short", "qty": "1", "stop_loss": "10", "take_profit": "11"},
         ("not_applicable", ("take_profit",),
          "a short signal needs take_profit below stop_loss")),
        ({"direction": "flat", "stop_loss": "1"},
         ("not_applicable", ("stop_loss",), "stop_loss does not apply to a flat signal")),
        ({"target_qty": "0", "time_exit_at": 5},
         ("not_applicable", ("time_exit_at",), "time_exit_at does not apply to a flat signal")),
    ],
)
def test_inconsistent_signals_are_refused_naming_the_field(
    fields: dict[str, Any], expected: tuple[str, tuple[Any, ...], str]
) -> None:
    assert expected in refusal(**fields)


def test_values_are_exact_and_in_range() -> None:
    assert refusal(direction="long", qty=1.5)[0][1] == ("qty",)  # a float is not exact
    assert refusal(direction="long", risk_fraction="1.5", stop_loss="1")[0][:2] == (
        "value_error", ("risk_fraction",))
    assert refusal(direction="long", qty="0")[0][1] == ("qty",)
    assert refusal(direction="long", qty="1", extra="x")[0][:2] == ("extra_forbidden", ("extra",))
    assert refusal(signal_id="x" * 49, direction="flat")[0][1] == ("signal_id",)
    assert refusal(signal_id="a:b", direction="flat")[0][1] == ("signal_id",)


def test_signals_are_frozen() -> None:
    s = signal(direction="flat")
    with pytest.raises(ValidationError):
        s.instrument = "ETH/USD"  # type: ignore[misc]


def test_server_answers_on_the_wire() -> None:
    accepted = SignalAccepted(account="acct", signal_id="s-1", instrument="BTC/USD",
                              target_qty=Decimal(-2), position_qty=Decimal(0),
                              client_order_id="pm:s-1:e", side=Side.SELL, qty=Decimal(2),
                              exits=ExitLevels(stop_loss=Decimal(110)), ts=7)
    assert orjson.loads(accepted.model_dump_json(exclude_none=True)) == {
        "type": "signal_accepted", "account": "acct", "signal_id": "s-1",
        "instrument": "BTC/USD", "target_qty": "-2", "position_qty": "0",
        "client_order_id": "pm:s-1:e", "side": "sell", "qty": "2",
        "exits": {"stop_loss": "110"}, "ts": 7,
    }
    rejected = SignalRejected(account="acct", signal_id="s-1", code=ErrorCode.RISK_ORDER_RATE,
                              message="m", ts=7)
    assert orjson.loads(rejected.model_dump_json())["code"] == "risk_order_rate"
    fired = ExitFired(account="acct", signal_id="s-1", instrument="BTC/USD",
                      kind=ExitKind.TRAILING_STOP, trigger_price=Decimal(97),
                      position_qty=Decimal(1), client_order_id="pm:s-1:x1",
                      close_qty=Decimal(1), ts=9)
    assert ExitFired.model_validate_json(fired.model_dump_json()) == fired
