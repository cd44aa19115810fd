"""The order owner of one account: journal, books and venue session, driven by requests.

`AccountOwner` is the asyncio shell around the pure parts (`AccountBook`, the order tracker,
`reconcile`, `rules`). It has no sockets of its own: what it has to say to Market workers goes
through an `Outbox` (the Broker worker's links; a list in tests).

Lifecycle (`open()`):
  1. claim the account journal with this worker's epoch (`JournalFenced` → refused);
  2. rebuild the books by replaying the journal: from its newest snapshot on, when there is
     one made under the same config (`workers.broker.snapshots`; after a long replay, store
     a new one once the position manager is rebuilt too, at step 3);
  3. connect the venue adapter and read the instruments;
  4. reconcile with the venue (`workers.broker.reconcile`), journaling and emitting what the
     venue did meanwhile, re-sending young intents the venue never saw; then compare the
     position manager's positions with the venue's and correct any difference to the
     venue's (journaled `position_corrected`, logged, an operator event) — also after every
     venue reconnect;
  5. only then take requests, and consume the venue's events. Every `snapshot_after_entries`
     entries from then on, a side process (`workers.broker.snapshotter`) stores a new
     snapshot, so a takeover never replays more than about that many entries.

The position manager (`workers.broker.risk`) sits in front of the order tracker: every
new_order and modify_order from a session, and every `signal`, goes through
`PositionManager.receive` first; the order events the tracker journals, the venue's refusals,
the account's tickers and trades, its equity and a clock tick (about once a second) are fed to
it; its decisions are journaled as kind `risk` (`{"customer", "record"}`) before they are acted
on. A record its session is told of — an order refused by risk, a signal's first answer
(`signal_accepted` / `signal_rejected`), an exit that fired (`exit_fired`, to the session
that sent the signal) — is journaled under that session, so the journal gives it the
session's next `seq`, shared with the order events; the message sent carries that `seq`, and
`replay` rebuilds it from the record (`risk.record_notice`), so a session that was away gets
it on resume. The tracker's rebuild ignores the kind. On
open the manager is rebuilt by replaying the journal's `risk`, `event` and `refused` entries,
then `resume(now)` runs before any request is served.

Every order effect follows the tracker's order — **journal before acting**: each journal entry
is appended (and fsynced) before the venue call or the event that follows it. An order event
is journaled with the session that placed the order, so the journal gives it its per-session
`seq`, and the emitted event carries that `seq`.

Fencing: if any append finds a newer owner (`JournalFenced`) or the journal fails, the owner
stops at once — no venue call, no event — and tells the outbox, which closes every link.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import orjson
import structlog

from protocol.codec import encode
from protocol.errors import ErrorCode
from protocol.market import (
    BookDelta,
    BookSnapshot,
    Candle,
    Channel,
    InstrumentSpec,
    MarketEvent,
    Ticker,
    Trade,
)
from protocol.orders import (
    BalancesSnapshot,
    CancelOrder,
    CancelReason,
    GetOpenOrders,
    GetPositions,
    ModifyOrder,
    NewOrder,
    OpenOrders,
    OrderCancelled,
    OrderEvent,
    OrderFilled,
    OrderPartiallyFilled,
    PositionsSnapshot,
)
from protocol.risk import RiskLimits
from protocol.session import Error, ProtocolError, parse_client_message
from protocol.signals import Signal
from tradefleet.service.session_tokens import TRADER_TAG
from workers.broker import account as entries
from workers.broker.account import AccountBook, stamped_event
from workers.broker.adapters.base import (
    Adapter,
    AdapterError,
    ConnectionChanged,
    FatalAdapterError,
    OrderRejectedError,
    RetryableAdapterError,
)
from workers.broker.journal import Entry, Journal, JournalFenced
from workers.broker.orders import (
    CancelAtVenue,
    ClientRequest,
    Effect,
    Emit,
    ModifyAtVenue,
    OrderStateError,
    PlaceAtVenue,
    Refuse,
    VenueRefused,
)
from workers.broker.orders import Journal as JournalEffect
from workers.broker.reconcile import (
    DEFAULT_MAX_RESEND_AGE_NS,
    ReconcilePlan,
    fills_window_start,
    reconcile,
)
from workers.broker.retention import RETAIN_FINISHED
from workers.broker.risk import manager as risk
from workers.broker.risk import records as risk_records
from workers.broker.risk.records import RISK_RECORD, OrderRefused
from workers.broker.rules import RuleViolation, check_modify, check_new_order
from workers.broker.snapshots import (
    RISK,
    SNAPSHOT_AFTER_ENTRIES,
    SnapshotFenced,
    rebuild_books,
    session_customer,
    snapshot_config,
    snapshot_path,
    state_of,
    write_snapshot,
)
from workers.broker.streams import StreamKey

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

MARKET_EVENTS = (Ticker, Trade, BookSnapshot, BookDelta, Candle)
VENUE_ATTEMPTS = 3
MAX_RETRY_WAIT_S = 1.0
READY_WAIT_S = 10.0
SNAPSHOT_TIMEOUT_S = 300.0  # a side process storing a snapshot is killed after this
CLOCK_TICK_S = 1.0
EQUITY_EVERY_TICKS = 10
FIRST_PRICE_WAIT_S = 2.0
RISK_WATCH_CHANNELS = (Channel.TICKER, Channel.TRADES)
RECENT_FILLS = 20  # fills kept for the operator views (`info()["recent_fills"]`, sent
#                   with every status report, so kept short)
NO_SESSION = "position-manager"  # requester of orders the manager places for no session


class OwnerState(StrEnum):
    OPENING = "opening"  # claiming the journal, rebuilding, connecting
    RECONCILING = "reconciling"
    READY = "ready"  # taking requests
    VENUE_DOWN = "venue_down"  # the venue connection is lost; requests wait for it
    FENCED = "fenced"  # a newer owner holds the journal: this one does nothing any more
    FAILED = "failed"  # the journal or the venue session failed for good
    CLOSED = "closed"


class OwnerError(Exception):
    """The account cannot be taken (or kept). The message says why, for the operator."""


class OwnerStopped(Exception):
    """Raised inside the owner when it has stopped acting (fenced or failed) mid-operation."""


class Outbox(Protocol):
    """Where the owner's messages for Market workers go."""

    def to_session(self, session_id: str, frame: bytes) -> None:
        """Deliver an encoded `session_event` to the link carrying the session, if any."""

    def market(self, event: MarketEvent) -> None:
        """Deliver a market event to the links subscribed to its stream."""

    def resync(self, reason: str) -> None:
        """Tell every link that venue state may have moved (after a reconnect)."""

    def stopped(self, reason: str) -> None:
        """The owner stopped acting for the account (fenced or failed): drop every link."""


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the garbage collector for a rebuild: it builds a great many long-lived objects
    and frees few, so the collector's passes meanwhile only walk the growing books again and
    again (over a third of the time of a 100,000-entry rebuild). Refcounting still frees what
    is dropped; the collector is on again afterwards, whatever happened."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def session_frame(session_id: str, event: bytes) -> bytes:
    """An encoded `session_event` around an already-encoded server event."""
    return (b'{"type":"session_event","session_id":' + orjson.dumps(session_id)
            + b',"event":' + event + b"}")


