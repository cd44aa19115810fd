"""Which Kraken Futures contract a canonical instrument trades, with its trading rules.

Built from the public ``GET /derivatives/api/v3/instruments`` answer. One canonical pair
(``BTC/USD``) maps to exactly one perpetual of the configured family (``PF_XBTUSD`` or
``PI_XBTUSD``); fixed-maturity contracts and indices have no canonical name here and are left
out. Nothing outside this adapter sees a product id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from protocol.market import InstrumentSpec
from workers.broker.adapters.kraken_futures.errors import MalformedMessage, UnsupportedSymbol
from workers.broker.adapters.kraken_futures.schemas import to_decimal
from workers.broker.adapters.kraken_futures.symbols import ContractType, from_venue

_LEGACY_ASSETS = {"XBT": "BTC", "XDG": "DOGE"}


def canonical_currency(code: str) -> str:
    """A venue currency code in tradefleet's spelling: ``xbt`` -> ``BTC``, ``usd`` -> ``USD``."""
    upper = code.upper()
    return _LEGACY_ASSETS.get(upper, upper)


@dataclass(frozen=True, slots=True)
class Product:
    """One tradable perpetual and its rules, keyed both ways."""

    product_id: str  # upper case, as frames spell it: PF_XBTUSD
    instrument: str  # canonical: BTC/USD
    tick_size: Decimal
    lot_size: Decimal

    def spec(self) -> InstrumentSpec:
        return InstrumentSpec(
            instrument=self.instrument,
            tick_size=self.tick_size,
            lot_size=self.lot_size,
            min_qty=self.lot_size,
        )


class ProductMap:
    """Canonical instrument <-> product id for one contract family."""

    def __init__(self, products: Iterable[Product] = ()) -> None:
        self._by_instrument: dict[str, Product] = {}
        self._by_id: dict[str, Product] = {}
        for product in products:
            self._by_instrument[product.instrument] = product
            self._by_id[product.product_id] = product

    @classmethod
    def from_instruments(cls, answer: Any, contract_type: str) -> ProductMap:
        """Read an ``instruments`` answer, keeping tradeable perpetuals of `contract_type`
        (``"PF"`` or ``"PI"``). Raises `MalformedMessage` when the answer has no list."""
        wanted = ContractType(contract_type)
        if not isinstance(answer, Mapping) or not isinstance(answer.get("instruments"), list):
            raise MalformedMessage("instruments answer without an instruments list")
        products = []
        for raw in answer["instruments"]:
            product = _product(raw, wanted)
            if product is not None:
                products.append(product)
        return cls(products)

    def __len__(self) -> int:
        return len(self._by_id)

    def by_instrument(self, instrument: str) -> Product | None:
        return self._by_instrument.get(instrument)

    def by_id(self, product_id: str) -> Product | None:
        """Look up a product id in any case (subscriptions may be lower case)."""
        return self._by_id.get(product_id.upper())

    def specs(self) -> list[InstrumentSpec]:
        return [product.spec() for product in self._by_instrument.values()]


def _product(raw: object, wanted: ContractType) -> Product | None:
    if not isinstance(raw, Mapping) or raw.get("tradeable") is False:
        return None
    symbol = raw.get("symbol")
    if not isinstance(symbol, str):
        return None
    try:
        contract = from_venue(symbol)
    except UnsupportedSymbol:
        return None  # indices (in_, rr_) and unknown families
    if contract.contract_type is not wanted:
        return None
    try:
        tick = to_decimal(raw.get("tickSize"), "tickSize")
        precision = raw.get("contractValueTradePrecision")
        # Linear (PF) contracts state how many decimals a size may have; inverse ones trade
        # whole contracts.
        lot = Decimal(1).scaleb(-int(precision)) if precision is not None else Decimal(1)
    except (MalformedMessage, TypeError, ValueError):
        return None
    if tick <= 0 or lot <= 0:
        return None
    return Product(symbol.upper(), contract.canonical, tick, lot)
