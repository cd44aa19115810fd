"""Kraken Futures live adapter: products, wallets, reconnect policy, configuration."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from workers.broker.adapters.kraken_futures.accounts import cash_from_accounts
from workers.broker.adapters.kraken_futures.config import REAL_REST_URL, KrakenFuturesConfig
from workers.broker.adapters.kraken_futures.errors import MalformedMessage
from workers.broker.adapters.kraken_futures.products import ProductMap
from workers.broker.adapters.kraken_futures.schemas import decode


def recorded_instruments(exchange_data: Path) -> object:
    path = exchange_data / "kraken_futures/cryptofeed_instruments_rest_2021-07-22.json"
    line = path.read_text(encoding="utf-8").splitlines()[0]
    return decode(line[line.index("{") :])


def test_recorded_instruments_map_canonical_pairs_to_perpetuals(exchange_data: Path) -> None:
    products = ProductMap.from_instruments(recorded_instruments(exchange_data), "PI")
    assert {s.instrument for s in products.specs()} == {
        "BTC/USD",
        "ETH/USD",
        "LTC/USD",
        "BCH/USD",
        "XRP/USD",
    }
    eth = products.by_instrument("ETH/USD")
    assert eth is not None and eth.product_id == "PI_ETHUSD"
    assert (eth.tick_size, eth.lot_size) == (Decimal("0.05"), Decimal(1))
    assert products.by_id("pi_ethusd") is eth  # frames and subscriptions differ in case
    assert products.by_id("FI_ETHUSD_210730") is None  # fixed maturities have no name here
    # the 2021 list predates the linear perpetuals
    assert len(ProductMap.from_instruments(recorded_instruments(exchange_data), "PF")) == 0


def test_linear_contracts_take_their_size_precision() -> None:
    answer = {
        "result": "success",
        "instruments": [
            {
                "symbol": "PF_XBTUSD",
                "type": "flexible_futures",
                "tickSize": Decimal("0.5"),
                "contractValueTradePrecision": 4,
                "tradeable": True,
            },
            {"symbol": "PF_ETHUSD", "tickSize": Decimal("0.1"), "tradeable": False},
            {"symbol": "PF_BROKEN", "tickSize": "x"},
        ],
    }
    products = ProductMap.from_instruments(answer, "PF")
    (spec,) = products.specs()
    assert (spec.instrument, spec.lot_size, spec.min_qty) == (
        "BTC/USD",
        Decimal("0.0001"),
        Decimal("0.0001"),
    )
    with pytest.raises(MalformedMessage):
        ProductMap.from_instruments({"result": "success"}, "PF")


def test_cash_adds_up_the_trading_wallets(exchange_data: Path) -> None:
    answer = {
        "result": "success",
        "accounts": {
            "cash": {"type": "cashAccount", "balances": {"xbt": Decimal(9)}},
            "fi_xbtusd": {"type": "marginAccount", "balances": {"xbt": Decimal("0.5")}},
            "fv_xbtxbt": {"type": "marginAccount", "balances": {"xbt": Decimal("0.25")}},
            "flex": {
                "type": "multiCollateralMarginAccount",
                "currencies": {
                    "USD": {"quantity": Decimal("1000.5"), "value": Decimal("1000.5")},
                    "XBT": {"quantity": Decimal("0.125")},
                },
            },
        },
    }
    assert cash_from_accounts(answer) == {"BTC": Decimal("0.875"), "USD": Decimal("1000.5")}
    with pytest.raises(MalformedMessage):
        cash_from_accounts({"result": "success"})


def test_config_keeps_secrets_out_of_sight() -> None:
    config = KrakenFuturesConfig(
        account="acct",
        api_key=SecretStr("public-half"),
        api_secret=SecretStr("c2VjcmV0"),
        ws_url="ws://127.0.0.1:1/ws/v1/",
    )
    assert "c2VjcmV0" not in repr(config) and "c2VjcmV0" not in str(config.model_dump())
    assert config.rest_url == REAL_REST_URL and config.ws_url == "ws://127.0.0.1:1/ws/v1"
    assert config.contract_type == "PF"
    with pytest.raises(ValidationError):
        KrakenFuturesConfig(account="acct", api_key="k", api_secret="s", surprise=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        KrakenFuturesConfig(account="a b", api_key="k", api_secret="s")
