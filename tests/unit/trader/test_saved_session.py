"""The session a hosted trader hands on from run to run: kept whole, read back only for the
same account, and a damaged or missing file means a new session, never a crash."""

from __future__ import annotations

from pathlib import Path

from workers.trader.service import SavedSession


def test_a_saved_session_is_read_back_for_its_account_only(tmp_path: Path) -> None:
    saved = SavedSession(tmp_path, "quoter")
    assert saved.load("paper-1") is None
    saved.save("desk.t1234", "paper-1", 41)
    assert SavedSession(tmp_path, "quoter").load("paper-1") == ("desk.t1234", 41)
    assert SavedSession(tmp_path, "quoter").load("paper-2") is None  # the account changed
    assert SavedSession(tmp_path, "other").load("paper-1") is None


def test_the_latest_seq_wins_and_nothing_is_saved_before_a_session_exists(
        tmp_path: Path) -> None:
    saved = SavedSession(tmp_path, "quoter")
    saved.save(None, None, 0)
    assert not saved.path.exists()
    saved.save("desk.t1", "paper-1", 5)
    saved.save("desk.t1", "paper-1", 9)
    assert saved.load("paper-1") == ("desk.t1", 9)
    saved.forget()
    assert saved.load("paper-1") is None


def test_a_damaged_file_means_a_new_session(tmp_path: Path) -> None:
    saved = SavedSession(tmp_path, "quoter")
    saved.path.parent.mkdir(parents=True)
    for text in ("{not json", '{"session_id": 7, "account": "paper-1", "last_seq": 1}',
                 '{"session_id": "s", "account": "paper-1", "last_seq": -1}', "[]", ""):
        saved.path.write_text(text)
        assert saved.load("paper-1") is None, text


def test_a_folder_that_cannot_be_written_is_no_crash(tmp_path: Path) -> None:
    (tmp_path / "traders").write_text("a file where the folder should be")
    saved = SavedSession(tmp_path, "quoter")
    saved.save("desk.t1", "paper-1", 3)  # logged, not raised
    assert saved.load("paper-1") is None
