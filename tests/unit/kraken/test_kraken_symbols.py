"""Canonical symbols <-> Kraken spot (v1, v2) and Kraken Futures spellings."""

from __future__ import annotations

from datetime import date

import pytest

from workers.broker.adapters.kraken import symbols as spot
from workers.broker.adapters.kraken.errors import UnsupportedSymbol
from workers.broker.adapters.kraken_futures import symbols as futures
from workers.broker.adapters.kraken_futures.errors import UnsupportedSymbol as FuturesUnsupported
from workers.broker.adapters.kraken_futures.symbols import ContractType, FuturesContract


@pytest.mark.parametrize(
    ("canonical", "v1"),
    [
        ("BTC/USD", "XBT/USD"),
        ("DOGE/USD", "XDG/USD"),
        ("ETH/BTC", "ETH/XBT"),
        ("ETH2.S/ETH", "ETH2.S/ETH"),
        ("MATIC/USD", "MATIC/USD"),
    ],
)
def test_spot_round_trips(canonical: str, v1: str) -> None:
    assert spot.to_v2(canonical) == canonical
    assert spot.from_v2(canonical) == canonical
    assert spot.to_v1(canonical) == v1
    assert spot.from_v1(v1) == canonical


@pytest.mark.parametrize("bad", ["BTCUSD", "btc/usd", "BTC/", "/USD", "BTC/USD/EUR"])
def test_spot_rejects_malformed_symbols(bad: str) -> None:
    with pytest.raises(UnsupportedSymbol):
        spot.to_v2(bad)


def test_v2_refuses_legacy_codes() -> None:
    """v2 answers "Currency pair not supported XBT/USD"; refuse it before sending."""
    with pytest.raises(UnsupportedSymbol):
        spot.to_v2("XBT/USD")
    with pytest.raises(UnsupportedSymbol):
        spot.from_v2("XBT/USD")


@pytest.mark.parametrize(
    ("product", "contract"),
    [
        ("PI_XBTUSD", FuturesContract("BTC/USD", ContractType.PERPETUAL_INVERSE)),
        ("PF_XBTUSD", FuturesContract("BTC/USD", ContractType.PERPETUAL_LINEAR)),
        ("PF_ETHUSD", FuturesContract("ETH/USD", ContractType.PERPETUAL_LINEAR)),
        (
            "FI_XBTUSD_210924",
            FuturesContract("BTC/USD", ContractType.FIXED_INVERSE, date(2021, 9, 24)),
        ),
        (
            "FF_XRPUSD_211231",
            FuturesContract("XRP/USD", ContractType.FIXED_LINEAR, date(2021, 12, 31)),
        ),
    ],
)
def test_futures_round_trips(product: str, contract: FuturesContract) -> None:
    assert futures.from_venue(product) == contract
    assert futures.from_venue(product.lower()) == contract  # subscriptions use lower case
    assert (
        futures.to_venue(contract.canonical, contract.contract_type, contract.maturity) == product
    )


@pytest.mark.parametrize(
    "bad", ["PI_XBT", "XX_XBTUSD", "PI_XBTUSD_210924", "FI_XBTUSD", "FI_XBTUSD_211345", "rr_xbtusd"]
)
def test_futures_rejects_unknown_products(bad: str) -> None:
    with pytest.raises(FuturesUnsupported):
        futures.from_venue(bad)


def test_futures_to_venue_validates_maturity() -> None:
    with pytest.raises(FuturesUnsupported):
        futures.to_venue("BTC/USD", ContractType.FIXED_INVERSE)
    with pytest.raises(FuturesUnsupported):
        futures.to_venue("BTC/USD", ContractType.PERPETUAL_LINEAR, date(2021, 9, 24))
    with pytest.raises(FuturesUnsupported):
        futures.to_venue("BTC/JPY")
