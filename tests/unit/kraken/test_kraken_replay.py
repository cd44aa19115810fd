"""The replay command's pure parts, run in-process: recording formats and verdicts."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.unit.kraken.reference_book import reference_checksum
from workers.broker import replay
from workers.broker.replay import Received, RecordingError, Sent, Unreadable, read_recording

BOOK_V2_SNAPSHOT = (
    '{"channel":"book","type":"snapshot","data":[{"symbol":"ALGO/USD",'
    '"bids":[{"price":0.1002,"qty":740.00000000}],"asks":[{"price":0.1003,"qty":1.50000000}],'
    '"checksum":%d}]}'
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    status = replay.main([*argv, "--json"])
    return status, json.loads(capsys.readouterr().out)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def algo_checksum() -> int:
    return reference_checksum(
        [(Decimal("0.1003"), Decimal("1.50000000"))], [(Decimal("0.1002"), Decimal("740.00000000"))]
    )


def test_cryptofeed_lines_are_classified(tmp_path: Path) -> None:
    subscribe = '{"event":"subscribe","pair":["XBT/USD"],"subscription":{"name":"book","depth":25}}'
    lines = [
        "wss://ws.kraken.com <-> 1618678132.38",
        f"wss://ws.kraken.com <- 1618678132.82: {subscribe}",
        'https://api.kraken.com/0/public/AssetPairs -> 1618678132.35: {"error":[]}',
        '1618678132.83: {"event":"heartbeat"}',
        "garbage line",
        "1618678133.00: {not json",
    ]
    path = write(tmp_path, "rec.txt", "\n".join(lines))
    kind, items = read_recording(path)
    assert kind == "cryptofeed recording"
    assert [type(item) for item in items] == [Sent, Received, Unreadable, Unreadable]
    assert [item.location for item in items] == ["line 2", "line 4", "line 5", "line 6"]


def test_json_documents_are_classified(tmp_path: Path) -> None:
    kind, items = read_recording(
        write(tmp_path, "f.json", '{"init": {"channel": "book"}, "updates": [{}, {}]}')
    )
    assert kind.startswith("json-fixture") and [i.location for i in items] == [
        "init",
        "updates[0]",
        "updates[1]",
    ]
    kind, items = read_recording(
        write(
            tmp_path,
            "v1.json",
            '{"init": [{"event": "x"}, [1, {}, "book-10", "A/B"]], "updates": []}',
        )
    )
    assert [i.location for i in items] == ["init[0]", "init[1]"]
    kind, items = read_recording(
        write(tmp_path, "a.json", '[\n{"channel": "heartbeat"},\n{"channel": "heartbeat"}\n]')
    )
    assert kind == "json-array of frames" and [i.location for i in items] == ["[0]", "[1]"]
    kind, items = read_recording(
        write(tmp_path, "one.json", '[336, {"a": []}, "book-10", "XBT/USD"]')
    )
    assert kind == "raw frames, one per line" and [i.location for i in items] == ["line 1"]
    kind, items = read_recording(write(tmp_path, "doc.json", '{\n "channel": "heartbeat"\n}\n'))
    assert kind == "json-frame" and [i.location for i in items] == ["document"]


def test_unreadable_recordings_raise(tmp_path: Path) -> None:
    with pytest.raises(RecordingError):
        read_recording(tmp_path / "missing.txt")
    with pytest.raises(RecordingError):
        read_recording(write(tmp_path, "empty.txt", "\n\n"))
    with pytest.raises(RecordingError):
        read_recording(write(tmp_path, "prose.md", "# notes\nnothing here\n"))


def test_v2_ack_depth_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ack = (
        '{"method":"subscribe","result":{"channel":"book","depth":25,"snapshot":true,'
        '"symbol":"ALGO/USD"},"success":true}'
    )
    path = write(tmp_path, "frames.jsonl", ack + "\n" + BOOK_V2_SNAPSHOT % algo_checksum() + "\n")
    status, report = run(capsys, str(path), "--venue", "kraken", "--wire-text")
    assert status == 0 and report["checksums_verified"] == 1 and report["other_frames"] == 1


def test_trade_ids_are_verified_as_sequence_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trade = (
        '{"channel":"trade","type":"update","data":[{"symbol":"ALGO/USD","side":"buy",'
        '"price":0.1,"qty":1.0,"ord_type":"limit","trade_id":%d,"timestamp":"t"}]}'
    )
    lines = [BOOK_V2_SNAPSHOT % algo_checksum()] + [trade % i for i in (7, 8, 9, 11, 12)]
    path = write(tmp_path, "t.jsonl", "\n".join(lines))
    status, report = run(capsys, str(path), "--venue", "kraken", "--wire-text")
    assert status == 1
    assert report["sequence_steps_verified"] == 3  # 8, 9 and 12
    assert [(i["location"], i["kind"]) for i in report["issues"]] == [("line 5", "sequence_gap")]


def test_level3_updates_are_reported_unverified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    update = '{"channel":"level3","type":"update","data":[{"symbol":"BTC/USD","bids":[],"asks":[],"checksum":1}]}'
    status, report = run(capsys, str(write(tmp_path, "l3.jsonl", update)), "--venue", "kraken")
    assert status == 1 and report["issues"][0]["kind"] == "unverified"


def test_malformed_frame_is_an_issue_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        BOOK_V2_SNAPSHOT % algo_checksum(),
        '{"channel":"book","type":"update","data":[{"symbol":"ALGO/USD"}]}',
    ]
    path = write(tmp_path, "m.jsonl", "\n".join(lines))
    status, report = run(capsys, str(path), "--venue", "kraken", "--wire-text")
    assert status == 1 and report["issues"][0]["location"] == "line 2"
    assert report["issues"][0]["kind"] == "malformed_frame"


def test_nothing_verifiable_is_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, report = run(
        capsys, str(write(tmp_path, "hb.jsonl", '{"channel":"heartbeat"}\n')), "--venue", "kraken"
    )
    assert status == 1 and report["ok"] is False and report["issues"] == []


def test_human_summary_lists_issues(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "bad.jsonl", BOOK_V2_SNAPSHOT % 1)
    assert replay.main([str(path), "--venue", "kraken"]) == 1
    out = capsys.readouterr().out
    assert "! line 1: checksum_mismatch ALGO/USD" in out and "FAILED: 1 issue" in out


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert replay.main(["x.txt"]) == 2
    assert replay.main(["x.txt", "--venue", "kraken", "--qty-precision", "8"]) == 2
    assert replay.main(["x.txt", "--venue", "kraken", "--depth", "-3"]) == 2
    assert replay.main(["/definitely/missing", "--venue", "kraken"]) == 2
    assert "missing" in capsys.readouterr().err
