"""Fixtures for the Kraken adapter unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.kraken.recordings import exchange_data_dir


@pytest.fixture(scope="session")
def exchange_data() -> Path:
    """Path of the shared recordings; fails loudly when they are missing."""
    path = exchange_data_dir()
    if not (path / "SOURCES.md").is_file():
        pytest.fail(f"recorded exchange data not found at {path}; set TRADEFLEET_EXCHANGE_DATA")
    return path
