"""The operator dashboard in headless Debian chromium, driven by Playwright.

Playwright never downloads a browser here: it drives /usr/bin/chromium, which the setup below
installs with apt-get when it is missing. Screenshots go to the test's temporary directory, or
to `docs/` when TRADEFLEET_SCREENSHOTS=docs (that is how the committed ones are made).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from protocol.control import Load, WorkerKind, WorkerState
from tests.support.fleet import FAST_CONFIG, RunningFleet, start_fleet, workers_of
from tests.support.infra import (
    REPO,
    FakeManager,
    InfraProcess,
    ManagerProcess,
    eventually,
    worker_view,
)
from tradefleet.client import MarketClient

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
JOIN = "join-token-for-browser-tests-000001"
OPERATOR = "operator-token-for-browser-tests-7q3z"
SILENCE_S = 1.0
CONFIG = f"""
location = "harbour"

[managers.broker]
desired = 1

[timeouts]
silence_timeout_s = {SILENCE_S}
pipe_grace_s = 2.0
restart_backoff_initial_s = 0.2

[security]
join_token = "{JOIN}"
operator_token = "{OPERATOR}"
"""


def ensure_chromium() -> None:
    """Install Debian's chromium if it is missing (never a Playwright-downloaded browser)."""
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env,
                   timeout=900)
    assert CHROMIUM.exists(), "apt-get installed chromium but /usr/bin/chromium is missing"


def screenshot_dir(tmp_path: Path) -> Path:
    return REPO / "docs" if os.environ.get("TRADEFLEET_SCREENSHOTS") == "docs" else tmp_path


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    ensure_chromium()
    return CHROMIUM


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def infra(tmp_path: Path, config_file: Path) -> Iterator[InfraProcess]:
    process = InfraProcess(tmp_path / "infra", config_file)
    yield process
    process.stop()


@pytest.fixture
def expected_console_errors() -> list[str]:
    """Substrings of console errors a test provokes on purpose (e.g. a refused action's 404)."""
    return []


@contextlib.asynccontextmanager
async def browser_page(chromium_path: Path, expected_console_errors: list[str],
                       viewport: dict[str, int] | None = None) -> AsyncIterator[Any]:
    """A fresh chromium page; on exit, fails on any page error not expected on purpose."""
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium_path),
                                           args=CHROMIUM_ARGS, headless=True)
        context = await browser.new_context(viewport=viewport or {"width": 1400, "height": 1000})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        try:
            yield page
        finally:
            await browser.close()
        unexpected = [e for e in errors
                      if not any(allowed in e for allowed in expected_console_errors)]
        assert unexpected == [], f"the page reported errors: {unexpected}"


@pytest.fixture
async def page(chromium_path: Path, infra: InfraProcess,
               expected_console_errors: list[str]) -> AsyncIterator[Any]:
    # Depends on `infra` so that the browser closes before the infra manager stops.
    async with browser_page(chromium_path, expected_console_errors) as page:
        yield page


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeManager]]:
    made: list[FakeManager] = []
    yield made
    for manager in made:
        await manager.stop()


async def fake(made: list[FakeManager], http: aiohttp.ClientSession, infra: InfraProcess,
               manager_id: str, location: str, kind: WorkerKind,
               workers: list[Any]) -> FakeManager:
    manager = FakeManager(manager_id, location, kind, JOIN, OPERATOR, heartbeat_s=0.25)
    manager.workers = workers
    manager.desired = len(workers)
    await manager.start()
    made.append(manager)
    async with http.post(f"{infra.url}/v1/managers/checkin", json=manager.checkin_body(),
                         headers={"Authorization": f"Bearer {JOIN}"}) as response:
        assert response.status == 200
    return manager


async def log_in(page: Any, infra: InfraProcess, token: str = OPERATOR) -> None:
    await page.goto(infra.url + "/")
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#token", token)
    await page.press("#token", "Enter")


def row(page: Any, worker_id: str) -> Any:
    return page.locator(f'tr.worker[data-key="{worker_id}"]')


# ------------------------------------------------------------------------- login


