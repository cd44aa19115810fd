"""Service kit shared by every tradefleet process: JSON errors, auth, logs, metrics, event loop."""
