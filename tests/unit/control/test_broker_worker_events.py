"""The Broker worker's side of operator events and the fleet-wide switch: the owner's events
become categorised `WorkerEvent`s, and a bad `fleet_kill_switch` is refused by name. No
sockets: the service is built but never started."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.control import EventCategory, WorkerKind
from tradefleet.config import load_config
from workers.broker.risk.records import KillScope
from workers.broker.worker import BrokerService, _fleet_switch
from workers.runtime.service import WorkerContext


@pytest.fixture
def service(tmp_path: Path) -> BrokerService:
    config = tmp_path / "fleet.toml"
    config.write_text('traders = []\n[accounts.acct]\nvenue = "paper"\n'
                      '[customers.demo]\naccounts = ["acct"]\n')
    ctx = WorkerContext(worker_id="broker-1-abcd", kind=WorkerKind.BROKER, epoch=1,
                        location="here", manager_url="http://127.0.0.1:9", data_dir=tmp_path,
                        config=load_config(config))
    return BrokerService(ctx, service_token="service-token",
                         adapters=lambda account: None)  # type: ignore[arg-type, return-value]


def sent(service: BrokerService) -> list[tuple[str, EventCategory, str, dict[str, object]]]:
    out = []
    while (frame := service.events.first()) is not None:
        out.append((frame.event, frame.category, frame.message, frame.detail))
        service.events.sent(frame)
    return out


def test_owner_events_are_categorised_for_the_event_log(service: BrokerService) -> None:
    service._on_notable({"event": "risk_rejected", "account": "acct", "message": "too big",
                         "code": "risk_order_notional", "client_order_id": "c1",
                         "api_key": "never-sent"})
    service._on_notable({"event": "venue_resync", "account": "acct",
                         "message": "reconciled", "reconcile": {"resent": ["c2"]}})
    service._on_notable({"event": "position_corrected", "account": "acct", "message": "m"})
    service._on_notable({"account": "acct"})  # no name: still logged, never raises
    events = sent(service)
    assert [(e[0], e[1]) for e in events] == [
        ("risk_rejected", EventCategory.RISK), ("venue_resync", EventCategory.VENUE),
        ("position_corrected", EventCategory.VENUE), ("account_event", EventCategory.RISK)]
    assert events[0][2] == "too big"
    assert events[0][3] == {"account": "acct", "code": "risk_order_notional",
                            "client_order_id": "c1"}
    assert events[1][3] == {"account": "acct", "reconcile": {"resent": ["c2"]}}


def test_the_fleet_switch_of_an_assignment_is_checked() -> None:
    assert _fleet_switch(None) is None
    switch = _fleet_switch({"active": True, "reason": "halt", "by": "ops"})
    assert switch is not None and (switch.active, switch.scope, switch.reason, switch.by) == (
        True, KillScope.FLEET, "halt", "ops")
    for bad in ({"active": "yes"}, {"reason": "x"}, ["active"], {"active": True, "bogus": 1}):
        with pytest.raises(ValueError, match="fleet_kill_switch"):
            _fleet_switch(bad)


async def test_a_bad_assignment_is_refused_with_a_sentence(service: BrokerService) -> None:
    with pytest.raises(ValueError, match="fleet_kill_switch"):
        await service.configure({"assign": {"account": "acct",
                                            "fleet_kill_switch": {"active": 1}}})
    with pytest.raises(ValueError, match="not in the configuration"):
        await service.configure({"assign": {"account": "nope"}})
    assert service.owner is None
