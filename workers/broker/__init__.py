"""Broker workers: one process per live broker/exchange session."""
