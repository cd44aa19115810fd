"""SDK signal answers and fired exits: typed events, sequenced with the order events, each
delivered once across a resume (no network: frames are fed to the client directly)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from protocol.signals import ExitFired, SignalAccepted, SignalRejected
from tradefleet.client import MarketClient


def accepted(seq: int | None = None, sid: str = "sig-1") -> dict[str, Any]:
    frame = {"type": "signal_accepted", "account": "paper-1", "signal_id": sid,
             "instrument": "BTC/USD", "target_qty": "1", "position_qty": "0",
             "client_order_id": "pm-sig-1-e", "side": "buy", "qty": "1",
             "exits": {"stop_loss": "90"}, "ts": 1}
    return frame if seq is None else {**frame, "seq": seq}


def fired(seq: int) -> dict[str, Any]:
    return {"type": "exit_fired", "account": "paper-1", "signal_id": "sig-1",
            "instrument": "BTC/USD", "kind": "stop_loss", "trigger_price": "89.5",
            "position_qty": "1", "client_order_id": "pm-sig-1-x1", "close_qty": "1",
            "seq": seq, "ts": 2}


def order_accepted(seq: int) -> dict[str, Any]:
    return {"type": "order_accepted", "account": "paper-1", "client_order_id": "pm-sig-1-e",
            "instrument": "BTC/USD", "side": "buy", "order_type": "market", "qty": "1",
            "time_in_force": "IOC", "status": "accepted", "filled_qty": "0",
            "remaining_qty": "1", "seq": seq, "ts": 1}


def queued(client: MarketClient) -> list[tuple[str, int | None]]:
    return [(e.type, getattr(e, "seq", None)) for e in client._queue]


async def test_signal_answers_and_exits_are_typed_sequenced_events_seen_once() -> None:
    client = MarketClient("http://127.0.0.1:1", "token", account="paper-1")
    answer = asyncio.create_task(client.send_signal("BTC/USD", direction="long", qty="1",
                                                    stop_loss="90", signal_id="sig-1",
                                                    timeout=5))
    await asyncio.sleep(0)  # the signal is registered (and not sent: no connection yet)
    await client._on_event(accepted(seq=1))
    result = await answer
    assert isinstance(result, SignalAccepted) and result.seq == 1
    await client._on_event(order_accepted(2))
    await client._on_event(fired(3))
    # A resume replays from an older seq: everything again, and the answer to the re-sent
    # signal (unsequenced). Nothing reaches events() twice.
    for frame in (accepted(seq=1), order_accepted(2), fired(3), accepted()):
        await client._on_event(frame)
    await client._on_event({"type": "signal_rejected", "account": "paper-1",
                            "signal_id": "sig-2", "code": "kill_switch",
                            "message": "stopped", "seq": 4, "ts": 3})
    assert queued(client) == [("signal_accepted", 1), ("order_accepted", 2),
                              ("exit_fired", 3), ("signal_rejected", 4)]
    assert client.last_seq == 4
    events = list(client._queue)
    assert isinstance(events[2], ExitFired) and isinstance(events[3], SignalRejected)
    await client.close()


async def test_a_repeated_signal_gets_its_answer_without_a_second_event() -> None:
    client = MarketClient("http://127.0.0.1:1", "token", account="paper-1")
    await client._on_event(accepted(seq=1))
    again = asyncio.create_task(client.send_signal("BTC/USD", direction="long", qty="1",
                                                   stop_loss="90", signal_id="sig-1",
                                                   timeout=5))
    await asyncio.sleep(0)
    await client._on_event(accepted())  # the server's answer to the repeat: no seq
    assert (await again).signal_id == "sig-1"
    assert queued(client) == [("signal_accepted", 1)]
    await client.close()


async def test_the_journaled_answer_is_the_event_when_the_repeats_answer_comes_first(
        ) -> None:
    # The first answer was lost with a link; the signal, sent again, is answered at once
    # (no seq), and the journaled answer follows in the replay: one event, with its seq.
    client = MarketClient("http://127.0.0.1:1", "token", account="paper-1")
    answer = asyncio.create_task(client.send_signal("BTC/USD", direction="long", qty="1",
                                                    stop_loss="90", signal_id="sig-1",
                                                    timeout=5))
    await asyncio.sleep(0)
    await client._on_event(accepted())
    assert (await answer).signal_id == "sig-1"
    assert queued(client) == []
    await client._on_event(accepted(seq=1))
    await client._on_event(order_accepted(2))
    assert queued(client) == [("signal_accepted", 1), ("order_accepted", 2)]
    await client.close()


async def test_resume_from_seq_needs_a_session() -> None:
    with pytest.raises(ValueError, match="session_id"):
        await MarketClient.connect("http://127.0.0.1:1", "token", resume_from_seq=3)
