"""The Market ↔ Broker link: how a Market worker talks to an account's order owner.

A Market worker opens one WebSocket per account it serves to the account's Broker worker at
`{broker_url}/v1/link`, authenticated with the deployment service token (bearer). The Market
opened it, so the Market re-opens it when it drops (and re-learns the Broker's address from the
BrokerManager's `GET /v1/accounts` when the owner changed).

Market → Broker
    link_hello      {market_id}
    route           {session_id, customer, msg: new_order | cancel_order | modify_order |
                     get_positions | get_open_orders}
    md_subscribe    {stream: Subscription}     one per (instrument, channel) per Market
    md_unsubscribe  {stream: Subscription}
    replay          {session_id, after_seq}    order events of a session after `after_seq`

Broker → Market
    link_welcome    {account, broker_id, epoch, instruments: [InstrumentSpec]}
    session_event   {session_id, event}        event = an order event carrying its `seq`, or a
                                               positions / open_orders / error answer (no seq)
    market          {events: [market event]}   market data, already in wire form
    replayed        {session_id, events: [order event], last_seq}
    resync          {reason}                   the Broker lost/regained the venue: expect
                                               fresh snapshots; order state reconciled

Per-session order-event sequence numbers are assigned by the Broker's journal, so they survive
the death of any Market worker and of the Broker itself: a resumed session asks for `replay`
after its last seq and gets exactly the events it missed, once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from protocol.market import Frozen, InstrumentSpec
from protocol.orders import AccountId
from protocol.session import SessionId, Subscription


class LinkHello(Frozen):
    type: Literal["link_hello"] = "link_hello"
    market_id: str = Field(min_length=1, max_length=128, description="The Market worker's id.")


GRANT = ("The session grant the algo's connection to this Market came with (when its token "
         "was minted, in ms: later grants, larger). The Broker sends a session's events to "
         "the Market of its latest grant: a Market that still believes it holds the session "
         "on an older connection (one it has not yet seen die) cannot take them back.")


class Route(Frozen):
    """An algo's order request, forwarded verbatim (already validated by the Market)."""

    type: Literal["route"] = "route"
    session_id: SessionId = Field(description="The algo session the request came from.")
    customer: str = Field(min_length=1, max_length=64, description="The session's customer.")
    msg: dict[str, Any] = Field(description="new_order, cancel_order, modify_order, "
                                            "get_positions or get_open_orders, in wire form.")
    detached: bool = Field(default=False, description=(
        "Sent again by a Market that no longer holds the session's connection (the algo went "
        "away, or resumed on another Market): carried out, but the session's events keep "
        "going to the link they go to, not to this one."))
    grant: int | None = Field(default=None, ge=0, description=GRANT)


class MdSubscribe(Frozen):
    type: Literal["md_subscribe"] = "md_subscribe"
    stream: Subscription = Field(description="The market-data stream wanted.")


class MdUnsubscribe(Frozen):
    type: Literal["md_unsubscribe"] = "md_unsubscribe"
    stream: Subscription = Field(description="The market-data stream no longer wanted.")


class Replay(Frozen):
    """Replay a session's sequenced events; also says the session now lives on this Market."""

    type: Literal["replay"] = "replay"
    session_id: SessionId
    after_seq: int = Field(ge=0, description="Send order events with seq > after_seq.")
    grant: int | None = Field(default=None, ge=0, description=GRANT)


class LinkWelcome(Frozen):
    type: Literal["link_welcome"] = "link_welcome"
    account: AccountId
    broker_id: str
    epoch: int = Field(ge=1, description="The Broker worker's epoch (order-owner generation).")
    instruments: list[InstrumentSpec] = Field(default_factory=list)


class SessionEvent(Frozen):
    type: Literal["session_event"] = "session_event"
    session_id: SessionId
    event: dict[str, Any] = Field(description="One server event in wire form.")


class MarketData(Frozen):
    type: Literal["market"] = "market"
    events: list[dict[str, Any]] = Field(description="Market events in wire form, in order.")


class Replayed(Frozen):
    type: Literal["replayed"] = "replayed"
    session_id: SessionId
    events: list[dict[str, Any]] = Field(description="Order events with their seq, in order.")
    last_seq: int = Field(ge=0, description="Highest seq issued for the session so far.")


class Resync(Frozen):
    type: Literal["resync"] = "resync"
    reason: str


MarketToBroker = Annotated[LinkHello | Route | MdSubscribe | MdUnsubscribe | Replay,
                           Field(discriminator="type")]
BrokerToMarket = Annotated[LinkWelcome | SessionEvent | MarketData | Replayed | Resync,
                           Field(discriminator="type")]
MARKET_TO_BROKER: TypeAdapter[Any] = TypeAdapter(MarketToBroker)
BROKER_TO_MARKET: TypeAdapter[Any] = TypeAdapter(BrokerToMarket)
