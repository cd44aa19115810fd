"""The Market's WebSocket to one account's Broker worker (`protocol.link`), kept open.

The Market opened the link, so the Market re-opens it when it drops (DESIGN §2.4): with
backoff and jitter, asking the BrokerManager each time where the account's owner is now, since
a replacement Broker serves on another address. The socket loop only reads and writes; what a
frame means is decided by the core through `LinkHandler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import structlog
from pydantic import ValidationError

from protocol.codec import CodecError, decode, encode
from protocol.link import LinkHello, LinkWelcome
from tradefleet.client.backoff import ReconnectPolicy
from workers.market.settings import MarketSettings

log = structlog.get_logger(__name__)

BROKER_MANAGER_URL_FILE = Path("run") / "broker-manager.url"
LINK_MAX_FRAME = 64 << 20


OPENING_RETRY_S = 0.1
"""How soon to ask again when a Broker answered but does not serve the account yet."""
OPENING_RETRY_FOR_S = 30.0
"""How long such quick retries go on before the ordinary backoff takes over."""


class LinkUnavailable(Exception):
    """The Broker cannot be reached right now (unknown owner, refused, handshake failed).
    Retry after a backoff; nothing for the caller to fix. `opening`: a Broker answered, but
    refused the link for now (503: still opening or reconciling the account, draining,
    fenced) — the account is on its way to an owner, worth asking again soon."""

    def __init__(self, reason: str, *, opening: bool = False) -> None:
        super().__init__(reason)
        self.opening = opening


@dataclass
class LinkRetry:
    """The delay before the next link attempt (pure).

    Ordinary failures back off with jitter (`policy`). A replacement Broker refuses links
    until it has rebuilt and reconciled its account, which takes from a fraction of a second
    to seconds; backing off meanwhile left the algos waiting up to the backoff's cap (2 s)
    after the account was ready. So while Brokers answer "not yet", the link asks again every
    `OPENING_RETRY_S`, for at most `OPENING_RETRY_FOR_S`, then backs off as usual."""

    policy: ReconnectPolicy
    opening_retry_s: float = OPENING_RETRY_S
    opening_for_s: float = OPENING_RETRY_FOR_S
    _opening_since: float | None = field(default=None, init=False)

    def connected(self) -> None:
        self.policy.reset()
        self._opening_since = None

    def delay(self, now: float, *, opening: bool) -> float:
        if not opening:
            self._opening_since = None
            return self.policy.next_delay()
        if self._opening_since is None:
            self._opening_since = now
        if now - self._opening_since < self.opening_for_s:
            return self.opening_retry_s
        return self.policy.next_delay()


class LinkHandler(Protocol):
    def link_up(self, account: str, welcome: LinkWelcome) -> None: ...
    def link_frame(self, account: str, data: bytes | str) -> None: ...
    def link_down(self, account: str) -> None: ...


class BrokerDirectory:
    """Where an account's Broker worker serves, according to the BrokerManager.

    The BrokerManager's own URL is read from `DATA_DIR/run/broker-manager.url` at every
    look-up, so a restarted BrokerManager on a new port is found again.
    """

    def __init__(self, http: aiohttp.ClientSession, data_dir: Path, service_token: str,
                 timeout_s: float) -> None:
        self._http = http
        self._data_dir = data_dir
        self._token = service_token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def broker_url(self, account: str) -> str:
        """The account's Broker base URL. Raises `LinkUnavailable` if it is not known now."""
        path = self._data_dir / BROKER_MANAGER_URL_FILE
        try:
            manager_url = path.read_text().strip().rstrip("/")
        except OSError as exc:
            raise LinkUnavailable(f"no BrokerManager address in {path}") from exc
        try:
            async with self._http.get(f"{manager_url}/v1/accounts", timeout=self._timeout,
                                      headers={"Authorization": f"Bearer {self._token}"}) as resp:
                if resp.status != 200:
                    raise LinkUnavailable(f"BrokerManager answered {resp.status}")
                body = decode(await resp.read())
        except (aiohttp.ClientError, TimeoutError, CodecError) as exc:
            raise LinkUnavailable(f"BrokerManager look-up failed: {exc!r}") from exc
        entry = body.get("accounts", {}).get(account) if isinstance(body, dict) else None
        url = entry.get("url") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not url:
            raise LinkUnavailable(f"account {account!r} has no Broker worker right now")
        return url.rstrip("/")


def link_ws_url(broker_url: str) -> str:
    """`http://host:port` → `ws://host:port/v1/link` (https → wss)."""
    if broker_url.startswith("https://"):
        return "wss://" + broker_url.removeprefix("https://") + "/v1/link"
    return "ws://" + broker_url.removeprefix("http://") + "/v1/link"


