"""A hosted algo killed -9 leaves no orphaned orders: its next run cancels or adopts them.

Two hosted quoters keep one bid and one ask each, on accounts of their own. Their Trader
workers are killed -9 (twice each); the TraderManager replaces them, and the new run of each
finds the quotes the killed one left working at the exchange in its session. `on_restart =
"cancel"` cancels them before the strategy starts; `on_restart = "adopt"` hands them to the
strategy, which modifies them on as its own. Either way the exchange never holds more than
the algo's two quotes, whatever the number of restarts. Before, every restart left two more
quotes working, known to nobody. A third quoter trades often: its PnL (position, fills) goes
on from run to run and always comes back to the exchange's own figures for its account, also
through random kill -9s of its worker, the TraderManager, its Broker, the Market and the
exchange (`TRADEFLEET_CHAOS_SEED=<seed>` reproduces a run).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from decimal import Decimal
from functools import partial
from typing import Any

import pytest

from tests.support.fleet import FAST_CONFIG, Http, RunningFleet, start_fleet, wait_for, workers_of

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

# Quotes 100 USD away from the mid, re-quoted (modified) every 0.5 USD move: fills are rare.
QUOTER = ('strategy = "examples.quoter:TwoSidedQuoter"\ncustomer = "desk"\n'
          'params = { instrument = "BTC/USD", qty = "0.01", tick = "0.1", spread_ticks = 1000, '
          'requote_ticks = 5 }\n')
# Quotes 0.5 USD from the mid: the market trades through them every few seconds.
TIGHT_QUOTER = QUOTER.replace("spread_ticks = 1000", "spread_ticks = 5")
CONFIG = "traders = []\n" + FAST_CONFIG + f"""
[managers.broker]
desired = 2
[managers.market]
desired = 1
[managers.trader]
desired = 3

[accounts.q-cancel]
venue = "paper"
[accounts.q-adopt]
venue = "paper"
[accounts.q-fills]
venue = "paper"

[customers.desk]
accounts = ["q-cancel", "q-adopt", "q-fills"]

[[traders]]
name = "quoter-cancel"
account = "q-cancel"
{QUOTER}
[[traders]]
name = "quoter-adopt"
account = "q-adopt"
on_restart = "adopt"
{QUOTER}
[[traders]]
name = "quoter-fills"
account = "q-fills"
{TIGHT_QUOTER}"""
CONFIG = CONFIG.replace("traders = []\n", "", 1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    running = start_fleet(tmp_path_factory.mktemp("hosted") / "fleet", CONFIG)
    try:
        yield running
    finally:
        running.stop()


def working_at_venue(fleet: RunningFleet, account: str) -> list[dict[str, Any]]:
    venue = Http((fleet.data_dir / "run" / "paper.url").read_text().strip(),
                 fleet.secrets()["join_token"])
    orders: list[dict[str, Any]] = venue.get(f"/v1/accounts/{account}/orders?open=1")["orders"]
    return orders


def run_of(cid: str) -> str:
    """The SDK client (so the run) that placed an order: ids are `tf-<client>-<n>`."""
    return cid.rsplit("-", 1)[0]


def trader_worker(fleet: RunningFleet, name: str, not_id: str | None = None
                  ) -> dict[str, Any] | None:
    for worker in workers_of(fleet.fleet(), "trader"):
        info = worker.get("info") or {}
        if worker["state"] == "up" and info.get("trader") == name and worker["id"] != not_id \
                and info.get("status") == "running" and worker.get("pid"):
            return worker
    return None


def two_quotes(fleet: RunningFleet, account: str) -> list[dict[str, Any]] | None:
    orders = working_at_venue(fleet, account)
    return orders if sorted(o["side"] for o in orders) == ["buy", "sell"] else None


def kill_and_wait_for_the_next_run(fleet: RunningFleet, name: str) -> dict[str, Any]:
    worker = wait_for(lambda: trader_worker(fleet, name), 90, f"{name} running")
    os.kill(worker["pid"], signal.SIGKILL)
    return wait_for(lambda: trader_worker(fleet, name, not_id=worker["id"]), 90,
                    f"{name} running again after the kill")


def only_a_new_runs_quotes(fleet: RunningFleet, account: str, earlier_runs: set[str]
                           ) -> list[dict[str, Any]] | None:
    """The quotes working at the exchange if they are exactly two, both of a run that is not
    one of `earlier_runs` (whose quotes were cancelled first)."""
    orders = working_at_venue(fleet, account)
    fresh = [o for o in orders if run_of(o["client_order_id"]) not in earlier_runs]
    return orders if len(fresh) == 2 and len(orders) == 2 else None


def the_same_quotes_moved(fleet: RunningFleet, account: str, before: dict[str, str]
                          ) -> dict[str, str] | None:
    """The quotes working now if they are the orders of `before` (client_order_id → price),
    no others, and re-priced since: the new run modified the quotes it adopted."""
    now = {o["client_order_id"]: o["price"] for o in working_at_venue(fleet, account)}
    return now if now.keys() == before.keys() and now != before else None


def test_a_restarted_algo_cancels_the_orders_its_killed_run_left(fleet: RunningFleet) -> None:
    first = wait_for(lambda: two_quotes(fleet, "q-cancel"), 90, "the first run's quotes")
    runs = {run_of(o["client_order_id"]) for o in first}
    for _ in range(2):
        kill_and_wait_for_the_next_run(fleet, "quoter-cancel")
        quotes = wait_for(partial(only_a_new_runs_quotes, fleet, "q-cancel", set(runs)), 60,
                          "only the new run's quotes working")
        runs |= {run_of(o["client_order_id"]) for o in quotes}


def test_a_restarted_algo_adopts_the_orders_its_killed_run_left(fleet: RunningFleet) -> None:
    first = wait_for(lambda: two_quotes(fleet, "q-adopt"), 90, "the first run's quotes")
    for _ in range(2):
        before = {o["client_order_id"]: o["price"] for o in
                  wait_for(lambda: two_quotes(fleet, "q-adopt"), 60, "two quotes")}
        kill_and_wait_for_the_next_run(fleet, "quoter-adopt")
        wait_for(partial(the_same_quotes_moved, fleet, "q-adopt", before), 60,
                 "the adopted quotes re-quoted, and no new ones")
    assert {o["client_order_id"] for o in first} == \
        {o["client_order_id"] for o in working_at_venue(fleet, "q-adopt")}


def venue_books(fleet: RunningFleet, account: str) -> tuple[Decimal, int]:
    """The exchange's position in BTC and the number of fills of `account`."""
    venue = Http((fleet.data_dir / "run" / "paper.url").read_text().strip(),
                 fleet.secrets()["join_token"])
    positions = venue.get(f"/v1/accounts/{account}/ledger")["positions"]
    qty = sum((Decimal(p["qty"]) for p in positions if p["instrument"] == "BTC/USD"),
              Decimal(0))
    fills = 0
    while True:
        page = venue.get(f"/v1/accounts/{account}/fills?offset={fills}")
        fills += len(page["fills"])
        if not page["more"]:
            return qty, fills


