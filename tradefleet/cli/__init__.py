"""The `tradefleet` command line: up, status, spawn, drain, stop, replay."""

from tradefleet.cli.main import main

__all__ = ["main"]
