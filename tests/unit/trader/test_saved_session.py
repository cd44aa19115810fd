"""The session a hosted trader hands on from run to run, with its PnL: kept whole, read back
only for the same account, and a damaged or missing file means a new session, never a
crash."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson

from protocol.orders import OrderFilled
from tests.unit.trader.test_pnl import fill
from tests.unit.trader.test_pnl import filled as filled_order
from workers.trader.pnl import PnlLedger
from workers.trader.service import SavedSession


def filled(cid: str, side: str, qty: str, price: str, seq: int) -> OrderFilled:
    return filled_order(fill(side, qty, price, fee="0.01", cid=cid, fill_id=f"f-{cid}"), seq)


def test_a_saved_session_comes_back_with_its_pnl_for_its_account_only(tmp_path: Path) -> None:
    ledger = PnlLedger()
    ledger.observe(filled("c1", "buy", "3", "100.1", seq=4))
    ledger.observe(filled("c2", "sell", "1", "130", seq=7))
    saved = SavedSession(tmp_path, "quoter")
    assert saved.load("paper-1") is None
    saved.save("desk.t1234", "paper-1", ledger)
    loaded = SavedSession(tmp_path, "quoter").load("paper-1")
    assert loaded is not None
    session_id, again = loaded
    assert session_id == "desk.t1234" and again.last_seq == 7
    assert again.report() == ledger.report()
    # A fill seen before the restart and replayed after it is counted once.
    assert not again.observe(filled("c2", "sell", "1", "130", seq=7))
    assert again.report()["instruments"]["BTC/USD"]["position"] == "2"
    assert SavedSession(tmp_path, "quoter").load("paper-2") is None  # the account changed
    assert SavedSession(tmp_path, "other").load("paper-1") is None


def test_the_pnl_carries_on_exactly_across_runs() -> None:
    whole, first = PnlLedger(), PnlLedger()
    events = [filled(f"c{n}", "buy" if n % 3 else "sell", str(n), f"{100 + n}.7", seq=n)
              for n in range(1, 12)]
    for event in events:
        whole.observe(event)
    for event in events[:5]:
        first.observe(event)
    second = PnlLedger.restore(orjson.loads(orjson.dumps(first.state())))
    for event in events[second.last_seq:]:  # the resume replays after the ledger's last seq
        second.observe(event)
    assert second.report() == whole.report()
    assert Decimal(second.report()["instruments"]["BTC/USD"]["position"]) == \
        sum(Decimal(n) if n % 3 else -Decimal(n) for n in range(1, 12))


def test_nothing_is_saved_before_a_session_exists_and_a_new_session_restarts_seqs(
        tmp_path: Path) -> None:
    saved = SavedSession(tmp_path, "quoter")
    ledger = PnlLedger()
    saved.save(None, None, ledger)
    assert not saved.path.exists()
    ledger.observe(filled("c1", "buy", "1", "100", seq=9))
    ledger.new_session()
    saved.save("desk.t2", "paper-1", ledger)
    loaded = saved.load("paper-1")
    assert loaded is not None and loaded[1].last_seq == 0
    assert loaded[1].report()["instruments"]["BTC/USD"]["position"] == "1"
    saved.forget()
    assert saved.load("paper-1") is None


def test_a_damaged_file_means_a_new_session(tmp_path: Path) -> None:
    saved = SavedSession(tmp_path, "quoter")
    saved.path.parent.mkdir(parents=True)
    good = {"instruments": {}, "last_seq": 1, "fill_ids": []}
    for text in ["{not json", "[]", "",
                 orjson.dumps({"session_id": 7, "account": "paper-1", "pnl": good}).decode(),
                 orjson.dumps({"session_id": "s", "account": "paper-1",
                               "pnl": {**good, "last_seq": -1}}).decode(),
                 orjson.dumps({"session_id": "s", "account": "paper-1",
                               "pnl": {**good, "instruments": {"BTC/USD": {
                                   "position": "x"}}}}).decode(),
                 orjson.dumps({"session_id": "s", "account": "paper-1",
                               "pnl": {**good, "instruments": {"BTC/USD": {
                                   "position": "one", "avg_cost": None, "realized": "0",
                                   "fees": {}, "mark": None, "mark_source": None,
                                   "fills": 0, "bought": "0", "sold": "0"}}}}).decode()]:
        saved.path.write_text(text)
        assert saved.load("paper-1") is None, text


def test_a_folder_that_cannot_be_written_is_no_crash(tmp_path: Path) -> None:
    (tmp_path / "traders").write_text("a file where the folder should be")
    saved = SavedSession(tmp_path, "quoter")
    saved.save("desk.t1", "paper-1", PnlLedger())  # logged, not raised
    assert saved.load("paper-1") is None


def test_a_run_of_an_older_worker_is_fenced_off_by_a_newer_ones_save(tmp_path: Path) -> None:
    ledger = PnlLedger()
    zombie = SavedSession(tmp_path, "quoter", epoch=3)
    assert zombie.save("desk.t1", "paper-1", ledger) and not zombie.superseded()
    successor = SavedSession(tmp_path, "quoter", epoch=7)
    assert successor.save("desk.t1", "paper-1", ledger)
    # The old run must neither write (its stale PnL and seq) nor take the session back.
    ledger.observe(filled("c9", "buy", "1", "100", seq=30))
    assert zombie.superseded() and not zombie.save("desk.t1", "paper-1", ledger)
    loaded = successor.load("paper-1")
    assert loaded is not None and loaded[1].last_seq == 0
    assert not successor.superseded()
    # The same worker running its trader again (a crashed strategy) is not fenced.
    assert SavedSession(tmp_path, "quoter", epoch=7).save("desk.t1", "paper-1", ledger)