class BrokerLink:
    """One account's link. `start()` it once; it stays open until `stop()`.

    `ready` is set while the link is welcomed; `send` queues frames for it (frames queued
    while it is down are dropped: the core re-sends what matters on `link_up`); `write_now`
    writes them from the caller's task when nothing is ahead of them.
    """

    def __init__(self, account: str, *, market_id: str, service_token: str,
                 http: aiohttp.ClientSession, directory: BrokerDirectory, handler: LinkHandler,
                 settings: MarketSettings, policy: ReconnectPolicy | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.account = account
        self.ready = asyncio.Event()
        self.broker_url: str | None = None
        self._market_id = market_id
        self._token = service_token
        self._http = http
        self._directory = directory
        self._handler = handler
        self._settings = settings
        self._retry = LinkRetry(policy or ReconnectPolicy(settings.link_backoff_initial_s,
                                                          settings.link_backoff_max_s))
        self._queue: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._writing = False  # a task is mid-write on the link: the others queue behind it
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"broker-link:{self.account}")

    async def stop(self) -> None:
        """Close the link and wait (bounded) for its task to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5)

    def send(self, frames: list[bytes]) -> None:
        if self.ready.is_set():
            self._queue.extend(frames)
            self._wake.set()

    async def write_now(self, frames: list[bytes]) -> None:
        """Write `frames` from the calling task when nothing is queued and no one is writing
        (an algo's order then leaves without waiting for the writer task's turn); otherwise
        queue them behind what is there. A write that fails is dropped like a queued frame:
        the reader sees the link go down."""
        ws = self._ws
        if ws is None or not self.ready.is_set() or self._queue or self._writing:
            self.send(frames)
            return
        self._writing = True
        try:
            for frame in frames:
                await ws.send_bytes(frame)
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            log.debug("broker link write failed", account=self.account, error=repr(exc))
        finally:
            self._writing = False
            if self._queue:
                self._wake.set()

    async def _run(self) -> None:
        log.info("broker link starting", account=self.account)
        while True:
            opening = False
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except LinkUnavailable as exc:
                opening = exc.opening
                log.info("broker link unavailable", account=self.account, reason=str(exc))
            except Exception as exc:  # noqa: BLE001 - any failure: the retry loop is the recovery
                log.warning("broker link failed", account=self.account, error=repr(exc))
            await asyncio.sleep(self._retry.delay(time.monotonic(), opening=opening))

    async def _connect_once(self) -> None:
        url = await self._directory.broker_url(self.account)
        self.broker_url = url
        timeout = self._settings.lookup_timeout_s
        try:
            ws = await self._http.ws_connect(
                link_ws_url(url), headers={"Authorization": f"Bearer {self._token}"},
                max_msg_size=LINK_MAX_FRAME, heartbeat=10.0)
        except aiohttp.WSServerHandshakeError as exc:
            raise LinkUnavailable(f"{link_ws_url(url)} refused the link: {exc.status} "
                                  f"{exc.message}", opening=exc.status == 503) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise LinkUnavailable(f"cannot open {link_ws_url(url)}: {exc!r}") from exc
        try:
            await ws.send_bytes(encode(LinkHello(market_id=self._market_id)))
            welcome = await self._welcome(ws, timeout)
            self._retry.connected()
            self._ws = ws
            self._queue.clear()
            self.ready.set()
            log.info("broker link up", account=self.account, broker_id=welcome.broker_id,
                     epoch=welcome.epoch, url=url)
            self._handler.link_up(self.account, welcome)
            writer = asyncio.create_task(self._write(ws), name=f"broker-link-writer:{self.account}")
            try:
                async for msg in ws:
                    if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        self._handler.link_frame(self.account, msg.data)
                    else:
                        break
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
            log.warning("broker link closed", account=self.account, code=ws.close_code)
        finally:
            was_up = self.ready.is_set()
            self.ready.clear()
            self._ws = None
            self._queue.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1)
            if was_up:
                self._handler.link_down(self.account)

    async def _welcome(self, ws: aiohttp.ClientWebSocketResponse, timeout: float) -> LinkWelcome:
        try:
            msg = await ws.receive(timeout=timeout)
        except TimeoutError as exc:
            raise LinkUnavailable("no link_welcome in time") from exc
        if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            raise LinkUnavailable(f"link refused before welcome (close code {ws.close_code})")
        try:
            data: dict[str, Any] = decode(msg.data)
            return LinkWelcome.model_validate(data)
        except (CodecError, ValidationError) as exc:
            raise LinkUnavailable(f"bad link_welcome: {str(exc)[:200]}") from exc

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        queue = self._queue
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._writing:
                continue  # `write_now` is mid-write; it wakes this task when it is done
            self._writing = True
            try:
                while queue:
                    await ws.send_bytes(queue.popleft())
            finally:
                self._writing = False
