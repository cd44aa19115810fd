"""Configuration: frozen, unknown keys rejected with the key named; the example documents all."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from tradefleet.config import ConfigError, FleetConfig, TraderSection, load_config

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "fleet.example.toml"


def test_default_is_one_location_with_workers_of_each_kind() -> None:
    cfg = load_config(None)
    assert cfg.location == "local"
    assert cfg.managers.broker.desired >= 1 and cfg.managers.market.desired >= 1
    assert cfg.managers.trader.desired >= 1


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text("[managers.broker]\ndesird = 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "managers.broker.desird: unknown key" in str(err.value)
    assert str(path) in str(err.value)


def test_bad_value_is_named(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text("[timeouts]\npipe_grace_s = -1\n")
    with pytest.raises(ConfigError, match="timeouts.pipe_grace_s"):
        load_config(path)


def test_invalid_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("location = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_config_is_frozen() -> None:
    cfg = FleetConfig()
    with pytest.raises(ValidationError):
        cfg.location = "x"  # type: ignore[misc]


def test_secrets_never_render() -> None:
    cfg = FleetConfig.model_validate({"security": {"operator_token": "s3cret-value-123"}})
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.model_dump())


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys |= _keys(ann, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_every_field_is_described_and_the_example_loads_and_mentions_every_key() -> None:
    for key in _keys(FleetConfig):
        assert key.split(".")[-1] in EXAMPLE.read_text(), f"{key} missing from the example"
    assert load_config(EXAMPLE) is not None
    tomllib.loads(EXAMPLE.read_text())


def test_a_trader_cancels_what_an_earlier_run_left_unless_told_to_adopt_it() -> None:
    base = {"name": "q", "strategy": "examples.quoter:TwoSidedQuoter", "customer": "demo",
            "account": "paper-1"}
    assert TraderSection(**base).on_restart == "cancel"
    assert TraderSection(**base, on_restart="adopt").on_restart == "adopt"
    with pytest.raises(ValidationError):
        TraderSection(**base, on_restart="keep")
