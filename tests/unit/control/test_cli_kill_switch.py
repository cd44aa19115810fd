"""`tradefleet kill-switch` and the accounts table of `tradefleet status`, without a fleet."""

from __future__ import annotations

from typing import Any

import pytest

from tradefleet.cli.api import CliError
from tradefleet.cli.main import _kill_switch, build_parser
from tradefleet.cli.tables import render_accounts


class RecordingApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        self.calls.append((method, path, body))
        if path == "/v1/fleet":
            return {"locations": [{"name": "east"}]}
        if path == "/v1/kill-switch":
            return {"kill_switch": True, "locations": {"east": {"status": 200}}}
        return {"account": "acct", "kill_switch": True}


def run(argv: list[str]) -> RecordingApi:
    api = RecordingApi()
    args = build_parser().parse_args(argv)
    _kill_switch(api, args)  # type: ignore[arg-type]
    return api


def test_an_account_switch_goes_to_the_only_location() -> None:
    api = run(["kill-switch", "acct", "on", "--reason", "runaway"])
    assert api.calls[-1] == ("POST", "/v1/locations/east/accounts/acct/kill-switch",
                             {"active": True, "reason": "runaway"})


def test_the_fleet_wide_switch_and_bad_usage() -> None:
    api = run(["kill-switch", "--all", "off"])
    assert api.calls == [("POST", "/v1/kill-switch", {"active": False, "reason": ""})]
    for argv in (["kill-switch", "acct"], ["kill-switch", "acct", "maybe"],
                 ["kill-switch", "--all", "acct", "on"]):
        with pytest.raises(CliError):
            run(argv)


def test_status_shows_the_kill_switch_and_positions_with_pnl() -> None:
    info = {"account": "acct", "venue": "paper", "connected": True, "orders": 2,
            "open_orders": 0, "fills": 2, "positions": {"BTC/USD": "0.5"},
            "kill_switch": "the account kill switch (ops: drill)",
            "position_pnl": {"BTC/USD": {"qty": "0.5", "avg_price": "100",
                                         "realized_pnl": "0", "unrealized_pnl": "2.5"}}}
    fleet = {"locations": [{"name": "east", "managers": [
        {"workers": [{"id": "b-1", "kind": "broker", "info": info}]}]}]}
    text = render_accounts(fleet)
    assert "KILL" in text and "ON" in text
    assert "BTC/USD 0.5 @ 100 (realized 0, unrealized 2.5)" in text


def test_the_fleet_wide_switch_names_accounts_that_take_it_later(
        capsys: pytest.CaptureFixture[str]) -> None:
    class Answering(RecordingApi):
        def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            self.calls.append((method, path, body))
            return {"kill_switch": True, "locations": {"east": {
                "status": 207, "accounts": ["a"], "pending": ["b"], "failed": {"c": "timeout"}}}}

    args = build_parser().parse_args(["kill-switch", "--all", "on", "--reason", "halt"])
    _kill_switch(Answering(), args)  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "fleet-wide kill switch on at east" in out
    assert "east: b take it when an owner is assigned" in out
    assert "east: c did not answer (timeout)" in out


def test_status_says_when_the_fleet_wide_switch_is_on() -> None:
    broker = {"kind": "broker", "info": {"fleet_kill_switch": {
        "active": True, "reason": "desk halt", "by": "ops", "at": 1.0}}, "workers": []}
    fleet = {"locations": [{"name": "east", "managers": [broker]}]}
    text = render_accounts(fleet)
    assert "FLEET-WIDE KILL SWITCH ON at east (by ops: desk halt)" in text
    broker["info"]["fleet_kill_switch"]["active"] = False  # type: ignore[index]
    assert render_accounts(fleet) == ""