@dataclass(frozen=True, slots=True)
class _Requester:
    session_id: str
    customer: str
    trader_tag: str | None = None  # bound to the session; the tag's risk limits apply


AdapterFactory = Callable[[str], Adapter]
"""Builds the adapter for an account."""


class AccountOwner:
    """The single writer of one account (see the module docstring)."""

    def __init__(
        self,
        *,
        account: str,
        journal_path: Path,
        worker_id: str,
        epoch: int,
        adapter_factory: AdapterFactory,
        outbox: Outbox,
        clock: Callable[[], int] = time.time_ns,
        max_resend_age_ns: int = DEFAULT_MAX_RESEND_AGE_NS,
        connect_timeout_s: float = 15.0,
        limits: RiskLimits | None = None,
        on_notable: Callable[[dict[str, Any]], None] | None = None,
        retain_finished: int = RETAIN_FINISHED,
        snapshot_after_entries: int = SNAPSHOT_AFTER_ENTRIES,
    ) -> None:
        self.account = account
        self.worker_id = worker_id
        self.epoch = epoch
        self.state = OwnerState.OPENING
        self.error: str | None = None
        self.instruments: list[InstrumentSpec] = []
        self.book = AccountBook(account, clock, retain_finished=retain_finished)
        self._retain_finished = retain_finished
        self._snapshot_after = snapshot_after_entries
        # How the books were rebuilt on open: from the snapshot at this seq (0: none), then
        # this many entries replayed.
        self.rebuilt: dict[str, int] = {}
        # The newest snapshot stored (by this owner or before it), and the side process that
        # stores the next one while the owner runs (`_snapshot_in_background`).
        self.snapshot_seq = 0
        self.snapshots_stored = 0
        self._snapshot_failed_at = 0  # after a failed run, wait as many entries again
        self._snapshotter: asyncio.Task[None] | None = None
        self._journal_path = journal_path
        self._adapter_factory = adapter_factory
        self._outbox = outbox
        self._clock = clock
        self._max_resend_age_ns = max_resend_age_ns
        self._connect_timeout_s = connect_timeout_s
        self._journal: Journal | None = None
        self._adapter: Adapter | None = None
        self._specs: dict[str, InstrumentSpec] = {}
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._inflight = 0
        self._consumer: asyncio.Task[None] | None = None
        self._log = log.bind(account=account, epoch=epoch)
        self.venue = "?"
        self.last_reconcile: dict[str, Any] = {}
        self._limits = limits if limits is not None else RiskLimits()
        self.risk: risk.PositionManager | None = None
        self._watched: dict[str, asyncio.Event] = {}  # instrument → "a price has come"
        self._ticker: asyncio.Task[None] | None = None
        # Why the position manager cancelled an order (kill switch, exit): the venue only
        # says "requested", the algo should hear the real reason.
        self._cancel_reasons: dict[str, CancelReason] = {}
        # What an operator wants in the event log (risk refusals, exits, kill switch, venue
        # resyncs): one dict per event, handed to the worker, which sends it up its pipe.
        self._on_notable = on_notable
        self.recent_fills: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=RECENT_FILLS)

    # ------------------------------------------------------------ lifecycle

    @property
    def acting(self) -> bool:
        return self.state not in (OwnerState.FENCED, OwnerState.FAILED, OwnerState.CLOSED)

    @property
    def connected(self) -> bool:
        return self.state is OwnerState.READY

    @property
    def inflight(self) -> int:
        """Requests being carried out right now."""
        return self._inflight

    async def open(self) -> None:
        """Claim, rebuild, connect, reconcile (module docstring). Raises `OwnerError` with a
        sentence for the operator; nothing is left running then."""
        try:
            self._journal = Journal(self._journal_path, self.worker_id, self.epoch)
        except JournalFenced as exc:
            self.state = OwnerState.FENCED
            raise OwnerError(f"account {self.account} is owned by a newer epoch: {exc}") from exc
        except Exception as exc:
            self.state = OwnerState.FAILED
            raise OwnerError(f"cannot open the journal of {self.account}: {exc}") from exc
        try:
            with collector_paused():
                rebuilt = rebuild_books(self.account, self._clock, self._journal,
                                        snapshot_path(self._journal_path),
                                        self._snapshot_config(), self._log)
            self.book = rebuilt.book
            # The sessions of a snapshot from before the journal kept them, and those named by
            # the entries replayed (in the table already, unless the journal predates it).
            self._journal_write(self._journal_or_stop().note_sessions, rebuilt.customers)
            for problem in self.book.rebuild_errors:
                self._log.error("journal_entry_refused_on_rebuild", problem=problem)
            claimed = self._append(entries.OWNER, {"worker_id": self.worker_id,
                                                   "epoch": self.epoch})
            read = len(rebuilt.journaled)
            self.snapshot_seq = rebuilt.snapshot_seq
            self.rebuilt = {"snapshot_seq": rebuilt.snapshot_seq, "replayed": read}
            self._log.info("journal_claimed", entries=read, snapshot_seq=rebuilt.snapshot_seq,
                           orders=self.book.orders)
            self._adapter = self._adapter_factory(self.account)
            self.venue = self._adapter.venue
            await self._connect()
            self.instruments = await self._adapter.instruments()
            self._specs = {spec.instrument: spec for spec in self.instruments}
            with collector_paused():
                self.risk = rebuilt.position_manager(self.account, self._limits, self._specs,
                                                     self._retain_finished)
                for problem in rebuilt.errors:
                    self._log.error("risk_entry_refused_on_rebuild", problem=problem)
                if read >= self._snapshot_after and self._journal.last_seq() == claimed.seq:
                    self._write_snapshot(claimed.seq)
            del rebuilt
            await self._reconcile()
            await self._run_risk(self.risk.resume(self._clock()), None)
            # Subscribed, not waited for: the venue's events are read from the end of open()
            # on, so a first price could never arrive in time (each held instrument cost every
            # takeover FIRST_PRICE_WAIT_S). Exits and limits get their prices as soon as the
            # account is open.
            await self._watch_held(wait=False)
            await self._update_equity()
        except Exception as exc:  # any failure refuses the assignment, saying why
            self.error = self.error or str(exc) or type(exc).__name__
            if not isinstance(exc, OwnerStopped | AdapterError | OwnerError | TimeoutError):
                self._log.exception("account_open_failed")
            await self.close(OwnerState.FENCED if self.state is OwnerState.FENCED
                             else OwnerState.FAILED)
            raise OwnerError(f"cannot take account {self.account}: {self.error}") from exc
        self.state = OwnerState.READY
        self._ready.set()
        self._consumer = asyncio.create_task(self._consume(), name=f"venue-events:{self.account}")
        self._ticker = asyncio.create_task(self._tick(), name=f"risk-clock:{self.account}")
        self._log.info("account_ready", venue=self.venue, open_orders=len(self.book.open_orders()))

    # ------------------------------------------------------------ snapshots

    def _snapshot_config(self) -> dict[str, Any]:
        return snapshot_config(self._retain_finished, self._limits)

    def _still_owner(self) -> bool:
        return self._journal is not None and self._journal.owner_epoch() == self.epoch

    def _write_snapshot(self, seq: int) -> None:
        """Store the books and the position manager as of entry `seq` (nothing appended
        since), so that the next owner replays only what comes after."""
        assert self._journal is not None and self.risk is not None
        started = time.monotonic()
        try:
            write_snapshot(snapshot_path(self._journal_path), seq, self.epoch,
                           state_of(self._snapshot_config(), self.book, self.risk),
                           self._still_owner)
        except SnapshotFenced as exc:
            self._stop(OwnerState.FENCED, str(exc))
            raise OwnerStopped(str(exc)) from exc
        except Exception:  # noqa: BLE001 - the next owner replays more, nothing is lost
            self._log.exception("journal_snapshot_failed", seq=seq)
            return
        self.snapshot_seq = max(self.snapshot_seq, seq)
        self.snapshots_stored += 1
        self._log.info("journal_snapshot_written", seq=seq,
                       ms=round((time.monotonic() - started) * 1000, 1))

    def _maybe_snapshot(self, seq: int) -> None:
        """Once `snapshot_after_entries` entries have come since the last snapshot, have a
        side process store a new one: it replays the journal from that snapshot on, in a
        process (and on a core) of its own, so the event loop never stops for it."""
        if (self._snapshotter is None and self.state is OwnerState.READY
                and seq - max(self.snapshot_seq, self._snapshot_failed_at)
                >= self._snapshot_after):
            self._snapshotter = asyncio.create_task(self._snapshot_in_background(seq),
                                                    name=f"snapshot:{self.account}")

    async def _snapshot_in_background(self, seq: int) -> None:
        job = orjson.dumps({"journal": str(self._journal_path), "account": self.account,
                            "epoch": self.epoch, "retain_finished": self._retain_finished,
                            "limits": self._limits.model_dump(mode="json")})
        process = None
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "workers.broker.snapshotter",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(process.communicate(job), SNAPSHOT_TIMEOUT_S)
            result = orjson.loads(out.splitlines()[-1]) if out.strip() else {}
            if process.returncode != 0 or "seq" not in result:
                raise RuntimeError(f"exit {process.returncode}: {result.get('error', out[-300:])}")
            self.snapshot_seq = max(self.snapshot_seq, int(result["seq"]))
            self.snapshots_stored += bool(result.get("stored"))
            self._log.info("journal_snapshot_written", in_background=True, **result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the next owner replays more, nothing is lost
            # Not again on the next append: after as many entries again.
            self._snapshot_failed_at = self._journal.last_seq() if self._journal else seq
            self._log.warning("journal_snapshot_failed", in_background=True, error=str(exc))
        finally:
            if process is not None and process.returncode is None:
                process.kill()
                with contextlib.suppress(Exception):
                    await process.wait()
            self._snapshotter = None

    async def _connect(self) -> None:
        assert self._adapter is not None
        deadline = time.monotonic() + self._connect_timeout_s
        delay = 0.1
        while True:
            try:
                await asyncio.wait_for(self._adapter.connect(),
                                       max(0.1, deadline - time.monotonic()))
                return
            except RetryableAdapterError as exc:
                if time.monotonic() + delay >= deadline:
                    raise OwnerError(f"the venue stayed unreachable for "
                                     f"{self._connect_timeout_s:.0f} s: {exc}") from exc
                self._log.warning("venue_connect_retry", error=str(exc))
                await asyncio.sleep(exc.retry_after or delay)
                delay = min(delay * 2, 2.0)

    async def close(self, final: OwnerState = OwnerState.CLOSED) -> None:
        """Stop everything: the event consumer, the venue session, the journal. Idempotent."""
        if self.state not in (OwnerState.FENCED, OwnerState.FAILED):
            self.state = final
        self._ready.clear()
        for task in (self._ticker, self._consumer, self._snapshotter):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(task, 5)
        self._ticker = self._consumer = self._snapshotter = None
        adapter, self._adapter = self._adapter, None
        if adapter is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(adapter.close(), 5)
        journal, self._journal = self._journal, None
        if journal is not None:
            journal.close()

    def _stop(self, state: OwnerState, reason: str) -> None:
        """Stop acting at once; the caller unwinds with `OwnerStopped`."""
        if not self.acting:
            return
        self.state = state
        self.error = reason
        self._ready.clear()
        self._log.error("owner_stopped", state=state.value, reason=reason)
        self._outbox.stopped(reason)

    # ------------------------------------------------------------ journal

    def _append(self, kind: str, payload: dict[str, Any], session_id: str | None = None,
                item: Any = None) -> Entry:
        """Journal one entry; `item` is the model it was made from, if any (see
        `AccountBook.observe`)."""
        journal = self._journal_or_stop()
        named = session_customer(kind, payload, session_id)
        if named is not None:  # first, so the journal knows every session an entry names
            self._journal_write(journal.note_session, *named)
        entry = self._journal_write(journal.append, kind, payload, session_id)
        self.book.observe(entry, item)
        self._maybe_snapshot(entry.seq)
        return entry

    def _journal_or_stop(self) -> Journal:
        if not self.acting or self._journal is None:
            raise OwnerStopped(self.error or "the owner has stopped")
        return self._journal

    def _journal_write(self, write: Callable[..., _T], *args: Any) -> _T:
        """One write to the journal, `write(*args)`. If it is fenced or fails, the owner stops
        acting at once and the caller unwinds with `OwnerStopped`."""
        try:
            return write(*args)
        except JournalFenced as exc:
            self._stop(OwnerState.FENCED, str(exc))
            raise OwnerStopped(str(exc)) from exc
        except Exception as exc:
            # Books and journal would disagree from here on: stop, a new owner rebuilds.
            self._stop(OwnerState.FAILED, f"journal write failed: {exc!r}")
            raise OwnerStopped(str(exc)) from exc

    def _customer_of(self, session_id: str | None) -> str | None:
        if not session_id or self._journal is None:
            return None
        try:
            return self._journal.customer_of(session_id)
        except sqlite3.Error:  # a read: the caller treats the session as unknown
            self._log.exception("journal_session_unreadable", session_id=session_id)
            return None

    def _notable(self, event: str, message: str, **detail: Any) -> None:
        if self._on_notable is None:
            return
        try:
            self._on_notable({"event": event, "account": self.account, "message": message,
                              **detail})
        except Exception:  # noqa: BLE001 - the event log must never stop trading
            self._log.exception("notable_event_dropped", event=event)

    def _note_fill(self, event: OrderFilled | OrderPartiallyFilled, customer: str | None
                   ) -> None:
        fill = event.fill
        self.recent_fills.appendleft({
            "ts": fill.ts, "fill_id": fill.fill_id, "client_order_id": fill.client_order_id,
            "instrument": fill.instrument, "side": fill.side.value, "qty": str(fill.qty),
            "price": str(fill.price), "fee": str(fill.fee), "fee_currency": fill.fee_currency,
            "liquidity": fill.liquidity.value, "customer": customer})

    def replay(self, session_id: str, after_seq: int) -> bytes:
        """The encoded `replayed` frame: the session's sequenced events after `after_seq` —
        order events, risk refusals, signal answers and fired exits — in seq order."""
        if self._journal is None:
            raise OwnerStopped(self.error or "the owner has stopped")
        events = []
        for e in self._journal.session_entries(session_id, after_seq):
            try:
                if e.kind == entries.EVENT:
                    events.append(encode(entries.event_from_entry(e)))
                elif e.kind == RISK:
                    notice = self._risk_notice(e)
                    if notice is not None:
                        events.append(encode(notice))
            except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the rest
                self._log.error("replay_entry_unreadable", seq=e.seq, session_id=session_id,
                                error=repr(exc))
        return (b'{"type":"replayed","session_id":' + orjson.dumps(session_id)
                + b',"events":[' + b",".join(events) + b'],"last_seq":'
                + str(self.book.last_seq(session_id)).encode() + b"}")

    def _risk_notice(self, entry: Entry) -> Any:
        """What a journaled risk record told its session, with the entry's seq (None if the
        record tells no one)."""
        record = RISK_RECORD.validate_python(entry.payload["record"])
        addressed = risk.record_notice(self.account, record)
        if addressed is None:
            return None
        return addressed[1].model_copy(update={"seq": entry.session_seq})

    # ------------------------------------------------------------ requests

    async def route(self, session_id: str, customer: str, msg: dict[str, Any]) -> None:
        """Carry out one algo request forwarded by a Market; answers go to the session.

        A Market stamps the session's trader tag (signed into its credentials) on the
        request as `msg["trader_tag"]`; it is not part of the algo's message."""
        tag = msg.get("trader_tag")
        if tag is not None:
            msg = {k: v for k, v in msg.items() if k != "trader_tag"}
            if not (isinstance(tag, str) and TRADER_TAG.fullmatch(tag)):
                cid = msg.get("client_order_id")
                self._error(_Requester(session_id, customer), ErrorCode.INVALID_FIELD,
                            "trader_tag must be 1 to 64 letters, digits or ._-",
                            field="trader_tag",
                            client_order_id=cid if isinstance(cid, str) else None)
                return
        requester = _Requester(session_id, customer, tag)
        try:
            request = parse_client_message(msg)
        except ProtocolError as exc:
            self._answer(requester, exc.to_error())
            return
        if not isinstance(request, NewOrder | CancelOrder | ModifyOrder | GetPositions
                          | GetOpenOrders | Signal):
            self._error(requester, ErrorCode.UNKNOWN_TYPE,
                        f"{request.type} is not an order request; only new_order, "
                        f"cancel_order, modify_order, get_positions, get_open_orders and "
                        f"signal are routed to the Broker", field="type")
            return
        cid = getattr(request, "client_order_id", None)
        ref = getattr(request, "ref", None)
        if request.account != self.account:
            self._error(requester, ErrorCode.FORBIDDEN,
                        f"this Broker owns account {self.account}, not {request.account}",
                        field="account", client_order_id=cid, ref=ref)
            return
        if not await self._wait_ready():
            self._error(requester, ErrorCode.UNAVAILABLE,
                        f"account {self.account} is not connected to its venue "
                        f"({self.state.value}); try again shortly", client_order_id=cid, ref=ref)
            return
        self._inflight += 1
        self._idle.clear()
        try:
            if isinstance(request, GetOpenOrders):
                self._answer(requester, OpenOrders(
                    account=self.account, orders=self.book.open_orders(
                        customer, session_id if request.session_only else None),
                    ref=request.ref, ts=self._clock()))
            elif isinstance(request, GetPositions):
                await self._answer_positions(requester, request)
            elif isinstance(request, Signal):
                await self._watch(request.instrument)
                await self._run_risk(self._risk().receive(
                    risk.SignalRequest(request, session_id, requester.trader_tag),
                    self._clock()), requester)
            else:
                await self._order_request(requester, request)
        except OwnerStopped:
            pass
        except Exception:  # noqa: BLE001 - a bug must not take the link down with it
            self._log.exception("route_failed", session_id=session_id, order_id=cid)
            self._error(requester, ErrorCode.INTERNAL, "internal error; see the Broker log",
                        client_order_id=cid, ref=ref)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _wait_ready(self) -> bool:
        if self._ready.is_set():
            return True
        if not self.acting:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), READY_WAIT_S)
        return self._ready.is_set()

    async def _order_request(self, requester: _Requester, request: ClientRequest) -> None:
        cid = request.client_order_id
        owner = self.book.customer_of(cid)
        if owner is None and isinstance(request, NewOrder) and self.book.tracker.forgotten(cid):
            self._answer_forgotten(requester, cid)
            return
        if owner is not None and owner != requester.customer:
            # Another customer's order: never reveal its state, never let it be touched.
            if isinstance(request, NewOrder):
                self._refuse_duplicate(requester, cid)
            else:
                self._error(requester, ErrorCode.ORDER_NOT_FOUND, f"no order {cid!r}",
                            field="client_order_id", client_order_id=cid)
            return
        violation: RuleViolation | None = None
        if isinstance(request, NewOrder) and owner is None:
            violation = check_new_order(self._specs, request)
        elif isinstance(request, ModifyOrder) and owner is not None:
            snapshot = self.book.tracker.get(cid)
            violation = check_modify(
                self._specs.get(snapshot.instrument) if snapshot else None, request)
        if violation is not None:
            self._error(requester, violation.code, violation.message, field=violation.field,
                        client_order_id=cid)
            return
        if isinstance(request, NewOrder) and owner is None:
            # A new order id: the position manager decides (it also answers repeats of the
            # orders it refused, which the tracker never saw).
            await self._watch(request.instrument)
            await self._run_risk(self._risk().receive(
                risk.OrderRequest(request, requester.session_id, requester.trader_tag),
                self._clock()), requester)
            return
        if isinstance(request, ModifyOrder) and owner is not None:
            await self._run_risk(self._risk().receive(
                risk.ModifyRequest(request, requester.session_id, requester.trader_tag),
                self._clock()), requester)
            return
        await self._submit(request, requester)

    def _answer_forgotten(self, requester: _Requester, cid: str) -> None:
        """A repeat of an order that finished so long ago that the books let it go: its last
        state comes from the journal, to its own customer only (DESIGN: a repeated
        client_order_id returns the order's state and never makes a second order)."""
        entry = self._journal.last_order_event(cid) if self._journal is not None else None
        customer = None if entry is None else self._customer_of(entry.session_id)
        if entry is None or customer != requester.customer:
            self._refuse_duplicate(requester, cid)
            return
        self._answer(requester, entries.snapshot_from_event(entry.payload, self._clock()))

    def _refuse_duplicate(self, requester: _Requester, cid: str) -> None:
        """Refuse a new_order whose id another customer's order holds, revealing nothing."""
        self._error(requester, ErrorCode.DUPLICATE_ORDER,
                    f"client_order_id {cid!r} is already used on this account; choose another",
                    field="client_order_id", client_order_id=cid)

    async def _submit(self, request: ClientRequest, requester: _Requester) -> None:
        """Hand one request to the order tracker and carry out what it says. A refused
        cancel or modify is fed to the position manager (it stops counting a modify)."""
        cid = request.client_order_id
        try:
            effects = self.book.tracker.receive(request)
        except OrderStateError as exc:
            if isinstance(request, CancelOrder | ModifyOrder) and self.risk is not None:
                action: Literal["cancel", "modify"] = (
                    "cancel" if isinstance(request, CancelOrder) else "modify")
                self.risk.receive(VenueRefused(cid, action, exc.code, exc.message),
                                  self._clock())
            if requester.session_id != NO_SESSION:
                self._error(requester, exc.code, exc.message, client_order_id=cid)
            return
        await self._carry_out(effects, requester)

    async def _answer_positions(self, requester: _Requester, request: GetPositions) -> None:
        assert self._adapter is not None
        try:
            positions = await self._adapter.positions()
            balances = await self._adapter.balances()
        except AdapterError as exc:
            self._error(requester, ErrorCode.UNAVAILABLE,
                        f"the venue did not answer: {exc}", ref=request.ref)
            return
        now = self._clock()
        if self.risk is not None:
            # The position manager's view, with PnL and fees; the venue's for instruments
            # the fills never touched (holdings from before, a foreign order).
            ours = self.risk.position_report()
            known = {p.instrument for p in ours}
            positions = ours + [p for p in positions if p.instrument not in known]
        self._answer(requester, PositionsSnapshot(account=self.account, positions=positions,
                                                  ref=request.ref, ts=now))
        self._answer(requester, BalancesSnapshot(account=self.account, cash=balances.cash,
                                                 ref=request.ref, ts=now))

    # ------------------------------------------------------------ effects

    async def _carry_out(self, effects: list[Effect], requester: _Requester | None) -> None:
        """Carry out the tracker's effects in order: journal, then act. The order events
        journaled on the way go to the position manager afterwards, with what it decides."""
        journaled: tuple[OrderEvent, Entry] | None = None
        for_risk: list[OrderEvent] = []
        for effect in effects:
            if isinstance(effect, JournalEffect):
                item = effect.entry
                if isinstance(item, NewOrder | CancelOrder | ModifyOrder):
                    assert requester is not None, "client requests come from a session"
                    self._append(entries.REQUEST, entries.request_payload(
                        item, requester.session_id, requester.customer), item=item)
                else:
                    entry = self._append(entries.EVENT, entries.event_payload(item),
                                         self.book.session_of(item.client_order_id), item=item)
                    journaled = (item, entry)
                    for_risk.append(item)
                    if isinstance(item, OrderPartiallyFilled | OrderFilled):
                        self._note_fill(item, self.book.customer_of(item.client_order_id))
            elif isinstance(effect, Emit):
                if journaled is not None and journaled[0] is effect.event:
                    entry = journaled[1]
                    if entry.session_id is not None:
                        # The journaled payload is the event's wire form without its seq: the
                        # session gets it with the seq the journal gave (not encoded twice).
                        self._outbox.to_session(entry.session_id, session_frame(
                            entry.session_id, stamped_event(entry.payload, entry.session_seq)))
                elif requester is not None:  # an answer (the snapshot of a repeated order)
                    self._answer(requester, effect.event)
            elif isinstance(effect, PlaceAtVenue):
                await self._place(effect.request, requester)
            elif isinstance(effect, CancelAtVenue):
                await self._act(requester, effect.client_order_id, "cancel", partial(
                    self._venue().cancel_order, effect.client_order_id,
                    order_id=effect.order_id))
            elif isinstance(effect, ModifyAtVenue):
                await self._act(requester, effect.client_order_id, "modify", partial(
                    self._venue().modify_order, effect.client_order_id,
                    order_id=effect.order_id, qty=effect.qty, price=effect.price))
            elif isinstance(effect, Refuse) and requester is not None:
                self._error(requester, effect.code, effect.message,
                            client_order_id=effect.client_order_id)
        if self.risk is not None:
            for event in for_risk:
                await self._run_risk(self.risk.receive(event, self._clock()), None)

    def _venue(self) -> Adapter:
        if not self.acting or self._adapter is None:
            raise OwnerStopped(self.error or "the owner has stopped")
        return self._adapter

    async def _place(self, request: NewOrder, requester: _Requester | None) -> None:
        cid = request.client_order_id
        refusal = await self._call_venue(cid, "place", partial(self._venue().place_order, request))
        if refusal is None:
            return
        if refusal.code is ErrorCode.UNAVAILABLE:
            # The venue may or may not hold the order: it stays pending, and the next
            # reconciliation either finds it at the venue or re-sends (or rejects) it.
            if requester is not None:
                self._error(requester, ErrorCode.UNAVAILABLE,
                            f"{refusal.message}; the order stays pending until the Broker "
                            f"reconciles with the venue", client_order_id=cid)
            return
        await self._refused(refusal, requester)

    async def _act(self, requester: _Requester | None, cid: str,
                   action: Literal["cancel", "modify"],
                   call: Callable[[], Awaitable[Any]]) -> None:
        refusal = await self._call_venue(cid, action, call)
        if refusal is not None:
            self._append(entries.REFUSED, entries.refused_payload(refusal))
            if self.risk is not None:
                self.risk.receive(refusal, self._clock())
            await self._refused(refusal, requester)

    async def _refused(self, refusal: VenueRefused, requester: _Requester | None) -> None:
        try:
            effects = self.book.tracker.receive(refusal)
        except OrderStateError as exc:
            self._log.warning("venue_refusal_not_applicable", order_id=refusal.client_order_id,
                              error=exc.message)
            return
        await self._carry_out(effects, requester)

    async def _call_venue(self, cid: str, action: Literal["place", "cancel", "modify"],
                          call: Callable[[], Awaitable[Any]]) -> VenueRefused | None:
        """Make one venue call, retrying transient failures a few times. Returns the refusal
        to feed to the tracker (code `unavailable` when the venue could not be reached)."""
        delay = 0.05
        for attempt in range(1, VENUE_ATTEMPTS + 1):
            try:
                await call()
                return None
            except OrderRejectedError as exc:
                return VenueRefused(cid, action, exc.code, exc.message)
            except RetryableAdapterError as exc:
                self._log.warning("venue_call_retry", action=action, order_id=cid,
                                  attempt=attempt, error=str(exc))
                if attempt == VENUE_ATTEMPTS:
                    return VenueRefused(cid, action, ErrorCode.UNAVAILABLE,
                                        f"the venue did not take the {action}: {exc}")
                await asyncio.sleep(min(exc.retry_after or delay, MAX_RETRY_WAIT_S))
                delay *= 4
            except FatalAdapterError as exc:
                self._venue_failed(str(exc))
                return VenueRefused(cid, action, ErrorCode.UNAVAILABLE,
                                    f"the venue session failed: {exc}")
            except AdapterError as exc:
                return VenueRefused(cid, action, ErrorCode.UNAVAILABLE,
                                    f"the venue call failed: {exc}")
        raise AssertionError("unreachable")

    def _venue_failed(self, reason: str) -> None:
        """A fatal adapter error: no more orders; reported until an operator steps in."""
        if self.state is OwnerState.READY or self.state is OwnerState.VENUE_DOWN:
            self.state = OwnerState.VENUE_DOWN
            self.error = reason
            self._ready.clear()
            self._log.error("venue_failed", reason=reason)
            self._outbox.resync(f"venue session failed: {reason}")

    # ------------------------------------------------------------ answers

    def _answer(self, requester: _Requester, message: Any) -> None:
        self._outbox.to_session(requester.session_id,
                                session_frame(requester.session_id, encode(message)))

    def _error(self, requester: _Requester, code: ErrorCode, message: str, *,
               field: str | None = None, client_order_id: str | None = None,
               ref: str | None = None) -> None:
        self._answer(requester, Error(code=code, message=message, field=field,
                                      client_order_id=client_order_id, ref=ref))

    # ------------------------------------------------------------ the venue's events

    async def _consume(self) -> None:
        assert self._adapter is not None
        try:
            async for event in self._adapter.events():
                if isinstance(event, MARKET_EVENTS):
                    self._outbox.market(event)
                    if isinstance(event, Ticker | Trade):
                        await self._on_price(event)
                elif isinstance(event, ConnectionChanged):
                    await self._on_connection(event)
                else:
                    await self._on_order_event(event)
        except OwnerStopped:
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported; the account stops taking orders
            self._log.exception("venue_events_failed")
            self._venue_failed(f"venue event stream failed: {exc!r}")
            return
        if self.acting and self.state is not OwnerState.CLOSED:
            self._venue_failed("the venue event stream ended")

    async def _on_order_event(self, event: OrderEvent) -> None:
        if event.status.is_terminal and self._cancel_reasons:  # filled first: forget it too
            reason = self._cancel_reasons.pop(event.client_order_id, None)
            if (reason is not None and isinstance(event, OrderCancelled)
                    and event.reason is CancelReason.REQUESTED):
                event = event.model_copy(update={"reason": reason})
        try:
            effects = self.book.tracker.receive(event)
        except OrderStateError as exc:
            if exc.code is ErrorCode.ORDER_NOT_FOUND:
                return  # an order placed outside the platform: not ours
            self._log.warning("venue_event_contradicts_books", order_id=event.client_order_id,
                              event=event.type, error=exc.message)
            return
        await self._carry_out(effects, None)

    async def _on_connection(self, change: ConnectionChanged) -> None:
        if not change.connected:
            if self.state is OwnerState.READY:
                self.state = OwnerState.VENUE_DOWN
                self._ready.clear()
                self._log.warning("venue_connection_lost", reason=change.reason)
                self._notable("venue_down", f"venue connection lost: {change.reason}")
                self._outbox.resync(f"venue connection lost: {change.reason}")
            return
        self._ready.clear()
        # Requests already on their way finish first: reconciliation needs a still picture.
        await self._idle.wait()
        try:
            await self._reconcile()
        except AdapterError as exc:
            self._log.warning("reconcile_after_reconnect_failed", error=str(exc))
            self.state = OwnerState.VENUE_DOWN
            return
        self.state = OwnerState.READY
        self.error = None
        self._ready.set()
        self._notable("venue_resync", "venue connection restored; order state reconciled",
                      reconcile=self.last_reconcile)
        self._outbox.resync("venue connection restored; order state reconciled")

    # ------------------------------------------------------------ reconciliation

    async def _reconcile(self) -> None:
        """Bring the books in line with the venue (see `workers.broker.reconcile`)."""
        self.state = OwnerState.RECONCILING
        adapter = self._venue()
        plan = await self._plan(adapter, frozenset())
        self._append(entries.RECONCILED, _summary(plan, "planned"))
        await self._apply(plan)
        resent: set[str] = set()
        for request in plan.resend:
            cid = request.client_order_id
            refusal = await self._call_venue(cid, "place", partial(adapter.place_order, request))
            if refusal is None or refusal.code is ErrorCode.DUPLICATE_ORDER:
                resent.add(cid)
            elif refusal.code is ErrorCode.UNAVAILABLE:
                raise RetryableAdapterError(refusal.message)
            else:
                await self._refused(refusal, None)
        if resent:
            # The venue has the resent orders now (or had them all along): a second look
            # settles them like any order the venue knows.
            second = await self._plan(adapter, frozenset(resent))
            self._append(entries.RECONCILED, _summary(second, "after_resend"))
            await self._apply(second)
        for stray in plan.cancel_at_venue:
            self._log.warning("cancel_stray_order", order_id=stray.client_order_id)
            with contextlib.suppress(OrderRejectedError):
                await adapter.cancel_order(stray.client_order_id, order_id=stray.order_id)
        for note in plan.notes:
            self._log.warning("reconcile_disagreement", note=note)
        if plan.foreign:
            self._log.info("foreign_open_orders", count=len(plan.foreign))
        self.last_reconcile = {**_summary(plan, "done"), "resent": sorted(resent)}
        self._log.info("reconciled", **self.last_reconcile)
        await self._check_positions(adapter)

    async def _check_positions(self, adapter: Adapter) -> None:
        """After the orders are reconciled: the position manager's positions against the
        venue's. A difference is corrected to the venue's, journaled first (the manager's
        `PositionCorrected`), logged and told to the operator."""
        if self.risk is None:
            return
        try:
            venue = await adapter.positions()
        except AdapterError as exc:
            self._log.warning("position_check_failed", error=str(exc))
            return
        check = self.risk.check_positions(venue, self._clock())
        if check.unreported:
            self._log.info("positions_not_reported_by_venue", instruments=check.unreported,
                           note="the venue reports no position for these (a spot venue "
                                "keeps assets as balances); they were not compared")
        if check.working:
            self._log.info("position_check_deferred", instruments=check.working,
                           note="orders are working on these; compared after the next "
                                "reconnect")
        await self._run_risk(check.effects, None)

    async def _plan(self, adapter: Adapter, venue_knows: frozenset[str]) -> ReconcilePlan:
        known = self.book.known_open()
        venue_open = await adapter.open_orders()
        start = fills_window_start(known)
        fills = await adapter.fills_since(start) if start is not None else []
        return reconcile(known, venue_open, fills, finished=self.book.finished(),
                         now=self._clock(), max_resend_age_ns=self._max_resend_age_ns,
                         venue_knows=venue_knows)

    async def _apply(self, plan: ReconcilePlan) -> None:
        for event in plan.events:
            try:
                effects = self.book.tracker.receive(event)
            except OrderStateError as exc:
                self._log.warning("reconcile_event_refused", order_id=event.client_order_id,
                                  error=exc.message)
                continue
            await self._carry_out(effects, None)

    # ------------------------------------------------------------ the position manager

    def _risk(self) -> risk.PositionManager:
        if self.risk is None or not self.acting:
            raise OwnerStopped(self.error or "the owner has stopped")
        return self.risk

    async def _run_risk(self, effects: list[risk.Effect], requester: _Requester | None) -> None:
        """Carry out the position manager's effects. Its journal records are appended first,
        all of them, so nothing it decided is acted on before it is durable."""
        customer = requester.customer if requester is not None else None
        # A record its session is told of is journaled under that session, so the journal
        # gives it the session's next seq; the Notify that tells of it carries that seq.
        seqs: dict[tuple[str, str], int] = {}
        for effect in effects:
            if isinstance(effect, risk.Journal):
                record = effect.record
                session = getattr(record, "session_id", None)
                who = customer or self._customer_of(session)
                addressed = risk.record_notice(self.account, record)
                stamped = addressed[0] if addressed is not None \
                    and addressed[0] != NO_SESSION else None
                entry = self._append(RISK, {"customer": who,
                                            "record": record.model_dump(mode="json")}, stamped)
                if addressed is not None and entry.session_seq is not None:
                    seqs[risk.notice_key(addressed[1])] = entry.session_seq
                self._notable_record(record, who)
        for effect in effects:
            if isinstance(effect, risk.SubmitOrder):
                await self._submit(effect.order, self._requester_for(effect.session_id,
                                                                     requester))
            elif isinstance(effect, risk.SubmitCancel):
                cid = effect.client_order_id
                self._cancel_reasons[cid] = effect.reason
                await self._submit(CancelOrder(client_order_id=cid, account=self.account),
                                   self._requester_of_order(cid))
                order = self.book.tracker.get(cid)
                if order is None or order.status.is_terminal:  # done, or the cancel refused
                    self._cancel_reasons.pop(cid, None)
            elif isinstance(effect, risk.SubmitModify):
                await self._submit(effect.modify,
                                   self._requester_of_order(effect.modify.client_order_id))
            elif isinstance(effect, risk.Notify):
                message: Any = effect.message
                seq = seqs.get(risk.notice_key(message))
                if seq is not None:
                    message = message.model_copy(update={"seq": seq})
                session = effect.session_id or (requester.session_id if requester else None)
                if session is not None and session != NO_SESSION:
                    self._outbox.to_session(session, session_frame(session, encode(message)))
            elif isinstance(effect, risk.RefuseRequest):
                session = effect.session_id or (requester.session_id if requester else None)
                if session is not None and session != NO_SESSION:
                    self._outbox.to_session(session, session_frame(session, encode(Error(
                        code=effect.code, message=effect.message,
                        client_order_id=effect.client_order_id))))
            elif isinstance(effect, risk.Alert):
                self._log.error("exit_needs_operator", plan_id=effect.plan_id,
                                alert=effect.message)

    def _notable_record(self, record: Any, customer: str | None) -> None:
        """The position manager's decisions an operator wants in the event log."""
        if isinstance(record, OrderRefused):
            self._notable("risk_rejected", record.message, code=record.code.value,
                          client_order_id=record.order.client_order_id,
                          instrument=record.order.instrument, customer=customer)
        elif isinstance(record, risk_records.SignalRefused):
            self._notable("signal_rejected", record.message, code=record.code.value,
                          signal_id=record.signal.signal_id,
                          instrument=record.signal.instrument, customer=customer)
        elif isinstance(record, risk_records.ModifyRefused):
            self._notable("risk_rejected", record.message, code=record.code.value,
                          client_order_id=record.modify.client_order_id, customer=customer)
        elif isinstance(record, risk_records.ExitTriggered):
            price = "" if record.price is None else f" at {record.price}"
            self._notable("exit_fired", f"{record.kind.value} exit fired{price}, closing "
                          f"{record.position_qty}", plan_id=record.plan_id,
                          kind=record.kind.value)
        elif isinstance(record, risk_records.PositionCorrected):
            sentence = (f"position in {record.instrument} corrected to the venue's "
                        f"{record.venue_qty} (the fills gave {record.ours_qty})")
            self._log.warning("position_corrected", instrument=record.instrument,
                              ours=str(record.ours_qty), venue=str(record.venue_qty))
            self._notable("position_corrected", sentence, instrument=record.instrument,
                          ours=str(record.ours_qty), venue=str(record.venue_qty))
        elif isinstance(record, risk_records.KillSwitchChanged):
            state = "engaged" if record.active else "cleared"
            self._notable("kill_switch", f"kill switch {state} by {record.by}"
                          + (f": {record.reason}" if record.reason else ""),
                          active=record.active, scope=record.scope.value)

    def _requester_for(self, session_id: str | None, requester: _Requester | None
                       ) -> _Requester:
        if requester is not None and requester.session_id == session_id:
            return requester
        if session_id is None:
            return _Requester(NO_SESSION, NO_SESSION)
        return _Requester(session_id, self._customer_of(session_id) or NO_SESSION)

    def _requester_of_order(self, client_order_id: str) -> _Requester:
        session = self.book.session_of(client_order_id)
        customer = self.book.customer_of(client_order_id)
        if session is None or customer is None:
            return _Requester(NO_SESSION, NO_SESSION)
        return _Requester(session, customer)

    async def _on_price(self, event: Ticker | Trade) -> None:
        # Every price counts (a Market's subscription may be the first to bring one); the
        # watched instruments are those the manager is sure to get prices for.
        if self.risk is None:
            return
        waiting = self._watched.get(event.instrument)
        if waiting is not None:
            waiting.set()
        try:
            await self._run_risk(self.risk.receive(event, self._clock()), None)
        except OwnerStopped:
            raise
        except Exception:  # noqa: BLE001 - a bad price must not stop the event stream
            self._log.exception("risk_market_update_failed", instrument=event.instrument)

    async def _watch(self, instrument: str, *, wait: bool = True) -> None:
        """Make sure the position manager gets this instrument's prices; the first time,
        wait (briefly, unless `wait` is false) for a first price, which signals and limits
        are valued at."""
        if instrument not in self._specs or instrument in self._watched:
            return  # only the first request on an instrument waits (a quiet venue is slow once)
        arrived = self._watched[instrument] = asyncio.Event()
        for channel in RISK_WATCH_CHANNELS:
            try:
                await self._venue().subscribe(instrument, channel)
            except AdapterError as exc:
                self._log.warning("risk_subscribe_failed", instrument=instrument,
                                  channel=channel.value, error=str(exc))
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), FIRST_PRICE_WAIT_S)

    async def _watch_held(self, *, wait: bool = True) -> None:
        """Watch every instrument the manager holds a position, an order or an exit in."""
        if self.risk is None:
            return
        held = {p.instrument for p in self.risk.position_list()}
        held |= {o.instrument for o in self.risk.orders.working()}
        held |= {plan.instrument for plan in self.risk.exits.active()}
        for instrument in sorted(held):
            await self._watch(instrument, wait=wait)

    async def _update_equity(self) -> None:
        if self.risk is None or self._adapter is None:
            return
        try:
            balances = await self._adapter.balances()
        except AdapterError:
            return
        cash = balances.cash.get(self.risk.limits.currency)
        if cash is not None:
            self.risk.receive(risk.EquityUpdate(cash), self._clock())

    async def _tick(self) -> None:
        """The position manager's clock: time exits and closing exits, about once a second;
        the account's equity now and then."""
        ticks = 0
        while True:
            await asyncio.sleep(CLOCK_TICK_S)
            if self.state is not OwnerState.READY or self.risk is None:
                continue
            ticks += 1
            try:
                await self._run_risk(self.risk.receive(risk.ClockTick(), self._clock()), None)
                await self._watch_held()
                if ticks % EQUITY_EVERY_TICKS == 0:
                    await self._update_equity()
            except OwnerStopped:
                return
            except Exception:  # noqa: BLE001 - logged; the clock keeps ticking
                self._log.exception("risk_tick_failed")

    async def operator_risk(self, command: risk.KillSwitch | risk.LimitsUpdate) -> None:
        """An operator's kill switch or new limits: journaled by the manager, then carried
        out (a kill switch cancels every working order). Raises `OwnerStopped`."""
        await self._run_risk(self._risk().receive(command, self._clock()), None)

    def risk_info(self) -> dict[str, Any]:
        """Kill switch, limits and positions with their PnL, for `info()`."""
        manager = self.risk
        if manager is None:
            return {}
        positions = {}
        for p in manager.position_report():
            positions[p.instrument] = {
                "qty": str(p.qty),
                "avg_price": None if p.avg_price is None else str(p.avg_price),
                "realized_pnl": str(p.realized_pnl),
                "unrealized_pnl": None if p.unrealized_pnl is None else str(p.unrealized_pnl),
                "fees": {c: str(v) for c, v in (p.fees or {}).items()},
            }
        return {"kill_switch": manager.kill_switch, "position_pnl": positions,
                "exits": len(manager.exits.active()),
                "limits": manager.limits.model_dump(mode="json", exclude_defaults=True,
                                                     exclude_none=True)}

    # ------------------------------------------------------------ market data

    async def subscribe(self, key: StreamKey, depth: int | None) -> None:
        """Start a venue stream. Raises `OrderRejectedError` (e.g. unknown_instrument) or
        another `AdapterError`."""
        await self._venue().subscribe(key.instrument, key.channel, depth=depth,
                                      interval=key.interval)

    async def unsubscribe(self, key: StreamKey, depth: int | None) -> None:
        """End a venue stream; failures only mean it is already gone. A stream the position
        manager watches stays."""
        if self._adapter is None:
            return
        if key.instrument in self._watched and key.channel in RISK_WATCH_CHANNELS:
            return
        with contextlib.suppress(AdapterError):
            await self._adapter.unsubscribe(key.instrument, key.channel, depth=depth,
                                            interval=key.interval)

    # ------------------------------------------------------------ reporting

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "account": self.account,
            "venue": self.venue,
            "state": self.state.value,
            "ready": self.state is OwnerState.READY,
            "connected": self.connected,
            "open_orders": len(self.book.open_orders()),
            "orders": self.book.orders,
            "orders_in_memory": self.book.tracker.kept,  # bounded: retain_finished_orders
            "rebuilt": self.rebuilt,
            "snapshot": {"seq": self.snapshot_seq, "stored": self.snapshots_stored,
                         "storing": self._snapshotter is not None},
            "fills": self.book.fills,
            "positions": {k: str(v) for k, v in sorted(self.book.positions().items())},
            "recent_fills": list(self.recent_fills),
            **self.risk_info(),
        }
        if self.error:
            out["error"] = self.error
        return out




def _summary(plan: ReconcilePlan, stage: str) -> dict[str, Any]:
    return {
        "stage": stage,
        "events": [f"{e.type}:{e.client_order_id}" for e in plan.events],
        "resend": [r.client_order_id for r in plan.resend],
        "cancel_at_venue": [o.client_order_id for o in plan.cancel_at_venue],
        "foreign": len(plan.foreign),
        "notes": plan.notes,
    }

