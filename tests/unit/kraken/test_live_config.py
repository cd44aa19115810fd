"""Configuration of a live Kraken spot session: production defaults, secrets kept secret,
and the instrument table read from the venue's real instrument snapshot."""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from workers.broker.adapters.kraken.config import KrakenSpotConfig
from workers.broker.adapters.kraken.instruments import (
    canonical_asset,
    instruments_from_config,
    instruments_from_frame,
)
from workers.broker.adapters.kraken.ratelimit import Tier
from workers.broker.adapters.kraken.schemas import PairPrecision

from .recordings import load

SECRET = base64.b64encode(b"k" * 64).decode()


def test_endpoints_default_to_kraken_and_secrets_never_show() -> None:
    config = KrakenSpotConfig(account="main", api_key="my-key", api_secret=SECRET)
    assert config.rest_url == "https://api.kraken.com"
    assert config.ws_public_url == "wss://ws.kraken.com/v2"
    assert config.ws_private_url == "wss://ws-auth.kraken.com/v2"
    assert config.rate_tier is Tier.STARTER
    shown = repr(config) + str(config.model_dump())
    assert "my-key" not in shown and SECRET not in shown


def test_a_secret_that_is_not_base64_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValidationError) as info:
        KrakenSpotConfig(account="main", api_key="k", api_secret="not*base64!")
    assert "not valid base64" in str(info.value) and "not*base64!" not in str(info.value)


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValidationError):
        KrakenSpotConfig(account="main", api_key="k", api_secret=SECRET, tier="gold")
    with pytest.raises(ValidationError):
        KrakenSpotConfig(  # type: ignore[call-arg]
            account="main", api_key="k", api_secret=SECRET, colour="red"
        )


def test_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRAKEN_MAIN_API_KEY", "env-key")
    monkeypatch.setenv("KRAKEN_MAIN_API_SECRET", SECRET)
    config = KrakenSpotConfig.from_env("main", "KRAKEN_MAIN", tier="pro")
    assert config.api_key.get_secret_value() == "env-key" and config.rate_tier is Tier.PRO
    monkeypatch.delenv("KRAKEN_MAIN_API_SECRET")
    with pytest.raises(KeyError, match="KRAKEN_MAIN_API_SECRET"):
        KrakenSpotConfig.from_env("main", "KRAKEN_MAIN")


def test_the_real_instrument_snapshot_gives_rules_and_checksum_precisions(
    exchange_data: Path,
) -> None:
    table = instruments_from_frame(
        load(exchange_data / "reference/kraken_v2_instrument_snapshot.json")
    )
    btc = table.specs["BTC/USD"]
    assert (btc.tick_size, btc.lot_size, btc.min_qty) == (
        Decimal("0.1"),
        Decimal("0.00000001"),
        Decimal("0.0001"),
    )
    assert table.precisions["BTC/USD"] == PairPrecision(1, 8)
    assert all("." not in name for name in table.specs)  # ETH2.S/ETH and friends are left out
    assert table.rest_pair("BTC/USD") == "XBTUSD"
    assert table.instrument_of_rest_pair("XBTUSD") == "BTC/USD"
    assert table.instrument_of_rest_pair("XDGUSD") == "DOGE/USD"
    assert table.instrument_of_rest_pair("NOPE") is None


def test_the_configured_table_matches_the_venue_for_its_pairs(exchange_data: Path) -> None:
    venue = instruments_from_frame(
        load(exchange_data / "reference/kraken_v2_instrument_snapshot.json")
    )
    configured = instruments_from_config(
        KrakenSpotConfig(account="main", api_key="k", api_secret=SECRET).instruments
    )
    for name, spec in configured.specs.items():
        assert spec == venue.specs[name]
        assert configured.precisions[name] == venue.precisions[name]


@pytest.mark.parametrize(
    ("code", "common"),
    [("XXBT", "BTC"), ("ZUSD", "USD"), ("XXDG", "DOGE"), ("USDT", "USDT"), ("ETH2.S", None)],
)
def test_rest_asset_codes(code: str, common: str | None) -> None:
    assert canonical_asset(code) == common
