"""Operator events up the control pipe: the worker's bounded outbox and the manager's log line.
Pure code; no sockets."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from managers.manager import worker_event_record
from managers.supervision import WorkerRecord
from protocol.codec import decode, encode
from protocol.control import PIPE_MESSAGE, EventCategory, WorkerEvent, WorkerKind, WorkerState
from workers.runtime.events import EventOutbox, clean_detail


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drain(outbox: EventOutbox) -> list[WorkerEvent]:
    sent = []
    while (frame := outbox.first()) is not None:
        sent.append(frame)
        outbox.sent(frame)
    return sent


def test_events_go_out_in_order_and_survive_the_codec() -> None:
    outbox = EventOutbox(clock=Clock())
    outbox.put("risk_rejected", "order notional too big", EventCategory.RISK,
               account="acct", code="risk_order_notional", price=Decimal("1.50"))
    outbox.put("venue_resync", "reconnected", EventCategory.VENUE, account="acct")
    frames = drain(outbox)
    assert [(f.event, f.n, f.category) for f in frames] == [
        ("risk_rejected", 1, EventCategory.RISK), ("venue_resync", 2, EventCategory.VENUE)]
    assert frames[0].detail == {"account": "acct", "code": "risk_order_notional",
                                "price": "1.50"}
    assert PIPE_MESSAGE.validate_python(decode(encode(frames[0]))) == frames[0]
    assert outbox.first() is None


def test_a_full_buffer_drops_the_oldest_and_says_how_many() -> None:
    outbox = EventOutbox(capacity=3, clock=Clock(), burst=100)
    for i in range(5):
        outbox.put("kill_switch", f"event {i}", EventCategory.RISK)
    frames = drain(outbox)
    assert [f.message for f in frames] == ["event 2", "event 3", "event 4"]
    assert [f.dropped for f in frames] == [2, 0, 0]
    assert outbox.dropped_total == 2


def test_an_event_pushed_out_while_being_written_is_not_counted_lost() -> None:
    outbox = EventOutbox(capacity=1, clock=Clock())
    outbox.put("a")
    frame = outbox.first()
    assert frame is not None
    outbox.put("b")  # arrives while `a` is on the wire: `a` leaves the buffer
    outbox.sent(frame)
    [second] = drain(outbox)
    assert second.event == "b" and second.dropped == 0 and outbox.dropped_total == 0


def test_a_flood_is_rate_limited_and_counted() -> None:
    clock = Clock()
    outbox = EventOutbox(clock=clock, rate_per_s=10, burst=5)
    for _ in range(20):
        outbox.put("risk_rejected", category=EventCategory.RISK)
    assert len(outbox) == 5 and outbox.dropped_total == 15
    clock.now += 0.25  # two and a half more tokens
    for _ in range(20):
        outbox.put("risk_rejected", category=EventCategory.RISK)
    frames = drain(outbox)
    assert len(frames) == 7 and frames[0].dropped == 33 and outbox.dropped_total == 33


def test_details_never_carry_secrets_or_unbounded_values() -> None:
    detail = clean_detail({"api_key": "k", "Authorization": "Bearer x", "token": "t",
                           "nested": {"password": "p", "ok": 1},
                           "long": "x" * 5000, "big": list(range(10_000)),
                           "obj": object, "scope": EventCategory.RISK})
    assert set(detail) == {"nested", "long", "big", "obj", "scope"}
    assert detail["nested"] == {"ok": 1}
    assert len(detail["long"]) <= 300
    assert isinstance(detail["big"], str) and "not shown" in detail["big"]
    assert detail["scope"] == "risk"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        EventOutbox(capacity=0)


def test_the_manager_log_line_names_the_worker_and_keeps_its_keys() -> None:
    rec = WorkerRecord(id="broker-3-ab12", kind=WorkerKind.BROKER, epoch=3,
                       state=WorkerState.UP, spawned_at=0)
    event = WorkerEvent(event="exit_fired", category=EventCategory.RISK, ts=5.0, n=7,
                        message="stop_loss exit fired", dropped=2,
                        detail={"account": "acct", "kind": "stop_loss", "worker_id": "x"})
    line = worker_event_record(rec.id, WorkerKind.BROKER, rec, event)
    assert line == {"ts": 5.0, "event": "exit_fired", "category": "risk",
                    "worker_id": "broker-3-ab12", "kind": "broker", "epoch": 3, "n": 7,
                    "message": "stop_loss exit fired", "account": "acct",
                    "exit_kind": "stop_loss", "exit_worker_id": "x", "dropped_before": 2}


def test_an_unknown_frame_still_fails_validation() -> None:
    with pytest.raises(ValidationError):
        PIPE_MESSAGE.validate_python({"type": "event", "event": "", "ts": 1, "n": 1})
