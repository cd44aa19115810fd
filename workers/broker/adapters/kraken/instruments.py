"""What Kraken lists and how it spells assets (pure).

* :func:`instruments_from_frame` reads a v2 ``instrument`` frame (``data.pairs[]`` with
  ``price_increment``, ``qty_increment``, ``qty_min`` and the precisions) into canonical
  :class:`InstrumentSpec` rules plus the precisions the book checksum needs.
* :func:`instruments_from_config` does the same from the configured table.
* :func:`canonical_asset` turns REST asset codes (``XXBT``, ``ZUSD``, ``XXDG``...) into the
  common codes tradefleet uses (``BTC``, ``USD``, ``DOGE``).

Pairs whose names are not canonical (``ETH2.S/ETH``) or whose status is not tradable are
left out: nothing outside the adapter could name them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from protocol.market import INSTRUMENT_PATTERN, InstrumentSpec
from workers.broker.adapters.kraken.config import KrakenInstrument
from workers.broker.adapters.kraken.errors import MalformedMessage, UnsupportedSymbol
from workers.broker.adapters.kraken.schemas import PairPrecision, to_decimal
from workers.broker.adapters.kraken.symbols import from_v2, to_v1, to_v2

_CANONICAL = re.compile(INSTRUMENT_PATTERN)
_TRADABLE = frozenset({"online", "limit_only", "post_only", "cancel_only", "reduce_only"})


@dataclass(frozen=True, slots=True)
class InstrumentTable:
    """Every pair this session can trade: rules by canonical name, precisions by v2 symbol,
    and the REST pair name of each canonical instrument."""

    specs: Mapping[str, InstrumentSpec] = field(default_factory=dict)
    precisions: Mapping[str, PairPrecision] = field(default_factory=dict)

    def rest_pair(self, instrument: str) -> str:
        """REST spelling (``XBTUSD``) of a canonical instrument."""
        return to_v1(instrument).replace("/", "")

    def instrument_of_rest_pair(self, pair: str) -> str | None:
        """Canonical instrument of a REST pair name (``XBTUSD``, or ``BTC/USD``), if listed."""
        if "/" in pair:
            try:
                name = from_v2(pair)
            except UnsupportedSymbol:
                return None
            return name if name in self.specs else None
        for instrument in self.specs:
            if self.rest_pair(instrument) == pair:
                return instrument
        return None


def instruments_from_frame(frame: Mapping[str, Any]) -> InstrumentTable:
    """Read a v2 ``instrument`` snapshot. Raises :class:`MalformedMessage` when the frame has
    no ``data.pairs`` array; single pairs that cannot be read are skipped."""
    data = frame.get("data")
    pairs = data.get("pairs") if isinstance(data, Mapping) else None
    if not isinstance(pairs, list):
        raise MalformedMessage("instrument frame: data.pairs must be an array")
    specs: dict[str, InstrumentSpec] = {}
    precisions: dict[str, PairPrecision] = {}
    for pair in pairs:
        parsed = _pair(pair)
        if parsed is not None:
            spec, symbol, precision = parsed
            specs[spec.instrument] = spec
            precisions[symbol] = precision
    return InstrumentTable(specs, precisions)


def _pair(pair: Any) -> tuple[InstrumentSpec, str, PairPrecision] | None:
    if not isinstance(pair, Mapping):
        return None
    symbol = pair.get("symbol")
    if not isinstance(symbol, str) or not _CANONICAL.match(symbol):
        return None
    if pair.get("status", "online") not in _TRADABLE:
        return None
    try:
        instrument = from_v2(symbol)
        spec = InstrumentSpec(
            instrument=instrument,
            tick_size=to_decimal(pair.get("price_increment", pair.get("tick_size")), "tick"),
            lot_size=to_decimal(pair["qty_increment"], "qty_increment"),
            min_qty=to_decimal(pair["qty_min"], "qty_min"),
        )
        precision = PairPrecision(int(pair["price_precision"]), int(pair["qty_precision"]))
    except (KeyError, TypeError, ValueError, ValidationError, MalformedMessage):
        return None
    return spec, symbol, precision


def instruments_from_config(items: Iterable[KrakenInstrument]) -> InstrumentTable:
    """The configured table as an :class:`InstrumentTable`."""
    specs: dict[str, InstrumentSpec] = {}
    precisions: dict[str, PairPrecision] = {}
    for item in items:
        specs[item.instrument] = item.spec()
        precisions[to_v2(item.instrument)] = PairPrecision(item.price_precision, item.qty_precision)
    return InstrumentTable(specs, precisions)


# REST asset codes that differ from the common code. Others are spelled the same.
_LEGACY_ASSETS = {
    "XXBT": "BTC",
    "XBT": "BTC",
    "XXDG": "DOGE",
    "XDG": "DOGE",
    "XETH": "ETH",
    "XETC": "ETC",
    "XLTC": "LTC",
    "XXRP": "XRP",
    "XXLM": "XLM",
    "XXMR": "XMR",
    "XZEC": "ZEC",
    "XMLN": "MLN",
    "XREP": "REP",
    "ZUSD": "USD",
    "ZEUR": "EUR",
    "ZGBP": "GBP",
    "ZCAD": "CAD",
    "ZJPY": "JPY",
    "ZAUD": "AUD",
    "ZCHF": "CHF",
}
_ASSET = re.compile(r"^[A-Z0-9]{1,16}$")


def canonical_asset(code: str) -> str | None:
    """Common code of a Kraken REST asset code, or ``None`` for codes tradefleet cannot
    name (staking variants such as ``ETH2.S``, ``USD.HOLD``)."""
    common = _LEGACY_ASSETS.get(code, code)
    return common if _ASSET.match(common) else None
