"""Example strategies shipped with tradefleet (see each module's docstring)."""
