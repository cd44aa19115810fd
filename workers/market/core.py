"""The Market worker's session core: pure state, fed frames and timestamps, yielding frames.

The aiohttp shell (`service`) owns the sockets. It tells the core about connections
(`connect`, `receive`, `disconnect`), about Broker links (`link_up`, `link_frame`,
`link_down`) and about time (`expire`), then collects what to write:

- `take_dirty()` → connection ids whose `outbox` has frames (already JSON-encoded events; the
  shell coalesces each outbox into `batch` frames) and whose `closing` may be set;
- `take_link_frames()` → frames to send on each account's Broker link.

Nothing here touches a socket, a clock or a task, so every behaviour — subscription
ref-counting, fan-out, sequencing, resume, flood control, drain — is unit-tested directly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from pydantic import ValidationError

from protocol.codec import CodecError, decode, encode
from protocol.errors import ErrorCode
from protocol.link import LinkWelcome, Replayed, SessionEvent
from protocol.market import CandleInterval, Channel, InstrumentSpec
from protocol.orders import TERMINAL_STATUSES, CancelOrder, ModifyOrder, NewOrder, modify_reported
from protocol.session import (
    Error,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    Reconnect,
    ReconnectReason,
    Subscribe,
    Subscribed,
    Subscription,
    Unsubscribe,
    Unsubscribed,
    Welcome,
    parse_client_message,
)
from protocol.signals import Signal
from tradefleet.service.latency import LatencyWindow
from tradefleet.service.session_tokens import SessionClaims
from workers.market.book_view import BookUpdate, DepthView, UpstreamBook
from workers.market.flood import FloodLimiter
from workers.market.order_checks import OrderRequest, check_request
from workers.market.sequencing import SeqOutcome, SessionSequence
from workers.market.settings import MarketSettings
from workers.market.streams import StreamKey, StreamTable, UpstreamChange

log = structlog.get_logger(__name__)

# WebSocket close codes the core asks for.
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013

_MALFORMED = (KeyError, ValueError, TypeError, ArithmeticError, AttributeError)


@dataclass(eq=False)
class Connection:
    """One algo WebSocket. Frames for the client accumulate in `outbox` until the shell
    writes them; `closing` asks the shell to close (code, reason) once the outbox is sent."""

    conn_id: int
    claims: SessionClaims
    limiter: FloodLimiter
    session: MarketSession | None = None
    outbox: list[bytes] = field(default_factory=list)
    closing: tuple[int, str] | None = None


@dataclass(eq=False)
class MarketSession:
    """An algo session: outlives its connections for `detached_grace_s` so a resume on this
    Market restores its subscriptions."""

    session_id: str
    customer: str
    account: str
    sequence: SessionSequence[bytes] = field(default_factory=SessionSequence)
    streams: set[StreamKey] = field(default_factory=set)
    conn: Connection | None = None
    detached_at: float | None = None


@dataclass(eq=False)
class _Unanswered:
    frame: bytes
    sent_at: float


@dataclass(eq=False)
class AccountLink:
    """The core's view of one account's Broker link and the market data flowing through it."""

    account: str
    ready: bool = False
    epoch: int | None = None
    broker_id: str | None = None
    specs: dict[str, InstrumentSpec] | None = None
    table: StreamTable = field(default_factory=StreamTable)
    books: dict[str, UpstreamBook] = field(default_factory=dict)
    views: dict[StreamKey, DepthView] = field(default_factory=dict)
    last_ticker: dict[str, bytes] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)
    outbox: list[bytes] = field(default_factory=list)
    signalling: dict[tuple[str, str], _Unanswered] = field(default_factory=dict)
    """Signal routes with no answer yet, by (session, signal_id): sent (again) when a link
    comes up, until the Broker's `signal_accepted` / `signal_rejected` for it; a signal_id is
    its idempotency key, so a copy changes nothing. Kept for `unanswered_ttl_s` at most."""
    unanswered: dict[tuple[str, str], _Unanswered] = field(default_factory=dict)
    """new_order routes with no answer yet, by (session, client_order_id): re-sent (the
    Broker is idempotent on client_order_id) when a dropped link comes back; timed for the
    route → first event latency."""
    amending: dict[tuple[str, str], dict[str, tuple[bytes, float]]] = field(
        default_factory=dict)
    """The latest cancel_order and modify_order route of each order, by (session,
    client_order_id) and then type, until the Broker's answer shows it carried out: sent
    (again) when a link comes up, so an amendment the old Broker never journaled is not lost
    with it. A copy already carried out changes nothing: the Broker answers a cancel of a
    cancelled order, and a modify to the order's present qty and price, with its state.
    Kept for `unanswered_ttl_s` at most, like new_orders."""


def _answered(link: AccountLink, session_id: str, event: dict[str, Any]) -> _Unanswered | None:
    """Forget what `event` (from the Broker, live or replayed) answers: the session's
    new_order of its client_order_id (returned, for the route latency), the amendments it
    shows carried out, the signal it answers."""
    entry = None
    client_order_id = event.get("client_order_id")
    if isinstance(client_order_id, str):
        entry = link.unanswered.pop((session_id, client_order_id), None)
        if link.amending:
            _amendment_answered(link, (session_id, client_order_id), event)
    signal_id = event.get("signal_id")
    if link.signalling and isinstance(signal_id, str) and \
            event.get("type") in ("signal_accepted", "signal_rejected"):
        link.signalling.pop((session_id, signal_id), None)
    return entry


def _amendment_answered(link: AccountLink, key: tuple[str, str], event: dict[str, Any]) -> None:
    """Forget the amendments of `key` that `event` (from the Broker) shows carried out: all
    of them once the order is finished or the Broker refused one (its refusal is the answer),
    the modify once the order reports the modify's qty and price."""
    amendments = link.amending.get(key)
    if amendments is None:
        return
    if event.get("type") == "error" or event.get("status") in TERMINAL_STATUSES:
        del link.amending[key]
        return
    modify = amendments.get("modify_order")
    if modify is not None and event.get("type") in ("order_modified", "order_snapshot") and \
            modify_reported(orjson.loads(modify[0])["msg"], event.get("qty"), event.get("price")):
        del amendments["modify_order"]
        if not amendments:
            del link.amending[key]


