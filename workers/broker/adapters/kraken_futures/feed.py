"""The Kraken Futures WebSocket session as a pure state machine: frames in, frames out.

One connection carries both the public feeds (``book``, ``trade``, ``ticker_lite``) and the
account's private feeds (``fills``, ``open_orders``). `FeedCore` holds what the session is
subscribed to and where the private handshake stands; the async shell (`ws.FeedRunner`)
only reads frames, hands them to `receive`, writes what comes back and delivers the events.

Private handshake (PROTOCOL_NOTES §7)::

    -> {"event": "challenge", "api_key": K}
    <- {"event": "challenge", "message": C}
    -> {"event": "subscribe", "feed": "fills", "api_key": K, "original_challenge": C,
        "signed_challenge": base64(HMAC-SHA512(base64decode(secret), SHA256(C)))}
    -> the same for "open_orders"
    <- {"event": "subscribed", "feed": "fills", ...}, then fills_snapshot; likewise open_orders

`ready` is true once both private feeds are subscribed: from then on no fill is missed.
A refused private subscription is fatal (the key or secret is wrong). A fresh connection
(`opened`) re-sends every subscription; books restart from new snapshots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workers.broker.adapters.base import AdapterEvent
from workers.broker.adapters.kraken_futures import schemas
from workers.broker.adapters.kraken_futures.errors import InvalidSecret, MalformedMessage
from workers.broker.adapters.kraken_futures.marketdata import FeedKey, MarketData
from workers.broker.adapters.kraken_futures.orders import OrderTracker
from workers.broker.adapters.kraken_futures.signing import sign_challenge

PRIVATE_FEEDS = ("fills", "open_orders")
Clock = Callable[[], int]
Frame = dict[str, Any]


@dataclass(slots=True)
class FeedOutput:
    """What one step of the session produced."""

    events: list[AdapterEvent] = field(default_factory=list)
    send: list[Frame] = field(default_factory=list)
    acked: list[FeedKey] = field(default_factory=list)  # public subscriptions confirmed
    notes: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (log event, fields)
    fatal: str | None = None


def subscribe_frame(feed: str, product_ids: list[str]) -> Frame:
    return {"event": "subscribe", "feed": feed, "product_ids": product_ids}


def unsubscribe_frame(feed: str, product_ids: list[str]) -> Frame:
    return {"event": "unsubscribe", "feed": feed, "product_ids": product_ids}


class FeedCore:
    """Subscriptions, private handshake and frame routing of one account's feed."""

    def __init__(
        self,
        *,
        api_key: str,
        api_secret: str,
        market: MarketData,
        tracker: OrderTracker,
        clock: Clock,
    ) -> None:
        self._api_key = api_key
        self._api_secret = api_secret
        self.market = market
        self.tracker = tracker
        self._clock = clock
        self._streams: dict[FeedKey, None] = {}  # insertion-ordered set
        self._open = False
        self._challenge: str | None = None
        self._private: set[str] = set()
        self.version: int | None = None

    @property
    def ready(self) -> bool:
        """Both private feeds are subscribed on the current connection."""
        return self._open and self._private.issuperset(PRIVATE_FEEDS)

    @property
    def streams(self) -> list[FeedKey]:
        return list(self._streams)

    # ------------------------------------------------------------ subscriptions

    def add(self, key: FeedKey, instrument: str, depth: int) -> FeedOutput:
        """Watch `key`; the subscribe frame is returned when the connection is open."""
        out = FeedOutput(events=list(self.market.watch(key, instrument, depth)))
        if key not in self._streams:
            self._streams[key] = None
            if self._open:
                out.send.append(subscribe_frame(key.feed, [key.product_id]))
        return out

    def remove(self, key: FeedKey) -> FeedOutput:
        out = FeedOutput()
        if key in self._streams:
            del self._streams[key]
            self.market.unwatch(key)
            if self._open:
                out.send.append(unsubscribe_frame(key.feed, [key.product_id]))
        return out

    # ------------------------------------------------------------ connection lifecycle

    def opened(self) -> list[Frame]:
        """A new connection is up: the frames that restore the whole session on it."""
        self._open = True
        self._challenge = None
        self._private.clear()
        frames: list[Frame] = [{"event": "challenge", "api_key": self._api_key}]
        by_feed: dict[str, list[str]] = {}
        for key in self._streams:
            by_feed.setdefault(key.feed, []).append(key.product_id)
        frames += [subscribe_frame(feed, products) for feed, products in by_feed.items()]
        return frames

    def closed(self) -> None:
        """The connection is gone; every book is stale."""
        self._open = False
        self._challenge = None
        self._private.clear()
        self.market.connection_lost()

    # ------------------------------------------------------------ frames

    def receive(self, raw: Any) -> FeedOutput:
        """Handle one decoded frame."""
        out = FeedOutput()
        try:
            frame = schemas.parse_frame(raw)
        except MalformedMessage as exc:
            out.notes.append(("kraken_futures_bad_frame", {"error": str(exc)}))
            return out
        if isinstance(frame, schemas.EventMessage):
            self._event(frame, out)
        elif isinstance(frame, schemas.FillsMessage):
            out.events += self.tracker.on_fills(frame, self._clock())
        elif isinstance(frame, schemas.OpenOrdersMessage):
            out.events += self.tracker.on_open_orders(frame, self._clock())
        elif isinstance(frame, schemas.OpenOrdersSnapshot):
            out.events += self.tracker.on_open_orders_snapshot(frame, self._clock())
        else:
            events, resyncs = self.market.receive(frame)
            out.events += events
            for resync in resyncs:
                out.notes.append(
                    (
                        "kraken_futures_book_resync",
                        {"product_id": resync.product_id, "reason": resync.reason},
                    )
                )
                out.send.append(unsubscribe_frame("book", [resync.product_id]))
                out.send.append(subscribe_frame("book", [resync.product_id]))
        for anomaly in self.tracker.drain_anomalies():
            out.notes.append(("kraken_futures_order_anomaly", {"detail": anomaly}))
        return out

    def _event(self, frame: schemas.EventMessage, out: FeedOutput) -> None:
        event = frame.event
        if event == "info":
            version = frame.raw.get("version")
            self.version = version if isinstance(version, int) else None
            if self.version != 1:
                out.notes.append(("kraken_futures_unexpected_version", {"version": version}))
        elif event == "challenge" and frame.message:
            self._answer_challenge(frame.message, out)
        elif event == "subscribed" and frame.feed in PRIVATE_FEEDS:
            self._private.add(frame.feed)
        elif event == "subscribed" and frame.feed in ("book", "trade", "ticker_lite"):
            for product_id in frame.product_ids:
                key = FeedKey(frame.feed, str(product_id).upper())  # type: ignore[arg-type]
                if key in self._streams:
                    out.acked.append(key)
        elif event in ("subscribed_failed", "unsubscribed_failed") and frame.feed in PRIVATE_FEEDS:
            out.fatal = (
                f"Kraken Futures refused the private {frame.feed} feed ({event}); "
                "check the account's API key and secret"
            )
        elif event in ("error", "alert"):
            message = frame.message or ""
            if not self.ready and _about_credentials(message):
                out.fatal = (
                    f"Kraken Futures refused the private feed handshake: {message!r}; "
                    "check the account's API key and secret"
                )
            else:
                out.notes.append(("kraken_futures_venue_error", {"message": message}))
        elif event in ("subscribed_failed", "unsubscribed_failed"):
            out.notes.append(
                ("kraken_futures_subscription_failed", {"feed": frame.feed, "event": event})
            )

    def _answer_challenge(self, challenge: str, out: FeedOutput) -> None:
        try:
            signed = sign_challenge(self._api_secret, challenge)
        except InvalidSecret as exc:
            out.fatal = f"{exc}; fix the account's API secret"
            return
        self._challenge = challenge
        for feed in PRIVATE_FEEDS:
            out.send.append(
                {
                    "event": "subscribe",
                    "feed": feed,
                    "api_key": self._api_key,
                    "original_challenge": challenge,
                    "signed_challenge": signed,
                }
            )


def _about_credentials(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in ("challenge", "api key", "api_key", "auth", "sign"))
