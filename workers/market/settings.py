"""Tunables of a Market worker: `[market]` in the fleet configuration.

Defaults are the documented data-plane limits (docs/dataplane.md). The model lives with the rest
of the configuration; it is re-exported here for the Market worker's code.
"""

from tradefleet.config import MarketSettings

__all__ = ["MarketSettings"]