class Counters:
    """Message totals; rates are computed between two readings (cheap on the hot path)."""

    def __init__(self) -> None:
        self.msgs_in = 0
        self.msgs_out = 0
        self.duplicates_dropped = 0
        self.seqs_skipped = 0
        self._last: tuple[float, int, int] | None = None

    def rates(self, now: float) -> tuple[float, float]:
        """(in, out) messages per second since the previous call (0 on the first)."""
        last, self._last = self._last, (now, self.msgs_in, self.msgs_out)
        if last is None or now <= last[0]:
            return 0.0, 0.0
        elapsed = now - last[0]
        return (self.msgs_in - last[1]) / elapsed, (self.msgs_out - last[2]) / elapsed


def _error(code: ErrorCode, message: str, **fields: Any) -> bytes:
    return encode(Error(code=code, message=message, **fields))


def _subscription(key: StreamKey) -> Subscription:
    interval = CandleInterval(key.interval) if key.interval else None
    return Subscription.model_construct(instrument=key.instrument, channel=key.channel,
                                        depth=key.depth, interval=interval)


def _stream_order(key: StreamKey) -> tuple[str, str, int, str]:
    return key.instrument, key.channel.value, key.depth or 0, key.interval or ""


class MarketCore:
    """All algo sessions and account links of one Market worker."""

    def __init__(self, market_id: str, settings: MarketSettings | None = None) -> None:
        self.market_id = market_id
        self.settings = settings or MarketSettings()
        self.draining = False
        self.accepting = True
        self.sessions: dict[str, MarketSession] = {}
        self.connections: dict[int, Connection] = {}
        self.links: dict[str, AccountLink] = {}
        self.counters = Counters()
        self.latency = LatencyWindow()
        self._ids = itertools.count(1)
        self._dirty: set[int] = set()
        self._dirty_links: set[str] = set()
        self._targets: dict[tuple[int, StreamKey], list[Connection]] = {}
        """Per (stream table, stream): the attached connections a fan-out writes to, so that
        sessions detached (but kept for a resume) cost nothing per event. Dropped whenever a
        session attaches or detaches or a subscription changes; rebuilt on the next event."""

    # ------------------------------------------------------------------ shell interface

    def take_dirty(self) -> set[int]:
        """Connections with frames to write or a close to perform since the last call."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def take_link_frames(self) -> dict[str, list[bytes]]:
        """Frames to send on each account's Broker link since the last call, in order."""
        out: dict[str, list[bytes]] = {}
        for account in self._dirty_links:
            link = self.links[account]
            if link.outbox:
                out[account], link.outbox = link.outbox, []
        self._dirty_links.clear()
        return out

    def link(self, account: str) -> AccountLink:
        """The account's link state, created on first use (the shell then opens the link)."""
        link = self.links.get(account)
        if link is None:
            link = self.links[account] = AccountLink(account)
        return link

    # ------------------------------------------------------------------ connections

    def connect(self, claims: SessionClaims, now: float) -> Connection:
        """A client connection authenticated by `claims` opened. Returns it; if this Market
        takes no new sessions, it is already `closing` with an error in its outbox."""
        conn = Connection(next(self._ids), claims, FloodLimiter(
            self.settings.flood_rate_per_s, self.settings.flood_burst, now))
        self.connections[conn.conn_id] = conn
        if self.draining:
            self._refuse(conn, ErrorCode.DRAINING,
                         "this Market worker is draining; ask the MarketManager for another",
                         CLOSE_TRY_AGAIN)
        elif not self.accepting:
            self._refuse(conn, ErrorCode.UNAVAILABLE,
                         "this Market worker is not taking sessions; ask the MarketManager again",
                         CLOSE_TRY_AGAIN)
        else:
            self.link(claims.account)
        return conn

    def disconnect(self, conn_id: int, now: float) -> None:
        """The connection is gone. Its session (if any) is kept for `detached_grace_s`."""
        conn = self.connections.pop(conn_id, None)
        self._dirty.discard(conn_id)
        if conn is None or conn.session is None:
            return
        session = conn.session
        if session.conn is conn:
            session.conn = None
            session.detached_at = now
            self._targets.clear()

    def receive(self, conn_id: int, data: bytes | str, now: float) -> None:
        """One client frame. The first must be `hello`; every problem becomes an `error`."""
        conn = self.connections.get(conn_id)
        if conn is None or conn.closing is not None:
            return
        self.counters.msgs_in += 1
        if not conn.limiter.allow(now):
            self._refuse(conn, ErrorCode.FLOOD,
                         f"more than {self.settings.flood_rate_per_s:g} messages per second; "
                         "slow down", CLOSE_POLICY)
            return
        try:
            message = parse_client_message(decode(data))
        except CodecError as exc:
            self._answer_error(conn, ProtocolError(ErrorCode.BAD_JSON, str(exc)[:200]))
            return
        except ProtocolError as exc:
            self._answer_error(conn, exc)
            return
        session = conn.session
        if session is None:
            self._hello(conn, message, now)
        elif isinstance(message, Hello):
            self._emit(conn, _error(ErrorCode.CONFLICT,
                                    f"this connection already carries session "
                                    f"{session.session_id!r}; hello comes once", field="type"))
        elif isinstance(message, Subscribe):
            self._subscribe(session, conn, message)
        elif isinstance(message, Unsubscribe):
            self._unsubscribe(session, conn, message)
        elif isinstance(message, Ping):
            self._emit(conn, encode(Pong(ts=message.ts, ref=message.ref)))
        elif isinstance(message, Pong):
            pass
        else:
            self._route(session, conn, message, now)

    def _answer_error(self, conn: Connection, exc: ProtocolError) -> None:
        if conn.session is None:  # the first frame must be a hello the core understands
            self._refuse(conn, exc.code, f"first frame must be a valid hello: {exc.message}",
                         CLOSE_POLICY, field=exc.field)
        else:
            self._emit(conn, encode(exc.to_error()))

    def _refuse(self, conn: Connection, code: ErrorCode, message: str, close_code: int,
                **fields: Any) -> None:
        conn.outbox.clear()
        conn.outbox.append(_error(code, message, **fields))
        conn.closing = (close_code, code.value)
        self._dirty.add(conn.conn_id)

    def _emit(self, conn: Connection, frame: bytes) -> None:
        outbox = conn.outbox
        outbox.append(frame)
        if len(outbox) == 1:
            self._dirty.add(conn.conn_id)
        elif len(outbox) > self.settings.max_outbox_events and conn.closing is None:
            self._slow_consumer(conn)

    def _slow_consumer(self, conn: Connection) -> None:
        # A client that cannot keep up is told to come back: its order events are replayed
        # on resume, its market data resnapshotted; holding more would only grow memory.
        conn.outbox.clear()
        conn.closing = (CLOSE_TRY_AGAIN, "slow consumer: reconnect and resume")
        self._dirty.add(conn.conn_id)

    # ------------------------------------------------------------------ hello / resume

    def _hello(self, conn: Connection, message: Any, now: float) -> None:
        claims = conn.claims
        if not isinstance(message, Hello):
            self._refuse(conn, ErrorCode.INVALID_FIELD,
                         f"first frame must be hello, not {message.type}", CLOSE_POLICY,
                         field="type")
            return
        if message.session_id != claims.session_id:
            self._refuse(conn, ErrorCode.FORBIDDEN,
                         "hello names another session than the session token", CLOSE_POLICY,
                         field="session_id")
            return
        session = self.sessions.get(claims.session_id)
        if session is not None and (session.customer, session.account) != (
                claims.customer, claims.account):
            self._refuse(conn, ErrorCode.FORBIDDEN, "session belongs to another account",
                         CLOSE_POLICY, field="session_id")
            return
        existed = session is not None
        if session is None:
            session = MarketSession(claims.session_id, claims.customer, claims.account)
            self.sessions[session.session_id] = session
        elif session.conn is not None and session.conn is not conn:
            old = session.conn
            old.session = None
            old.outbox.clear()
            old.closing = (CLOSE_NORMAL, "superseded by a newer connection of this session")
            self._dirty.add(old.conn_id)
        session.conn, session.detached_at = conn, None
        conn.session = session
        self._targets.clear()
        link = self.link(session.account)
        link.sessions.add(session.session_id)

        session.sequence.restart(message.resume_from_seq or 0)
        restored = sorted(session.streams, key=_stream_order)
        self._emit(conn, encode(Welcome(
            session_id=session.session_id, resumed=existed or message.resume_from_seq is not None,
            last_seq=session.sequence.last_known,
            subscriptions=[_subscription(k) for k in restored])))
        for key in restored:
            self._send_initial(link, key, conn)
        # Also tells the Broker this session now lives on this Market: its live events come
        # here from now on.
        if link.ready:
            self._send_replay(link, session)
        log.info("session attached", session_id=session.session_id, account=session.account,
                 resumed=existed or message.resume_from_seq is not None,
                 resume_from_seq=message.resume_from_seq)

    def _send_replay(self, link: AccountLink, session: MarketSession) -> None:
        after = session.sequence.request_replay()
        frame: dict[str, Any] = {"type": "replay", "session_id": session.session_id,
                                 "after_seq": after}
        if session.conn is not None:
            frame["grant"] = session.conn.claims.issued_ms
        self._to_link(link, orjson.dumps(frame))

    # ------------------------------------------------------------------ subscriptions

    def _key(self, request: Subscription) -> StreamKey:
        depth = request.depth
        if request.channel is Channel.BOOK and depth is None:
            depth = self.settings.default_book_depth
        interval = request.interval.value if request.interval is not None else None
        return StreamKey(request.instrument, request.channel, depth, interval)

    def _subscribe(self, session: MarketSession, conn: Connection, request: Subscribe) -> None:
        if self.draining:
            self._emit(conn, _error(ErrorCode.DRAINING, "this Market worker is draining; no "
                                    "new subscriptions", ref=request.ref))
            return
        link = self.link(session.account)
        if link.specs is not None and request.instrument not in link.specs:
            self._emit(conn, _error(ErrorCode.UNKNOWN_INSTRUMENT,
                                    f"account {session.account!r} does not trade "
                                    f"{request.instrument!r}", field="instrument",
                                    ref=request.ref))
            return
        key = self._key(request)
        session.streams.add(key)
        changes = link.table.add(key, session.session_id)
        self._emit(conn, encode(Subscribed(instrument=key.instrument, channel=key.channel,
                                           depth=key.depth, interval=request.interval,
                                           ref=request.ref)))
        self._apply_upstream(link, changes)
        self._send_initial(link, key, conn)

    def _unsubscribe(self, session: MarketSession, conn: Connection,
                     request: Unsubscribe) -> None:
        key = self._key(request)
        session.streams.discard(key)
        link = self.link(session.account)
        self._apply_upstream(link, link.table.remove(key, session.session_id))
        self._emit(conn, encode(Unsubscribed(instrument=key.instrument, channel=key.channel,
                                             depth=key.depth, interval=request.interval,
                                             ref=request.ref)))

    def _send_initial(self, link: AccountLink, key: StreamKey, conn: Connection) -> None:
        """What a session joining a live stream needs first: the book as it is, the last
        ticker. (A stream that is not live yet delivers them when its snapshot arrives.)"""
        if key.channel is Channel.BOOK:
            view = link.views.get(key)
            book = link.books.get(key.instrument)
            snapshot = view.current(book.ts if book else 0) if view is not None else None
            if snapshot is not None:
                self._emit(conn, orjson.dumps(snapshot))
                self.counters.msgs_out += 1
        elif key.channel is Channel.TICKER:
            ticker = link.last_ticker.get(key.instrument)
            if ticker is not None:
                self._emit(conn, ticker)
                self.counters.msgs_out += 1

    def _apply_upstream(self, link: AccountLink, changes: list[UpstreamChange]) -> None:
        self._targets.clear()  # called after every change of the link's subscriptions
        for change in changes:
            key = change.stream
            if key.channel is Channel.BOOK:
                self._book_change(link, change)
            elif not change.subscribe and key.channel is Channel.TICKER:
                link.last_ticker.pop(key.instrument, None)
            if link.ready:
                self._to_link(link, self._md_frame(change.subscribe, key))
        # Views exist exactly for the book streams that have sessions — also when a shallower
        # depth joins a deeper live book and nothing changes upstream.
        wanted = {k for k in link.table.streams() if k.channel is Channel.BOOK}
        for key in wanted - link.views.keys():
            view = link.views[key] = DepthView(key.instrument, key.depth or 1)
            book = link.books.get(key.instrument)
            if book is not None and book.ready:
                view.resnapshot(book)  # a newcomer to a live book starts from its levels now
        for key in link.views.keys() - wanted:
            del link.views[key]

    def _book_change(self, link: AccountLink, change: UpstreamChange) -> None:
        key = change.stream
        assert key.depth is not None
        if change.subscribe:
            book = link.books.get(key.instrument)
            if book is None:
                book = link.books[key.instrument] = UpstreamBook(key.depth)
            book.depth = key.depth
            book.expect_snapshot()
        elif link.table.book_depth(key.instrument) is None:
            link.books.pop(key.instrument, None)

    @staticmethod
    def _md_frame(subscribe: bool, key: StreamKey) -> bytes:
        stream: dict[str, Any] = {"instrument": key.instrument, "channel": key.channel.value}
        if key.depth is not None:
            stream["depth"] = key.depth
        if key.interval is not None:
            stream["interval"] = key.interval
        kind = "md_subscribe" if subscribe else "md_unsubscribe"
        return orjson.dumps({"type": kind, "stream": stream})

    # ------------------------------------------------------------------ orders

    def _route(self, session: MarketSession, conn: Connection, request: OrderRequest,
               now: float) -> None:
        link = self.link(session.account)
        refusal = check_request(request, session.account, link.specs)
        if refusal is not None:
            self._emit(conn, encode(refusal.to_error()))
            return
        msg = request.model_dump(mode="json", exclude_none=True)
        if conn.claims.trader_tag is not None and isinstance(request, NewOrder | ModifyOrder
                                                             | Signal):
            # Signed into the session's token: the Broker applies the tag's risk limits.
            msg["trader_tag"] = conn.claims.trader_tag
        frame = orjson.dumps({"type": "route", "session_id": session.session_id,
                              "customer": session.customer, "msg": msg,
                              "grant": conn.claims.issued_ms})
        if isinstance(request, NewOrder):
            # Sent now if the link is up, else when it comes up; re-sent after a link drop
            # until answered.
            if link.ready or len(link.unanswered) < self.settings.max_held_requests:
                link.unanswered[(session.session_id, request.client_order_id)] = _Unanswered(
                    frame, now)
                if link.ready:
                    self._to_link(link, frame)
                return
        elif isinstance(request, CancelOrder | ModifyOrder):
            key = (session.session_id, request.client_order_id)
            if link.ready or key in link.amending or \
                    len(link.amending) < self.settings.max_held_requests:
                link.amending.setdefault(key, {})[request.type] = (frame, now)
                if link.ready:
                    self._to_link(link, frame)
                return
        elif isinstance(request, Signal):
            key = (session.session_id, request.signal_id)
            if link.ready or key in link.signalling or \
                    len(link.signalling) < self.settings.max_held_requests:
                link.signalling[key] = _Unanswered(frame, now)
                if link.ready:
                    self._to_link(link, frame)
                return
        elif link.ready:
            self._to_link(link, frame)
            return
        self._emit(conn, _error(
            ErrorCode.UNAVAILABLE,
            f"the Broker link of account {session.account!r} is down; retry shortly",
            ref=getattr(request, "ref", None),
            client_order_id=getattr(request, "client_order_id", None)))

    # ------------------------------------------------------------------ broker link

    def link_up(self, account: str, welcome: LinkWelcome) -> None:
        """The account's Broker link is open and welcomed. Resubscribes every stream, asks a
        replay for every attached session, and sends (again) the new_orders, amendments and
        signals not answered yet."""
        link = self.link(account)
        if link.epoch is not None and welcome.epoch != link.epoch:
            log.info("broker epoch changed", account=account, old_epoch=link.epoch,
                     epoch=welcome.epoch, broker_id=welcome.broker_id)
        link.ready, link.epoch, link.broker_id = True, welcome.epoch, welcome.broker_id
        link.specs = {spec.instrument: spec for spec in welcome.instruments}
        for key in link.table.upstream():
            self._to_link(link, self._md_frame(True, key))
        for book in link.books.values():
            book.expect_snapshot()
        for session_id in sorted(link.sessions):
            session = self.sessions[session_id]
            if session.conn is not None:
                self._send_replay(link, session)
        for (session_id, _), entry in link.unanswered.items():
            self._to_link(link, self._held(session_id, entry.frame))
        for (session_id, _), amendments in link.amending.items():
            for kind in ("modify_order", "cancel_order"):  # a cancel goes last, as intended
                if kind in amendments:
                    self._to_link(link, self._held(session_id, amendments[kind][0]))
        for (session_id, _), entry in link.signalling.items():
            self._to_link(link, self._held(session_id, entry.frame))

    def _held(self, session_id: str, frame: bytes) -> bytes:
        """A held request's route frame as sent again now: marked `detached` if the session
        has no connection here any more (its algo went away, or resumed on another Market).
        The Broker carries the request out but keeps sending the session's events where it
        sends them; else they would come here, where nobody reads them."""
        session = self.sessions.get(session_id)
        if session is not None and session.conn is not None:
            return frame
        return orjson.dumps({**orjson.loads(frame), "detached": True})

    def link_down(self, account: str) -> None:
        """The account's Broker link dropped; the shell re-opens it."""
        link = self.link(account)
        link.ready = False
        link.outbox.clear()
        for session_id in link.sessions:
            self.sessions[session_id].sequence.link_lost()

    def link_frame(self, account: str, data: bytes | str, now: float) -> None:
        """One frame from the account's Broker. Malformed frames are logged and dropped."""
        link = self.link(account)
        try:
            message = decode(data)
            kind = message.get("type")
            if kind == "market":
                self._market(link, message["events"])
            elif kind == "session_event":
                self._session_event(link, SessionEvent.model_validate(message), now)
            elif kind == "replayed":
                self._replayed(link, Replayed.model_validate(message))
            elif kind == "resync":
                # The Broker's venue connection came back: books may have moved while it was
                # away. Ask for each book afresh rather than trust deltas to line up.
                for instrument in list(link.books):
                    self._resnapshot(link, instrument)
            else:
                log.warning("unexpected link frame", account=account, type=str(kind)[:40])
        except (CodecError, ValidationError, *_MALFORMED) as exc:
            log.warning("malformed link frame dropped", account=account, error=str(exc)[:200])

    def _market(self, link: AccountLink, events: Iterable[dict[str, Any]]) -> None:
        # Consecutive events of one stream are fanned out together (a run): each session's
        # outbox takes the whole run in one list extend, so the per-session cost is paid once
        # per run, not once per event. Runs break wherever the stream changes, so every
        # session still sees its events in the order the Broker sent them.
        table = link.table
        run_key: StreamKey | None = None
        run: list[bytes] = []
        for event in events:
            try:
                kind = event["type"]
                instrument = event["instrument"]
                if kind == "trade":
                    key = StreamKey(instrument, Channel.TRADES)
                elif kind == "ticker":
                    key = StreamKey(instrument, Channel.TICKER)
                elif kind == "candle":
                    key = StreamKey(instrument, Channel.CANDLES, None, event["interval"])
                elif kind in ("book_snapshot", "book_delta"):
                    if run:
                        self._fan_out(table, run_key, run)  # type: ignore[arg-type]
                        run_key, run = None, []
                    self._book_event(link, instrument, event)
                    continue
                else:
                    continue
                if not table.sessions(key):
                    continue
                frame = orjson.dumps(event)
                if kind == "ticker":
                    link.last_ticker[instrument] = frame
                if key != run_key:
                    if run:
                        self._fan_out(table, run_key, run)  # type: ignore[arg-type]
                    run_key, run = key, []
                run.append(frame)
            except _MALFORMED as exc:
                log.warning("malformed market event dropped", account=link.account,
                            error=str(exc)[:200])
        if run:
            self._fan_out(table, run_key, run)  # type: ignore[arg-type]

    def _book_event(self, link: AccountLink, instrument: str, event: dict[str, Any]) -> None:
        book = link.books.get(instrument)
        if book is None:
            return
        update = book.apply(event)
        if update is BookUpdate.GAP:
            log.warning("book delta missed; resubscribing", account=link.account,
                        instrument=instrument)
            self._resnapshot(link, instrument)
            return
        if update is BookUpdate.IGNORED:
            return
        for key in link.table.book_streams(instrument):
            view = link.views[key]
            derived = view.resnapshot(book) if update is BookUpdate.SNAPSHOT else view.follow(book)
            if derived is not None:
                self._fan_out(link.table, key, [orjson.dumps(derived)])

    def _resnapshot(self, link: AccountLink, instrument: str) -> None:
        """Get a fresh upstream snapshot of a book: unsubscribe and subscribe again (the
        Broker counts subscriptions per link, so the pair leaves its count unchanged)."""
        book = link.books[instrument]
        key = StreamKey(instrument, Channel.BOOK, book.depth)
        if link.ready:
            self._to_link(link, self._md_frame(False, key))
            self._to_link(link, self._md_frame(True, key))
        book.expect_snapshot()

    def _fan_out(self, table: StreamTable, key: StreamKey, frames: list[bytes]) -> None:
        """Queue already-encoded events of one stream for every session on it: the same bytes
        for everyone, one list extend per connection whatever the number of events."""
        targets = self._targets.get((id(table), key))
        if targets is None:
            sessions = self.sessions
            targets = self._targets[(id(table), key)] = [
                conn for session_id in table.sessions(key)
                if (conn := sessions[session_id].conn) is not None]
        dirty = self._dirty
        limit = self.settings.max_outbox_events
        count = len(frames)
        delivered = 0
        for conn in targets:
            if conn.closing is not None:
                continue
            outbox = conn.outbox
            if not outbox:
                dirty.add(conn.conn_id)
            outbox += frames
            delivered += count
            if len(outbox) > limit:
                self._slow_consumer(conn)
        self.counters.msgs_out += delivered

    def _session_event(self, link: AccountLink, message: SessionEvent, now: float) -> None:
        session = self.sessions.get(message.session_id)
        if session is None or session.account != link.account:
            return
        event = message.event
        entry = _answered(link, session.session_id, event)
        if entry is not None:
            self.latency.add((now - entry.sent_at) * 1e6)
        conn = session.conn
        if conn is None:
            return  # detached: the resume replays it
        seq = event.get("seq")
        if not isinstance(seq, int):  # an answer (positions, open orders, error): no seq
            self._emit(conn, orjson.dumps(event))
            self.counters.msgs_out += 1
            return
        self._deliver(link, session, conn, session.sequence.receive(seq, orjson.dumps(event)))

    def _replayed(self, link: AccountLink, message: Replayed) -> None:
        session = self.sessions.get(message.session_id)
        if session is None or session.account != link.account:
            return
        items = []
        for event in message.events:
            _answered(link, session.session_id, event)
            seq = event.get("seq")
            if isinstance(seq, int):
                items.append((seq, orjson.dumps(event)))
            else:
                log.warning("replayed event without seq dropped", account=link.account,
                            session_id=session.session_id)
        outcome = session.sequence.replayed(items, message.last_seq)
        conn = session.conn
        if conn is not None:
            self._deliver(link, session, conn, outcome)

    def _deliver(self, link: AccountLink, session: MarketSession, conn: Connection,
                 outcome: SeqOutcome[bytes]) -> None:
        for frame in outcome.deliver:
            self._emit(conn, frame)
        self.counters.msgs_out += len(outcome.deliver)
        self.counters.duplicates_dropped += outcome.duplicates
        if outcome.skipped:
            self.counters.seqs_skipped += outcome.skipped
            log.error("order events missing from the Broker's replay; skipped",
                      session_id=session.session_id, account=link.account,
                      skipped=outcome.skipped)
        if outcome.replay_after is not None and link.ready:
            self._send_replay(link, session)

    def _to_link(self, link: AccountLink, frame: bytes) -> None:
        link.outbox.append(frame)
        self._dirty_links.add(link.account)

    # ------------------------------------------------------------------ lifecycle

    def begin_drain(self) -> None:
        """Refuse new sessions and subscriptions; ask every connected client to reconnect
        elsewhere (through the MarketManager) and resume."""
        self.draining = True
        hint = encode(Reconnect(reason=ReconnectReason.DRAINING))
        for conn in self.connections.values():
            if conn.session is not None and conn.closing is None:
                self._emit(conn, hint)

    def expire(self, now: float) -> None:
        """Forget sessions detached for longer than the grace period (their streams too),
        and stop re-sending new_orders, amendments and signals nobody answered for
        `unanswered_ttl_s`."""
        cutoff = now - self.settings.detached_grace_s
        for session in [s for s in self.sessions.values()
                        if s.detached_at is not None and s.detached_at <= cutoff]:
            self._forget(session)
        stale = now - self.settings.unanswered_ttl_s
        for link in self.links.values():
            for pending in (link.unanswered, link.signalling):
                for key in [k for k, e in pending.items() if e.sent_at <= stale]:
                    del pending[key]
            for key, amendments in list(link.amending.items()):
                for kind in [k for k, (_, at) in amendments.items() if at <= stale]:
                    del amendments[kind]
                if not amendments:
                    del link.amending[key]

    def _forget(self, session: MarketSession) -> None:
        del self.sessions[session.session_id]
        link = self.link(session.account)
        link.sessions.discard(session.session_id)
        for key in list(session.streams):
            self._apply_upstream(link, link.table.remove(key, session.session_id))
        session.streams.clear()
        log.info("session forgotten", session_id=session.session_id, account=session.account)

    @property
    def attached(self) -> int:
        """Sessions with a live connection."""
        return sum(1 for c in self.connections.values() if c.session is not None)

    def has_sessions(self) -> bool:
        """True while any client connection remains (a draining worker waits for this)."""
        return bool(self.connections)
