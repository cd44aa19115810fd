"""The Trader worker: runs the hosted strategy its manager assigns, through the client SDK.

It connects through the MarketManager exactly as an external algo does (same API token, same
sessions, same reconnects), so hosted and external algos cannot drift apart.

The strategy's event stream is read through a `PnlLedger` (`workers.trader.pnl`): the fills of
the trader's own orders and the prices it subscribed to give its per-instrument position,
average cost, realized and unrealized PnL and fees, reported in the status `info["pnl"]` for
the fleet view.

A trader keeps one session across its runs: its id, and the PnL ledger with the last seq it
saw, are kept in `DATA_DIR/traders/<name>.session.json`, and a new run (after a kill -9, a
crashed strategy, a replacement worker) resumes the session after that seq, its PnL going on
from the ledger's. So the orders an earlier run left working are the session's
orders still: the new run finds them (`open_orders(session_only=True)`), and their events
come to it. Before the strategy starts they are cancelled, or adopted into `client.orders`
(`on_restart`); otherwise they would work on at the venue, known to nobody. One still on its
way to the Broker then is cancelled when its events arrive (`workers.trader.leftovers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import structlog

from protocol.control import Load
from tradefleet.config import TraderSection
from tradefleet.service.files import write_atomic
from tradefleet.strategy import Strategy, load_strategy_class, run_strategy
from workers.runtime.service import WorkerContext, WorkerService
from workers.trader.leftovers import EarlierRuns
from workers.trader.pnl import PnlLedger

log = structlog.get_logger(__name__)

SAVE_EVERY_S = 1.0
"""How often a running trader records its session (its PnL and last seq) when it changed."""


class SavedSession:
    """The trader's session as its runs hand it on, in `DATA_DIR/traders/<name>.session.json`:
    `{"session_id", "account", "pnl", "epoch"}`, `pnl` being the trader's
    `PnlLedger.state()` (with the session's last seq the ledger saw, where a new run
    resumes) and `epoch` the worker epoch of the run that wrote it.

    The epoch fences the session: a run of an older worker (a zombie still running after its
    replacement started) finds a newer epoch in the file, writes nothing more and stops,
    instead of taking the session back from its successor."""

    def __init__(self, data_dir: Path, name: str, epoch: int = 0) -> None:
        self.path = data_dir / "traders" / f"{name}.session.json"
        self.epoch = epoch
        self._written: bytes | None = None

    def superseded(self) -> bool:
        """Whether a worker of a newer epoch has written the session since."""
        try:
            epoch = orjson.loads(self.path.read_bytes()).get("epoch", 0)
        except (OSError, ValueError, AttributeError):
            return False
        return isinstance(epoch, int) and epoch > self.epoch

    def load(self, account: str) -> tuple[str, PnlLedger] | None:
        """(session_id, ledger) an earlier run left on `account`, if any."""
        try:
            saved = orjson.loads(self.path.read_bytes())
            session_id = saved["session_id"]
            if saved["account"] != account or not isinstance(session_id, str):
                return None
            ledger = PnlLedger.restore(saved["pnl"])
            if ledger.last_seq < 0:
                raise ValueError("negative seq")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ArithmeticError):
            log.warning("saved_session_unreadable", path=str(self.path))
            return None
        return session_id, ledger

    def save(self, session_id: str | None, account: str | None, ledger: PnlLedger) -> bool:
        """Record the session if it changed; False when a newer run has it (superseded)."""
        if self.superseded():
            return False
        if session_id is None or account is None:
            return True
        data = orjson.dumps({"session_id": session_id, "account": account,
                             "pnl": ledger.state(), "epoch": self.epoch})
        if data == self._written:
            return True
        try:
            write_atomic(self.path, data.decode())
        except OSError as exc:  # the next run then starts a session anew: no crash for it
            log.warning("session_not_saved", path=str(self.path), error=str(exc))
            return True
        self._written = data
        return True

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)
        self._written = None


class _LedgerStream:
    """An SDK event stream whose events also go to the ledger (and to `watch`, if given), in
    order, before the strategy sees them."""

    def __init__(self, inner: Any, ledger: PnlLedger,
                 watch: Callable[[Any], Awaitable[None]] | None = None) -> None:
        self._inner = inner.__aiter__()
        self._ledger = ledger
        self._watch = watch

    def __aiter__(self) -> _LedgerStream:
        return self

    async def __anext__(self) -> Any:
        event = await self._inner.__anext__()
        try:
            self._ledger.observe(event)
        except Exception:  # bookkeeping must never stop the strategy
            log.exception("pnl_event_refused", event_type=getattr(event, "type", None))
        if self._watch is not None:
            try:
                await self._watch(event)
            except Exception:  # nor must the watch (a cancel that cannot be sent now)
                log.exception("event_watch_failed", event_type=getattr(event, "type", None))
        return event


class LedgerClient:
    """The SDK client as a hosted strategy gets it: the same in every way, except that its
    `events()` also feed the trader's PnL ledger and `watch`."""

    def __init__(self, client: Any, ledger: PnlLedger,
                 watch: Callable[[Any], Awaitable[None]] | None = None) -> None:
        self._client = client
        self._ledger = ledger
        self._watch = watch

    def events(self) -> _LedgerStream:
        return _LedgerStream(self._client.events(), self._ledger, self._watch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class TraderService(WorkerService):
    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(ctx)
        self.section: TraderSection | None = None
        self.strategy: Strategy | None = None
        self.status = "standby"
        self.last_error: str | None = None
        self.ledger = PnlLedger()
        self.superseded = False  # a newer worker took this trader's session: this one stopped
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ assignment

    async def configure(self, params: dict[str, Any]) -> None:
        name = params.get("assign", {}).get("trader")
        if name is None:
            return
        section = next((t for t in self.ctx.config.traders if t.name == name), None)
        if section is None:
            raise ValueError(f"no trader named '{name}' in the configuration")
        try:
            load_strategy_class(section.strategy, search=[Path.cwd()])
        except (ImportError, AttributeError, TypeError) as exc:
            raise ValueError(f"cannot load strategy {section.strategy}: {exc}") from exc
        await self._halt()
        if self.section is None or self.section.name != section.name:
            self.ledger = PnlLedger()
        self.section = section
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(section), name=f"trader-{name}")
        structlog.contextvars.bind_contextvars(trader=name)
        log.info("assigned", strategy=section.strategy)

    def _api_token(self, customer: str) -> str:
        tokens = self.ctx.config.customers[customer].api_tokens
        if tokens:
            return tokens[0].get_secret_value()
        secrets = json.loads((self.ctx.data_dir / "secrets.json").read_text())
        return str(secrets[f"api_token.{customer}"])

    def _manager_url(self) -> str:
        return (self.ctx.data_dir / "run" / "market-manager.url").read_text().strip()

    async def _connect(self, section: TraderSection, saved: SavedSession,
                       session_id: str | None) -> Any:
        """A client on the trader's session: `session_id` (an earlier run's) resumed after the
        last seq the ledger saw, or else a new session. The trader's name is its tag:
        `accounts.<a>.risk.trader_tags.<name>` limits apply to what it sends, on top of the
        account's."""
        from tradefleet.client import ConnectionLost, MarketClient

        # The URL is looked up again before every reconnection: a MarketManager restarted
        # at another address (its old port taken meanwhile) is found.
        url, token = self._manager_url, self._api_token(section.customer)
        if session_id is not None:
            try:
                return await MarketClient.connect(url, token, account=section.account,
                                                  trader_tag=section.name,
                                                  session_id=session_id,
                                                  resume_from_seq=self.ledger.last_seq)
            except ConnectionLost:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. refused: start a session anew
                log.warning("earlier_session_not_resumed", session_id=session_id,
                            error=str(exc)[:200])
                saved.forget()
        client = await MarketClient.connect(url, token, account=section.account,
                                            trader_tag=section.name)
        self.ledger.new_session()
        return client

    async def _keep_saving(self, client: Any, saved: SavedSession) -> None:
        while saved.save(client.session_id, client.account, self.ledger):
            await asyncio.sleep(SAVE_EVERY_S)
        # A newer worker runs this trader on this session: this run sends nothing more (its
        # strategy's on_stop would cancel what is now the successor's) and ends.
        log.warning("superseded", by="a worker of a newer epoch", path=str(saved.path))
        self.superseded = True
        await client.close()
        self._stop.set()

    async def _run(self, section: TraderSection) -> None:
        saved = SavedSession(self.ctx.data_dir, section.name, self.ctx.epoch)
        session_id: str | None = None
        earlier = saved.load(section.account)
        if earlier is not None:
            session_id, self.ledger = earlier
        delay = 0.2
        while not self._stop.is_set():
            if saved.superseded():
                log.warning("superseded", by="a worker of a newer epoch", path=str(saved.path))
                self.superseded = True
                break
            self.status = "connecting"
            try:
                client = await self._connect(section, saved, session_id)
                session_id = client.session_id
            except Exception as exc:  # noqa: BLE001 - market not reachable yet: keep trying, never spin
                self.last_error = str(exc)[:200]
                log.warning("cannot connect yet", error=self.last_error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
                continue
            self.last_error = None
            delay = 0.2
            saving = asyncio.create_task(self._keep_saving(client, saved))
            try:
                leftovers = EarlierRuns(client, section.on_restart)
                await leftovers.take_over()
                cls = load_strategy_class(section.strategy, search=[Path.cwd()])
                hosted = LedgerClient(client, self.ledger, leftovers.watch)
                self.strategy = cls(hosted, **section.params)
                self.status = "running"
                await run_strategy(self.strategy, hosted, self._stop)
            except Exception as exc:
                if self.superseded:  # its client was closed under it, on purpose
                    break
                self.status = "failed"
                self.last_error = str(exc)[:200]
                log.exception("strategy failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 5.0)
            finally:
                saving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await saving
                saved.save(client.session_id, client.account, self.ledger)
                await client.close()
        self.status = "superseded" if self.superseded else "stopped"

    async def _halt(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 10)
            self._task = None

    # ------------------------------------------------------------------ runtime hooks

    async def begin_drain(self) -> None:
        await super().begin_drain()
        await self._halt()

    async def stop(self) -> None:
        await self._halt()

    def has_work(self) -> bool:
        return self._task is not None and not self._task.done()

    def load(self) -> Load:
        return Load(sessions=1 if self.status == "running" else 0, accepting=self.accepting)

    def info(self) -> dict[str, Any]:
        if self.section is None:
            return {"status": self.status}
        out: dict[str, Any] = {"trader": self.section.name, "strategy": self.section.strategy,
                               "account": self.section.account, "status": self.status}
        if self.strategy is not None:
            out["strategy_state"] = self.strategy.state()
            out["errors"] = self.strategy.errors
        out["pnl"] = self.ledger.report()
        if self.last_error:
            out["last_error"] = self.last_error
        return out
