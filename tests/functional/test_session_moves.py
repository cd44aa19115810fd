"""A session that moved to another Market keeps getting its events there, even when the
Market it left has not noticed that it left.

Real parts on loopback (the SDK, two Market workers and a Broker worker service in this
process, the paper exchange process; fakes only for the two managers' look-ups), every hop
through a relay (`tests.functional.test_link_blips.blips_world`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.functional.test_link_blips import ACCOUNT, blips_world, connect
from tests.support.market_fakes import FakeMarketManager, wait_for
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    async with blips_world(tmp_path, 2) as built:
        built["markets"].rotate = False  # the test says where each session goes
        yield built


async def test_a_market_holding_a_half_open_connection_cannot_take_the_session_back(
        world: dict[str, Any]) -> None:
    markets: FakeMarketManager = world["markets"]
    m1, m2 = markets.markets
    markets.markets[:] = [m1]
    algo = await connect(world, request_timeout_s=10)
    other = None
    try:
        session_id = algo.session_id
        assert session_id is not None
        resting = await algo.place_order("BTC/USD", "buy", Decimal("0.01"), Decimal("1000.0"))
        await resting.accepted(10)

        # The algo's connection to Market 1 breaks on the algo's side only: the algo resumes
        # on Market 2, while Market 1 still holds a connection it believes is open.
        markets.markets[:] = [m2]
        world["algo1"].half_cut()

        def on_m2() -> bool:
            session = m2.service.core.sessions.get(session_id)
            return session is not None and session.conn is not None and algo.connected

        await wait_for(on_m2, 10, "the session resumed on Market 2")
        stale = m1.service.core.sessions[session_id]
        assert stale.conn is not None  # Market 1 has not noticed

        # Market 1's Broker link drops and comes back: it asks a replay for the session it
        # believes it holds, which is also a claim on the session's events.
        links_before = world["link1"].accepted
        world["link1"].cut()

        def m1_replayed() -> bool:
            relay: TcpProxy = world["link1"]
            return (relay.accepted > links_before and m1.service.core.link(ACCOUNT).ready
                    and stale.sequence.outstanding == 0)

        await wait_for(m1_replayed, 10, "Market 1's link back and its replay answered")

        # Another session of the same customer cancels the algo's order, so the algo sends
        # nothing that would claim its session again: the order's events are the session's,
        # and must come to Market 2, where the algo is.
        other = await connect(world, request_timeout_s=10)
        await other.cancel_order(resting.client_order_id)
        await asyncio.wait_for(resting.done(), 10)
        assert resting.status.value == "cancelled", resting.events
        assert [e.seq for e in resting.events] == [1, 2]
    finally:
        await algo.close()
        if other is not None:
            await other.close()
