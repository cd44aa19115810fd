"""Canonical symbols <-> Kraken Futures product ids.

Kraken Futures names contracts ``<TYPE>_<BASE><QUOTE>[_<YYMMDD>]`` with legacy asset codes:
``PI_XBTUSD`` (perpetual inverse), ``PF_XBTUSD`` (perpetual linear, multi-collateral),
``FI_XBTUSD_210924`` (fixed-maturity inverse), ``FF_XBTUSD_210924`` (fixed-maturity
linear). Subscriptions accept lower case (``pi_xbtusd``); frames answer in upper case.

tradefleet names the underlying pair canonically (``BTC/USD``) and carries the contract
type and maturity separately in :class:`FuturesContract`. Only this adapter knows the
venue spelling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from enum import Enum

from workers.broker.adapters.kraken_futures.errors import UnsupportedSymbol


class ContractType(Enum):
    """Contract families, valued by their product-id prefix."""

    PERPETUAL_INVERSE = "PI"
    PERPETUAL_LINEAR = "PF"
    FIXED_INVERSE = "FI"
    FIXED_LINEAR = "FF"

    @property
    def is_perpetual(self) -> bool:
        """True for contracts without maturity."""
        return self in (ContractType.PERPETUAL_INVERSE, ContractType.PERPETUAL_LINEAR)


_LEGACY_FROM_CANONICAL: dict[str, str] = {"BTC": "XBT", "DOGE": "XDG"}
_CANONICAL_FROM_LEGACY: dict[str, str] = {v: k for k, v in _LEGACY_FROM_CANONICAL.items()}
# Quote currencies seen in product ids; the base is whatever precedes them.
_QUOTES = ("USDT", "USDC", "USD", "EUR", "GBP")

_PRODUCT = re.compile(r"^(PI|PF|FI|FF)_([A-Z0-9]+?)(USDT|USDC|USD|EUR|GBP)(?:_(\d{6}))?$")
_CANONICAL = re.compile(r"^([A-Z0-9]+)/([A-Z0-9]+)$")


@dataclass(frozen=True, slots=True)
class FuturesContract:
    """A futures contract in tradefleet's terms."""

    canonical: str
    contract_type: ContractType
    maturity: date | None = None


def to_venue(
    canonical: str,
    contract_type: ContractType = ContractType.PERPETUAL_LINEAR,
    maturity: date | None = None,
) -> str:
    """Product id for a canonical pair: ``("BTC/USD", PERPETUAL_INVERSE)`` -> ``PI_XBTUSD``.

    Raises :class:`UnsupportedSymbol` for a malformed pair, a quote Kraken Futures does not
    list, or a maturity given for a perpetual (or missing for a fixed contract).
    """
    match = _CANONICAL.match(canonical)
    if match is None or match.group(2) not in _QUOTES:
        raise UnsupportedSymbol(f"not a futures-capable BASE/QUOTE pair: {canonical!r}")
    if contract_type.is_perpetual != (maturity is None):
        raise UnsupportedSymbol("perpetuals take no maturity; fixed contracts need one")
    base = _LEGACY_FROM_CANONICAL.get(match.group(1), match.group(1))
    product = f"{contract_type.value}_{base}{match.group(2)}"
    if maturity is not None:
        product += f"_{maturity:%y%m%d}"
    return product


def from_venue(product_id: str) -> FuturesContract:
    """Parse a product id (any case): ``pi_xbtusd`` -> ``FuturesContract("BTC/USD", PI)``."""
    match = _PRODUCT.match(product_id.upper())
    if match is None:
        raise UnsupportedSymbol(f"not a Kraken Futures contract id: {product_id!r}")
    prefix, base, quote, expiry = match.groups()
    maturity = None
    if expiry is not None:
        try:
            maturity = date(2000 + int(expiry[:2]), int(expiry[2:4]), int(expiry[4:]))
        except ValueError:
            raise UnsupportedSymbol(f"bad maturity in {product_id!r}") from None
    contract_type = ContractType(prefix)
    if contract_type.is_perpetual != (maturity is None):
        raise UnsupportedSymbol(f"maturity does not match contract type in {product_id!r}")
    canonical = f"{_CANONICAL_FROM_LEGACY.get(base, base)}/{quote}"
    return FuturesContract(canonical, contract_type, maturity)