async def test_without_a_token_the_page_asks_for_one_and_never_shows_it(
        page: Any, infra: InfraProcess) -> None:
    await page.goto(infra.url + "/")
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#app")).to_be_hidden()
    await expect(page.locator("#token")).to_be_focused()

    await log_in(page, infra, token="not-the-operator-token")
    await expect(page.locator("#login-error")).to_contain_text("refused")
    await expect(page.locator("#app")).to_be_hidden()

    await page.fill("#token", OPERATOR)
    await page.press("#token", "Enter")
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#empty")).to_be_visible()
    await expect(page.locator("#token-hint")).to_have_text(f"operator token …{OPERATOR[-4:]}")
    await expect(page.locator("#conn")).to_have_text("live")
    html = await page.content()
    assert OPERATOR not in html and JOIN not in html

    # The token lives in this tab's session storage: a reload stays logged in.
    await page.reload()
    await expect(page.locator("#conn")).to_have_text("live")
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0


# ------------------------------------------------------------------------- with fake managers


async def test_fleet_is_live_and_actions_reach_the_manager(
        page: Any, infra: InfraProcess, http: aiohttp.ClientSession,
        fakes: list[FakeManager], expected_console_errors: list[str]) -> None:
    broker = await fake(fakes, http, infra, "porto-broker", "porto", WorkerKind.BROKER,
                        [worker_view("porto-b-1", WorkerKind.BROKER),
                         worker_view("porto-b-2", WorkerKind.BROKER, WorkerState.SUSPECT, 2)])
    await log_in(page, infra)
    await page.evaluate("window.__noReload = true")
    await expect(row(page, "porto-b-1").locator(".badge")).to_have_text("up")
    await expect(row(page, "porto-b-2").locator(".badge")).to_have_text("suspect")
    summary = page.locator('#summary-body tr[data-key="porto"]')
    await expect(summary.locator('td[data-state="up"]')).to_have_text("1")
    await expect(summary.locator('td[data-state="suspect"]')).to_have_text("1")

    # Spawn through the form.
    await page.fill("#spawn-porto-broker", "3")
    await page.click("text=Spawn broker workers")
    await expect(page.locator("#result")).to_contain_text("Spawned 3 broker at porto")
    assert [(m, p, None if b is None else b["count"]) for m, p, b, _ in broker.commands] == [
        ("POST", "/v1/workers/spawn", 3)]

    # Drain asks first; cancelling sends nothing. Keyboard only.
    await row(page, "porto-b-1").locator("text=Drain").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#confirm")).to_be_visible()
    await expect(page.locator("#confirm-cancel")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#confirm")).to_be_hidden()
    await expect(page.locator("#result")).to_contain_text("cancelled")
    assert len(broker.commands) == 1
    await page.keyboard.press("Enter")  # focus went back to the Drain button
    await page.keyboard.press("Tab")
    await expect(page.locator("#confirm-ok")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#result")).to_contain_text("Draining porto-b-1")
    assert broker.commands[-1][:2] == ("POST", "/v1/workers/porto-b-1/drain")

    # The manager reports draining, then the worker leaves: the page follows.
    broker.workers = [worker_view("porto-b-1", WorkerKind.BROKER, WorkerState.DRAINING),
                      broker.workers[1]]
    await expect(row(page, "porto-b-1").locator(".badge")).to_have_text("draining")
    broker.workers = broker.workers[1:]
    await expect(row(page, "porto-b-1")).to_have_count(0)

    # A refused action shows the manager's coded error.
    async def refuse(method: str, path: str) -> Any:
        from aiohttp import web
        return web.json_response({"error": {"code": "not_found",
                                            "message": "no live worker 'porto-b-2'"}},
                                 status=404)

    broker.answer = refuse
    expected_console_errors.append("status of 404")
    await row(page, "porto-b-2").locator("text=Stop").click()
    await page.click("#confirm-ok")
    await expect(page.locator("#result")).to_contain_text(
        "stop porto-b-2 failed — not_found: no live worker 'porto-b-2'")

    # The event log has the operator actions and filters them.
    await page.select_option("#event-source", "operator")
    await expect(page.locator("#event-list li").first).to_contain_text("stop porto-b-2")
    await page.fill("#event-filter", "drain")
    await expect(page.locator("#event-list li")).to_have_count(1)

    # The manager disappears: the location turns unreachable, without a reload.
    await broker.stop()
    card = page.locator('article.location[data-key="porto"]')
    await expect(card.locator(".location-head .badge")).to_have_text("unreachable",
                                                                      timeout=10_000)
    await expect(row(page, "porto-b-2").locator(".badge")).to_have_text("unreachable")
    assert await page.evaluate("window.__noReload") is True


async def test_fleet_screenshot(page: Any, infra: InfraProcess, http: aiohttp.ClientSession,
                                fakes: list[FakeManager], tmp_path: Path) -> None:
    """A realistic fleet over two locations, with a few seconds of chart history."""
    def loaded(worker_id: str, kind: WorkerKind, epoch: int, rate: float, p50: float,
               state: WorkerState = WorkerState.UP, uptime: float = 5400.0) -> Any:
        view = worker_view(worker_id, kind, state, epoch)
        return view.model_copy(update={
            "uptime_s": uptime, "pid": 4100 + epoch,
            "load": Load(sessions=int(rate // 40), subscriptions=int(rate // 9),
                         msgs_in_per_s=rate, msgs_out_per_s=rate * 1.7,
                         latency_p50_us=p50, latency_p99_us=p50 * 6.5)})

    managers = {
        "paris-broker": await fake(fakes, http, infra, "paris-broker", "paris", WorkerKind.BROKER,
                                   []),
        "paris-market": await fake(fakes, http, infra, "paris-market", "paris", WorkerKind.MARKET,
                                   []),
        "paris-trader": await fake(fakes, http, infra, "paris-trader", "paris", WorkerKind.TRADER,
                                   []),
        "tokyo-broker": await fake(fakes, http, infra, "tokyo-broker", "tokyo", WorkerKind.BROKER,
                                   []),
    }

    def shape(step: int) -> None:
        wave = [1.0, 1.3, 0.8, 1.6, 1.1, 0.9, 1.4, 1.2, 1.8, 1.0][step % 10]
        managers["paris-broker"].workers = [
            loaded("broker-1-a3f9", WorkerKind.BROKER, 1, 310 * wave, 85),
            loaded("broker-4-c1d2", WorkerKind.BROKER, 4, 120 * wave, 95, WorkerState.STARTING, 2)]
        managers["paris-market"].workers = [
            loaded("market-2-77be", WorkerKind.MARKET, 2, 820 * wave, 140),
            loaded("market-3-09aa", WorkerKind.MARKET, 3, 640 / wave, 160),
            loaded("market-5-5e10", WorkerKind.MARKET, 5, 60, 400, WorkerState.DRAINING, 900)]
        managers["paris-trader"].workers = [
            loaded("trader-1-be04", WorkerKind.TRADER, 1, 12 * wave, 60),
            loaded("trader-2-f00d", WorkerKind.TRADER, 2, 3, 70, WorkerState.SUSPECT, 1200)]
        managers["tokyo-broker"].workers = [
            loaded("broker-1-9c3e", WorkerKind.BROKER, 1, 150, 110)]
        for manager in managers.values():
            manager.desired = len(manager.workers)
        managers["paris-trader"].pending_events = [
            {"ts": time.time(), "event": "suspect", "worker_id": "trader-2-f00d",
             "reason": "control pipe lost"}] if step == 2 else []
        broker_events = {
            4: [{"ts": time.time(), "event": "venue_down", "category": "venue",
                 "worker_id": "broker-1-a3f9", "epoch": 1, "n": 1, "account": "kraken-main",
                 "message": "venue connection lost: websocket closed by peer"}],
            5: [{"ts": time.time(), "event": "venue_resync", "category": "venue",
                 "worker_id": "broker-1-a3f9", "epoch": 1, "n": 2, "account": "kraken-main",
                 "message": "venue connection restored; order state reconciled"}],
            6: [{"ts": time.time(), "event": "risk_rejected", "category": "risk",
                 "worker_id": "broker-1-a3f9", "epoch": 1, "n": 3, "account": "kraken-main",
                 "code": "risk_position_size", "client_order_id": "mm-8812",
                 "message": "position in BTC/USD would be 2.5, above max_position_qty 2"}]}
        managers["paris-broker"].pending_events = broker_events.get(step, [])

    shape(0)
    await log_in(page, infra)
    await expect(row(page, "market-2-77be")).to_be_visible()
    for step in range(1, 9):
        shape(step)
        await asyncio.sleep(1.05)
    await managers["tokyo-broker"].stop()  # tokyo goes dark
    tokyo = page.locator('article.location[data-key="tokyo"] .location-head .badge')
    await expect(tokyo).to_have_text("unreachable", timeout=10_000)
    await expect(page.locator('#event-list li[data-category="risk"]')).to_have_count(1)
    await expect(page.locator('#event-list li[data-category="venue"]')).to_have_count(2)
    await page.screenshot(path=str(screenshot_dir(tmp_path) / "dashboard-fleet.png"),
                          full_page=True)


# ------------------------------------------------------------------------- with a real manager


@pytest.fixture
def worker_pids() -> Iterator[set[int]]:
    pids: set[int] = set()
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


async def up_workers(http: aiohttp.ClientSession, infra: InfraProcess,
                     pids: set[int]) -> dict[str, int]:
    async with http.get(f"{infra.url}/v1/fleet",
                        headers={"Authorization": f"Bearer {OPERATOR}"}) as response:
        fleet = await response.json()
    workers = [w for loc in fleet["locations"] for m in loc["managers"] for w in m["workers"]]
    pids.update(w["pid"] for w in workers if w.get("pid"))
    return {w["id"]: w["pid"] for w in workers if w["state"] == "up"}


async def test_real_manager_spawn_drain_and_replacement_without_reload(
        page: Any, infra: InfraProcess, http: aiohttp.ClientSession, tmp_path: Path,
        config_file: Path, worker_pids: set[int]) -> None:
    manager = ManagerProcess(tmp_path / "location", config_file, infra.url)
    try:
        (first,) = await eventually(lambda: up_workers(http, infra, worker_pids), timeout=30,
                                    what="the configured worker up")
        await log_in(page, infra)
        await page.evaluate("window.__noReload = true")
        await expect(row(page, first).locator(".badge")).to_have_text("up")

        # Spawn one through the dashboard: it appears and becomes up.
        await page.fill("#spawn-harbour-broker", "1")
        await page.click("text=Spawn broker workers")
        await expect(page.locator("#result")).to_contain_text("Spawned 1 broker at harbour")
        spawned = (await page.locator("#result").inner_text()).rsplit(": ", 1)[1].strip()
        await expect(row(page, spawned).locator(".badge")).to_have_text("up", timeout=30_000)

        # Drain the first through the dashboard: draining is logged, then the row leaves.
        await row(page, first).locator("text=Drain").click()
        await page.click("#confirm-ok")
        await expect(page.locator("#result")).to_contain_text(f"Draining {first}")
        await expect(row(page, first)).to_have_count(0, timeout=30_000)
        await page.fill("#event-filter", first)
        await expect(page.locator("#event-list")).to_contain_text(f"draining {first}")
        await page.fill("#event-filter", "")

        # kill -9 of the spawned worker, outside the browser: its replacement shows up.
        pid = (await up_workers(http, infra, worker_pids))[spawned]
        os.kill(pid, signal.SIGKILL)
        await expect(row(page, spawned)).to_have_count(0, timeout=30_000)
        replacement = page.locator('tr.worker[data-state="up"]')
        await expect(replacement).to_have_count(1, timeout=30_000)
        await expect(page.locator("#event-list")).to_contain_text(
            f"old_worker_id={spawned}", timeout=10_000)
        assert await page.evaluate("window.__noReload") is True
        await page.screenshot(path=str(screenshot_dir(tmp_path) / "dashboard-real-manager.png"),
                              full_page=True)
    finally:
        manager.stop()


# ------------------------------------------------------------------------- trading view


def hosted_trading(fleet: RunningFleet) -> dict[str, Any] | None:
    """The default fleet's broker and trader infos once paper-1 is ready and ma-cross runs."""
    doc = fleet.fleet()
    brokers = [w["info"] for w in workers_of(doc, "broker")
               if w["state"] == "up" and w["info"].get("account") == "paper-1"]
    traders = [w["info"] for w in workers_of(doc, "trader")
               if w["state"] == "up" and w["info"].get("trader") == "ma-cross"]
    if brokers and brokers[0].get("ready") and traders and traders[0].get("status") == "running":
        return {"broker": brokers[0], "trader": traders[0]}
    return None


@pytest.fixture
def real_fleet(tmp_path: Path) -> Iterator[RunningFleet]:
    """`tradefleet up` as a user starts it: paper exchange, paper-1, the hosted ma-cross."""
    running = start_fleet(tmp_path / "fleet", FAST_CONFIG)
    try:
        yield running
    finally:
        assert running.stop() == 0, running.output()[-2000:]


@pytest.fixture
async def fleet_page(chromium_path: Path, real_fleet: RunningFleet,
                     expected_console_errors: list[str]) -> AsyncIterator[Any]:
    # Depends on `real_fleet` so that the browser closes before the fleet stops.
    async with browser_page(chromium_path, expected_console_errors,
                            viewport={"width": 1366, "height": 900}) as page:
        yield page


async def int_text(locator: Any) -> int:
    return int((await locator.inner_text()).strip())


async def test_trading_view_follows_a_real_fleet_without_reload(
        fleet_page: Any, real_fleet: RunningFleet, tmp_path: Path,
        expected_console_errors: list[str]) -> None:
    page = fleet_page
    await eventually(lambda: asyncio.to_thread(hosted_trading, real_fleet), timeout=90,
                     what="paper-1 ready and ma-cross running")
    secrets = json.loads((real_fleet.data_dir / "secrets.json").read_text())

    await page.goto(real_fleet.infra.base + "/")
    await page.fill("#token", secrets["operator_token"])
    await page.press("#token", "Enter")
    await expect(page.locator("#conn")).to_have_text("live")
    await page.evaluate("window.__noReload = true")

    # Keyboard to the trading view.
    await page.locator("#nav-trading").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#trading-view")).to_be_visible()
    await expect(page.locator("#fleet-view")).to_be_hidden()
    await expect(page.locator("#nav-trading")).to_have_attribute("aria-current", "page")

    account = page.locator('#accounts-body tr[data-key="paper-1"]')
    cells = account.locator("th, td")
    await expect(cells.nth(0)).to_have_text("paper-1")
    await expect(cells.nth(1)).to_have_text("paper")
    await expect(cells.nth(2)).to_contain_text("broker-")
    await expect(cells.nth(3)).to_have_text("ready")
    await expect(cells.nth(4)).to_have_text("connected")
    await expect(account.locator(".kill-button")).to_be_visible()

    trader = page.locator('#traders-body tr[data-key="ma-cross"]')
    tcells = trader.locator("th, td")
    await expect(tcells.nth(1)).to_have_text("examples.ma_cross:MovingAverageCross")
    await expect(tcells.nth(2)).to_have_text("paper-1")
    await expect(tcells.nth(3)).to_have_text("running")
    await expect(tcells.nth(7)).to_contain_text("signals=")
    await expect(tcells.nth(10)).to_contain_text("trader-")

    # The hosted moving-average trader keeps trading: fills and signals grow on the page,
    # pushed over the stream (no reload).
    fills = account.locator('td[data-field="fills"]')
    before = await int_text(fills)
    await expect(fills).not_to_have_text(str(before), timeout=45_000)
    assert await int_text(fills) > before
    signals = tcells.nth(7)
    first_state = await signals.inner_text()
    await expect(signals).not_to_have_text(first_state, timeout=45_000)

    await expect(account.locator('td[data-field="orders"]')).not_to_have_text("0")

    # An open position shows up as the trader goes long (it flips often; wait for one).
    held = page.locator('#positions-body tr[data-key^="paper-1|"][data-flat="false"]')
    await expect(held).to_have_count(1, timeout=45_000)
    await expect(held.locator("td").nth(0)).to_have_text("BTC/USD")
    await expect(held.locator("td").nth(1)).not_to_have_text("0")

    # Its fills are in the recent fills, newest first, and its own PnL in the traders table.
    newest = page.locator("#fills-body tr").first.locator("td")
    await expect(newest.nth(0)).to_have_text("paper-1")
    await expect(newest.nth(1)).to_have_text("BTC/USD")
    await expect(newest.nth(2)).to_have_text(re.compile(r"^(buy|sell)$"))
    await expect(newest.nth(7)).not_to_have_text("–")
    await expect(page.locator("#fills-empty")).to_be_hidden()
    await expect(tcells.nth(4)).not_to_have_text("–")  # realized PnL
    await expect(tcells.nth(5)).not_to_have_text("–")  # unrealized, marked at its trades
    traded = page.locator('#trader-positions-body tr[data-key="ma-cross|BTC/USD"] td')
    await expect(traded.nth(0)).to_have_text("BTC/USD")
    assert await int_text(traded.nth(7)) > 0  # fills counted

    # The kill switch asks first; cancelling (keyboard only) sends nothing.
    await account.locator(".kill-button").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#confirm")).to_be_visible()
    await expect(page.locator("#confirm-text")).to_contain_text("paper-1")
    await expect(page.locator("#confirm-reason")).to_be_visible()
    await expect(page.locator("#confirm-cancel")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.locator("#confirm")).to_be_hidden()
    await expect(page.locator("#result")).to_contain_text("Kill switch of paper-1 unchanged")

    # Confirmed, it goes through the infra manager to the account's order owner and back.
    await account.locator(".kill-button").click()
    await page.fill("#confirm-reason", "browser test")
    await page.click("#confirm-ok")
    result = page.locator("#result")
    await expect(result).to_have_text("Kill switch of paper-1 engaged.", timeout=15_000)
    await expect(account.locator(".kill-state")).to_have_text("ACTIVE", timeout=15_000)
    await expect(account.locator(".kill-reason")).to_contain_text("browser test")

    # An algo's order is now refused by the account's risk checks: the refusal reaches the
    # event log, under the risk filter, with the engaging of the switch before it.
    market_url = (real_fleet.data_dir / "run" / "market-manager.url").read_text().strip()
    async with await MarketClient.connect(market_url, secrets["api_token.demo"],
                                          account="paper-1") as client:
        order = await client.place_order("BTC/USD", "buy", "0.01", order_type="market",
                                         time_in_force="IOC")
        await order.done(timeout=20)
    assert order.error is not None and order.error.code == "kill_switch"
    await page.select_option("#event-source", "risk")
    refusal = page.locator("#event-list li", has_text=order.client_order_id)
    await expect(refusal).to_have_count(1, timeout=15_000)
    await expect(refusal).to_contain_text("risk_rejected paper-1 broker-")
    await expect(refusal).to_contain_text("code=kill_switch")
    await expect(refusal).to_have_attribute("data-category", "risk")
    switched = page.locator("#event-list li", has_text="kill_switch paper-1")
    await expect(switched).not_to_have_count(0)
    await page.select_option("#event-source", "lifecycle")
    await expect(page.locator("#event-list li", has_text="risk_rejected")).to_have_count(0)
    await page.select_option("#event-source", "")
    await page.screenshot(path=str(screenshot_dir(tmp_path) / "dashboard-trading.png"),
                          full_page=True)

    # No secret ever reaches the page, in any view.
    html = await page.content()
    for name, value in secrets.items():
        assert value not in html, f"the page shows the secret {name}"
    assert await page.evaluate("window.__noReload") is True


def fill_info(ms: int, fill_id: str, cid: str, instrument: str, side: str, qty: str,
              price: str, fee: str) -> dict[str, Any]:
    """One line of a Broker's `recent_fills`, `ms` milliseconds into a fixed day."""
    return {"ts": (1_763_700_000_000 + ms) * 1_000_000, "fill_id": fill_id,
            "client_order_id": cid, "instrument": instrument, "side": side, "qty": qty,
            "price": price, "fee": fee, "fee_currency": "USD", "liquidity": "taker",
            "customer": "desk"}


QUOTER_PNL = {"instruments": {"BTC/USD": {
    "position": "0.05", "avg_cost": "60015", "realized_pnl": "12.5", "unrealized_pnl": "-0.75",
    "mark": "60000", "mark_source": "ticker", "fees": {"USD": "0.4"}, "fills": 6,
    "bought": "0.3", "sold": "0.25"}},
    "totals": {"USD": {"realized": "12.5", "unrealized": "-0.75"}}, "fees": {"USD": "0.4"},
    "fills": 6}


async def test_trading_view_shows_risk_fields_when_present_and_degrades_without(
        page: Any, infra: InfraProcess, http: aiohttp.ClientSession,
        fakes: list[FakeManager]) -> None:
    """A Broker with the position manager's info next to one without; a failing trader."""
    def with_info(worker_id: str, kind: WorkerKind, info: dict[str, Any]) -> Any:
        return worker_view(worker_id, kind).model_copy(update={"info": info})

    risky = {"account": "kr-1", "venue": "kraken_spot", "state": "ready", "ready": True,
             "connected": True, "open_orders": 2, "orders": 40, "fills": 31, "epoch": 3,
             "positions": {"BTC/USD": "0.2500", "ETH/USD": "-1.5"},
             "position_pnl": {
                 "BTC/USD": {"qty": "0.25", "avg_price": "61000.5", "realized_pnl": "12.10",
                             "unrealized_pnl": "-3.05"},
                 "ETH/USD": {"qty": "-1.5", "avg_price": "3100", "realized_pnl": "0.20",
                             "unrealized_pnl": None},
                 "SOL/USD": {"qty": "0", "avg_price": None, "realized_pnl": "0.1",
                             "unrealized_pnl": None}},
             "kill_switch": "the account kill switch (ops: venue incident)",
             "recent_fills": [
                 fill_info(3_000, "f3", "kr-c3", "ETH/USD", "sell", "1.5", "3100", "0.93"),
                 fill_info(1_000, "f1", "kr-c1", "BTC/USD", "buy", "0.25", "61000.5", "3.05")]}
    plain = {"account": "paper-9", "venue": "paper", "state": "reconciling", "ready": False,
             "connected": False, "open_orders": 0, "orders": 0, "fills": 0, "positions": {},
             "recent_fills": [fill_info(2_000, "p2", "pp-1", "BTC/USD", "buy", "0.01",
                                        "60000", "0")]}
    broker = await fake(fakes, http, infra, "lis-broker", "lisbon", WorkerKind.BROKER,
                        [with_info("broker-1-aaaa", WorkerKind.BROKER, risky),
                         with_info("broker-2-bbbb", WorkerKind.BROKER, plain),
                         with_info("broker-3-cccc", WorkerKind.BROKER, {"state": "standby"})])
    trader = await fake(fakes, http, infra, "lis-trader", "lisbon", WorkerKind.TRADER,
                        [with_info("trader-1-dddd", WorkerKind.TRADER, {
                            "trader": "quoter", "strategy": "examples.quoter:Quoter",
                            "account": "kr-1", "status": "failed", "errors": 4,
                            "strategy_state": {"spread": "0.5", "api_key": "leak-me-not"},
                            "last_error": "Strategy raised: boom", "pnl": QUOTER_PNL}),
                         with_info("trader-2-eeee", WorkerKind.TRADER, {"status": "standby"})])

    # A laptop screen.
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(infra.url + "/#trading")
    await page.fill("#token", OPERATOR)
    await page.press("#token", "Enter")
    await expect(page.locator("#trading-view")).to_be_visible()
    await page.evaluate("window.__noReload = true")

    kr = page.locator('#accounts-body tr[data-key="kr-1"]')
    await expect(kr.locator("td").nth(1)).to_have_text("broker-1-aaaa @ lisbon")
    await expect(kr.locator('td[data-field="open_orders"]')).to_have_text("2")
    await expect(kr.locator("td").nth(7)).to_have_text("2")  # open positions
    await expect(kr.locator("td").nth(8)).to_have_text("12.40")  # 12.10 + 0.20 + 0.1, exact
    await expect(kr.locator("td").nth(9)).to_have_text("-3.05")
    await expect(kr.locator(".kill-state")).to_have_text("ACTIVE")
    await expect(kr.locator(".kill-reason")).to_have_text(
        "the account kill switch (ops: venue incident)")
    await expect(kr.locator(".kill-button")).to_have_text("Release")

    paper = page.locator('#accounts-body tr[data-key="paper-9"]')
    await expect(paper.locator("td").nth(2)).to_have_text("reconciling")
    await expect(paper.locator("td").nth(3)).to_have_text("disconnected")
    await expect(paper.locator("td").nth(8)).to_have_text("–")
    await expect(paper.locator(".kill-state")).to_have_text("not reported")
    await expect(paper.locator(".kill-button")).to_have_text("Kill switch")
    await expect(page.locator("#accounts-body tr")).to_have_count(2)  # standby holds none

    # Recent fills: newest first across accounts (kr-1, paper-9, kr-1 again).
    fills = page.locator("#fills-body tr")
    await expect(fills).to_have_count(3)
    await expect(fills.nth(0).locator("td").nth(0)).to_have_text("kr-1")
    await expect(fills.nth(0).locator("td").nth(1)).to_have_text("ETH/USD")
    await expect(fills.nth(0).locator("td").nth(2)).to_have_text("sell")
    await expect(fills.nth(0).locator("td").nth(3)).to_have_text("1.5")
    await expect(fills.nth(0).locator("td").nth(7)).to_have_text("kr-c3")
    await expect(fills.nth(1).locator("td").nth(0)).to_have_text("paper-9")
    await expect(fills.nth(2).locator("td").nth(4)).to_have_text("61000.5")
    await expect(page.locator("#fills-empty")).to_be_hidden()

    short = page.locator('#positions-body tr[data-key="kr-1|ETH/USD"] td')
    await expect(short.nth(1)).to_have_text("-1.5")
    await expect(short.nth(2)).to_have_text("3100")
    await expect(short.nth(4)).to_have_text("–")
    await expect(page.locator("#positions-body tr")).to_have_count(3)  # SOL: flat, realized

    quoter = page.locator('#traders-body tr[data-key="quoter"] td')
    await expect(quoter.nth(2)).to_have_text("failed")
    await expect(quoter.nth(3)).to_have_text("12.5")  # realized PnL, in USD
    await expect(quoter.nth(3)).to_have_class(re.compile(r"\bgain\b"))
    await expect(quoter.nth(4)).to_have_text("-0.75")
    await expect(quoter.nth(4)).to_have_class(re.compile(r"\bloss\b"))
    await expect(quoter.nth(5)).to_have_text("0.4")
    await expect(quoter.nth(6)).to_have_text("spread=0.5 · api_key=•••")
    await expect(quoter.nth(7)).to_have_text("4")
    await expect(quoter.nth(8)).to_have_text("Strategy raised: boom")
    held = page.locator('#trader-positions-body tr[data-key="quoter|BTC/USD"] td')
    await expect(held.nth(0)).to_have_text("BTC/USD")
    await expect(held.nth(1)).to_have_text("0.05")
    await expect(held.nth(2)).to_have_text("60015")
    await expect(held.nth(3)).to_have_text("60000")
    await expect(held.nth(7)).to_have_text("6")
    await expect(page.locator("#trader-positions-body tr")).to_have_count(1)
    await expect(page.locator("#traders-idle")).to_have_text("1 Trader worker on standby.")
    assert "leak-me-not" not in await page.content()

    # Live: the switch is released and the trader recovers, without a reload.
    released = {**risky, "kill_switch": None}
    broker.workers = [with_info("broker-1-aaaa", WorkerKind.BROKER, released)]
    await expect(kr.locator(".kill-state")).to_have_text("off")
    await expect(kr.locator(".kill-reason")).to_have_count(0)
    await expect(page.locator('#accounts-body tr[data-key="paper-9"]')).to_have_count(0)
    trader.workers = [with_info("trader-1-dddd", WorkerKind.TRADER, {
        "trader": "quoter", "strategy": "examples.quoter:Quoter", "account": "kr-1",
        "status": "running", "errors": 4, "strategy_state": {"spread": "0.4"}})]
    await expect(quoter.nth(2)).to_have_text("running")
    await expect(quoter.nth(8)).to_have_text("–")
    await expect(quoter.nth(3)).to_have_text("–")  # a trader that reports no PnL yet
    await expect(page.locator("#trader-positions-body tr")).to_have_count(0)

    # The fleet-wide kill switch the BrokerManager keeps: shown, and released by keyboard.
    await expect(page.locator("#fleet-kill-state")).to_have_text("off")
    broker.info = {"fleet_kill_switch": {"active": True, "reason": "desk halt", "by": "ops",
                                         "at": 1.0}}
    await expect(page.locator("#fleet-kill-state")).to_have_text("ACTIVE")
    await expect(page.locator("#fleet-kill-reason")).to_have_text("desk halt · by ops")
    # An account stopped by the fleet-wide switch is released only with it.
    broker.workers = [with_info("broker-1-aaaa", WorkerKind.BROKER, {
        **released, "kill_switch": "the fleet-wide kill switch (ops: desk halt)"})]
    await expect(kr.locator(".kill-state")).to_have_text("ACTIVE")
    await expect(kr.locator(".kill-button")).to_be_disabled()
    await page.locator("#fleet-kill-button").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#confirm-text")).to_contain_text("Release the fleet-wide")
    await expect(page.locator("#confirm-cancel")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(page.locator("#confirm-ok")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#result")).to_have_text("Fleet-wide kill switch released.")
    assert broker.commands[-1][:3] == ("POST", "/v1/kill-switch", {
        "active": False, "reason": "fleet released from the dashboard"})

    # Risk and venue events from the Broker workers, each under its own filter.
    broker.pending_events = [
        {"ts": time.time(), "event": "venue_down", "category": "venue",
         "worker_id": "broker-1-aaaa", "epoch": 1, "n": 1, "account": "kr-1",
         "message": "venue connection lost: socket closed"},
        {"ts": time.time(), "event": "risk_rejected", "category": "risk",
         "worker_id": "broker-1-aaaa", "epoch": 1, "n": 2, "account": "kr-1",
         "code": "risk_order_notional", "client_order_id": "big-1",
         "message": "order notional 300,000.00 exceeds max_order_notional 100,000.00"}]
    await page.select_option("#event-source", "risk")
    risky_line = page.locator("#event-list li").first
    await expect(risky_line).to_contain_text("risk_rejected kr-1 broker-1-aaaa")
    await expect(risky_line).to_contain_text("code=risk_order_notional")
    await expect(risky_line).to_contain_text("exceeds max_order_notional")
    await expect(risky_line).to_have_class(re.compile(r"\bproblem\b"))
    await expect(page.locator("#event-list li")).to_have_count(1)
    await page.select_option("#event-source", "venue")
    await expect(page.locator("#event-list li")).to_have_count(1)
    await expect(page.locator("#event-list li").first).to_contain_text("venue_down")
    await page.select_option("#event-source", "lifecycle")
    await expect(page.locator("#event-list li", has_text="risk_rejected")).to_have_count(0)

    # Readable at laptop width: nothing forces the page to scroll sideways.
    assert await page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    assert await page.evaluate("window.__noReload") is True
