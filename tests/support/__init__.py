"""Test support: launching real tradefleet processes on loopback and waiting for events."""
