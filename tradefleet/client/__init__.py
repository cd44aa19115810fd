"""The algo SDK: connect to tradefleet through a MarketManager, subscribe, trade.

    from tradefleet.client import MarketClient

    async with await MarketClient.connect(manager_url, api_token) as client:
        await client.subscribe("BTC/USD", "ticker")
        order = await client.place_order("BTC/USD", "buy", "0.01", price="100.5")
        await order.accepted()
        async for event in client.events():
            print(event)

Every exception raised here derives from `ClientError`.
"""

from tradefleet.client.backoff import ReconnectPolicy
from tradefleet.client.client import EventStream, MarketClient
from tradefleet.client.errors import (
    AuthError,
    ClientError,
    ConnectionLost,
    OrderNotFilled,
    OrderRejected,
    RequestFailed,
    RequestTimeout,
)
from tradefleet.client.orders import OrderHandle
from tradefleet.client.sessions import SessionGrant

__all__ = [
    "AuthError",
    "ClientError",
    "ConnectionLost",
    "EventStream",
    "MarketClient",
    "OrderHandle",
    "OrderNotFilled",
    "OrderRejected",
    "ReconnectPolicy",
    "RequestFailed",
    "RequestTimeout",
    "SessionGrant",
]