def pnl_of(fleet: RunningFleet, name: str) -> tuple[Decimal, int] | None:
    """The running trader's own figures for BTC/USD: position and fills."""
    worker = trader_worker(fleet, name)
    if worker is None:
        return None
    line = worker["info"]["pnl"]["instruments"].get("BTC/USD")
    return (Decimal(line["position"]), int(line["fills"])) if line else (Decimal(0), 0)


def pnl_agrees_with_the_exchange(fleet: RunningFleet, at_least: int
                                 ) -> tuple[Decimal, int] | None:
    # Fills keep coming: retried until the two reads fall between two fills.
    mine = pnl_of(fleet, "quoter-fills")
    if mine is None or mine[1] < at_least:
        return None
    return mine if mine == venue_books(fleet, "q-fills") else None


def test_a_restarted_algo_carries_its_pnl_on_exactly(fleet: RunningFleet) -> None:
    _, fills = wait_for(partial(pnl_agrees_with_the_exchange, fleet, 2), 120,
                        "the trader's first fills, as the exchange has them")
    for _ in range(2):
        kill_and_wait_for_the_next_run(fleet, "quoter-fills")
        # The new run's figures go on from the killed run's (fills made while no run was
        # there included), never from zero.
        _, fills = wait_for(partial(pnl_agrees_with_the_exchange, fleet, fills + 1), 120,
                            "the new run's PnL equal to the exchange's")


def pid_of(fleet: RunningFleet, victim: str) -> int | None:
    """A live-looking pid of the victim named (None while it has none)."""
    if victim == "trader":
        workers = [w for w in workers_of(fleet.fleet(), "trader") if w["state"] == "up"
                   and (w.get("info") or {}).get("trader") == "quoter-fills"]
        return workers[0].get("pid") if workers else None
    if victim == "trader-manager":
        return fleet.manager("trader").get("/health").get("pid")  # type: ignore[no-any-return]
    if victim == "exchange":
        url = (fleet.data_dir / "run" / "paper.url").read_text().strip()
        return Http(url).get("/health").get("pid")  # type: ignore[no-any-return]
    owner = fleet.manager("broker").get("/v1/accounts")["accounts"].get("q-fills") or {}
    kind, wanted = ("broker", owner.get("worker_id")) if victim == "broker" else ("market", None)
    pids = [w.get("pid") for w in workers_of(fleet.fleet(), kind)
            if w["state"] == "up" and (wanted is None or w["id"] == wanted)]
    return pids[0] if pids else None


def test_a_hosted_algo_trades_through_kill_9s_of_everything_around_it(
        fleet: RunningFleet) -> None:
    """Its Trader worker, the TraderManager, its account's Broker, the Market and the
    exchange, killed -9 at random while it quotes and gets filled: afterwards its PnL is the
    exchange's, and only its current run's two quotes work at the exchange."""
    seed = int(os.environ.get("TRADEFLEET_CHAOS_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    _, fills = wait_for(partial(pnl_agrees_with_the_exchange, fleet, 1), 120, "trading")
    kills: list[str] = []
    for _ in range(8):
        time.sleep(rng.uniform(0.2, 1.5))  # trading between kills, not a wait
        victim = rng.choice(["trader", "trader", "trader-manager", "broker", "market",
                             "exchange"])
        pid = wait_for(partial(pid_of, fleet, victim), 90, f"a {victim} to kill")
        with contextlib.suppress(ProcessLookupError):  # the view may lag a death
            os.kill(pid, signal.SIGKILL)
        kills.append(victim)
    context = f"seed {seed}; kills {kills}"
    wait_for(partial(pnl_agrees_with_the_exchange, fleet, fills), 120,
             f"the trader's PnL equal to the exchange's ({context})")

    def one_runs_two_quotes() -> list[dict[str, Any]] | None:
        orders = two_quotes(fleet, "q-fills")
        return orders if orders and len({run_of(o["client_order_id"]) for o in orders}) == 1 \
            else None

    wait_for(one_runs_two_quotes, 60, f"only the current run's two quotes working ({context})")
