"""Unit tests of the Kraken spot and Kraken Futures adapters (pure parts, no sockets)."""
