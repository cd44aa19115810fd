"""The paper exchange server's pure parts: configuration, stream request errors, and the
ledger view that tests compare the platform against. No sockets."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from protocol.errors import ErrorCode
from protocol.orders import Fill, OrderFilled, OrderPartiallyFilled
from tradefleet.config import ConfigError, FleetConfig
from workers.broker.adapters.paper import wire
from workers.broker.adapters.paper.adapter import PaperVenue
from workers.broker.adapters.paper.config import PaperConfig, PaperInstrument
from workers.broker.adapters.paper.server import ledger_view as venue_ledger
from workers.broker.adapters.paper.server import (
    load_paper_config,
    service_token,
    stream_request_problem,
)

from .conftest import FakeClock, order

D = Decimal


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- configuration


def test_an_unknown_paper_key_is_named_as_paper_dot_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_paper_config(write(tmp_path, "[paper]\nseeed = 3\n"))
    assert str(caught.value) == f"{tmp_path / 'fleet.toml'}: paper.seeed: unknown key"


def test_a_bad_nested_paper_value_names_its_full_path(tmp_path: Path) -> None:
    text = """
[[paper.instruments]]
instrument = "BTC/USD"
tick_size = 0.5
lot_size = 0.01
initial_price = 30000
volatility = -1
"""
    with pytest.raises(ConfigError, match=r"paper\.instruments\.0\.volatility: "):
        load_paper_config(write(tmp_path, text))


def test_a_valid_paper_table_is_used_and_a_relative_replay_file_follows_the_config(
    tmp_path: Path,
) -> None:
    _, paper = load_paper_config(
        write(tmp_path, '[paper]\nseed = 11\nstep_interval_s = 0.25\nreplay_file = "md.jsonl"\n')
    )
    assert paper.seed == 11 and paper.step_interval_s == 0.25
    assert paper.replay_file == tmp_path / "md.jsonl"


def test_without_a_file_the_default_venue_runs() -> None:
    _, paper = load_paper_config(None)
    assert paper == PaperConfig()


def test_the_service_token_is_the_configured_join_token_else_the_generated_one(
    tmp_path: Path,
) -> None:
    generated = service_token(FleetConfig(), tmp_path)
    assert generated and service_token(FleetConfig(), tmp_path) == generated
    configured = FleetConfig.model_validate({"security": {"join_token": "s3cret-join-token"}})
    assert service_token(configured, tmp_path) == "s3cret-join-token"


# ---------------------------------------------------------------- stream requests


def problem(data: dict[str, object]) -> tuple[ErrorCode, str, str | None]:
    with pytest.raises(ValidationError) as caught:
        wire.StreamRequest.model_validate(data)
    return stream_request_problem(caught.value)


def test_stream_request_errors_are_coded_and_name_the_field() -> None:
    base = {"op": "subscribe", "instrument": "BTC/USD", "channel": "book"}
    assert problem({**base, "op": "trade"})[0] is ErrorCode.UNKNOWN_TYPE
    assert problem({"instrument": "BTC/USD", "channel": "book"})[::2] == (
        ErrorCode.MISSING_FIELD,
        "op",
    )
    assert problem({**base, "colour": "red"})[::2] == (ErrorCode.UNKNOWN_FIELD, "colour")
    assert problem({**base, "depth": 0})[::2] == (ErrorCode.INVALID_FIELD, "depth")
    assert problem({**base, "instrument": "btc-usd"})[::2] == (
        ErrorCode.INVALID_FIELD,
        "instrument",
    )


# ---------------------------------------------------------------- the ledger view


def test_the_ledger_view_is_the_exact_sum_of_the_accounts_fills_and_fees() -> None:
    config = PaperConfig(
        instruments=[
            PaperInstrument(
                instrument="BTC/USD", tick_size="0.5", lot_size="0.01", initial_price="30000"
            )
        ],
        starting_cash={"USD": D("1000000")},
        maker_fee_bps="1",
        taker_fee_bps="7",
        step_interval_s=3600,
    )
    venue = PaperVenue(config, clock=FakeClock())
    for account in ("algo", "other"):
        venue.ensure_account(account)
    events = []
    for request in [
        order("s1", "other", "sell", "0.37", "30000.5"),
        order("s2", "other", "sell", "0.5", "30001"),
        order("b1", "algo", "buy", "0.6", "30001"),  # takes 0.37 and 0.23 from two makers
        order("x1", "algo", "sell", "0.13", "29000"),  # rests: nobody bids
        order("b2", "other", "buy", "0.2", "29999.5"),  # lifts x1 (algo is the maker)
        order("x2", "algo", "sell", "0.05", "29999.5"),  # hits what is left of b2
    ]:
        events += venue.submit(request)

    fills: list[Fill] = [
        e.fill
        for e in events
        if isinstance(e, OrderFilled | OrderPartiallyFilled) and e.account == "algo"
    ]
    assert {(f.client_order_id, f.liquidity.value) for f in fills} == {
        ("b1", "taker"),
        ("x1", "maker"),
        ("x2", "taker"),
    }
    view = venue_ledger(venue, "algo")
    signed = [(f.qty if f.side == "buy" else -f.qty, f) for f in fills]
    cash = (
        D("1000000")
        - sum((q * f.price for q, f in signed), D(0))
        - sum((f.fee for f in fills), D(0))
    )
    assert view.cash == {"USD": cash}
    assert view.fees_paid == {"USD": sum((f.fee for f in fills), D(0))}
    (position,) = view.positions
    assert position.qty == sum((q for q, _ in signed), D(0)) == D("0.42")
    # The wire form keeps every digit: what tests compare is exactly what the venue holds.
    again = wire.LedgerView.model_validate_json(view.model_dump_json())
    assert again == view
