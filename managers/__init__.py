"""Managers: one core that spawns, watches, drains, stops and replaces workers of one kind.

BrokerManager, MarketManager and TraderManager are this core specialised by worker kind.
"""
