"""The replay command run as a real process on the recorded Kraken feeds.

Recordings are read in place from ``../shared/data/exchanges`` (or
``$TRADEFLEET_EXCHANGE_DATA``); corrupted variants are written to a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
PROCESS_TIMEOUT = 60


def exchange_data_dir() -> Path:
    override = os.environ.get("TRADEFLEET_EXCHANGE_DATA")
    return Path(override) if override else REPO / ".." / "shared" / "data" / "exchanges"


@pytest.fixture(scope="module")
def data() -> Path:
    path = exchange_data_dir()
    if not (path / "SOURCES.md").is_file():
        pytest.fail(f"recorded exchange data not found at {path}; set TRADEFLEET_EXCHANGE_DATA")
    return path


def run_replay(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.broker.replay", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        check=False,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )


def replay_json(*args: str | Path) -> tuple[int, dict[str, Any]]:
    result = run_replay(*args, "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


# ---------------------------------------------------------------------------- clean recordings


@pytest.mark.parametrize(
    ("relative", "venue", "expected"),
    [
        (
            "kraken_spot_v2/btcusd_book10_2023-07-30.json",
            "kraken",
            {"checksums_verified": 510, "snapshots": 1, "updates": 509},
        ),
        (
            "kraken_spot_v1/xbtusd_book10_2023-08-30.json",
            "kraken",
            {"checksums_verified": 979, "snapshots": 1, "updates": 979},
        ),
        (
            "kraken_spot_v1/cryptofeed_book1000_10pairs_2021-04-17.txt",
            "kraken",
            {"checksums_verified": 4269, "snapshots": 10, "updates": 4269},
        ),
        (
            "kraken_futures/cryptofeed_book_trade_ticker_2021-07-22.txt",
            "kraken-futures",
            {
                "sequence_steps_verified": 7014,
                "snapshots": 10,
                "updates": 7014,
                "crossed_books": 0,
                "cross_checks": 7024,
            },
        ),
    ],
)
def test_every_recording_verifies_completely(
    data: Path, relative: str, venue: str, expected: dict[str, int]
) -> None:
    status, report = replay_json(data / relative, "--venue", venue)
    assert status == 0, report["issues"][:5]
    assert report["ok"] is True and report["issues"] == []
    assert {key: report[key] for key in expected} == expected
    assert report["checksum_mismatches"] == report["sequence_gaps"] == 0


@pytest.mark.parametrize(
    ("relative", "symbol", "verified", "last_checksum"),
    [
        ("kraken_spot_v2/v2_book_checksum_worked_example.json", "BTC/USD", 1, 3310070434),
        ("kraken_spot_v2/v2_book_doc_example_MATIC_USD.json", "MATIC/USD", 2, 2114181697),
        ("kraken_spot_v2/v2_level3_checksum_worked_example.json", "BTC/USD", 1, 1063832831),
    ],
)
def test_docs_worked_examples_reproduce(
    data: Path, relative: str, symbol: str, verified: int, last_checksum: int
) -> None:
    status, report = replay_json(data / relative, "--venue", "kraken")
    assert status == 0
    assert report["symbols"][symbol]["checksums_verified"] == verified
    assert report["symbols"][symbol]["last_checksum"] == last_checksum


def test_matic_example_with_forced_precision_and_human_summary(data: Path) -> None:
    result = run_replay(
        data / "kraken_spot_v2/v2_book_doc_example_MATIC_USD.json",
        "--venue",
        "kraken",
        "--price-precision",
        "4",
        "--qty-precision",
        "8",
    )
    assert result.returncode == 0
    assert "2 of 2 verified" in result.stdout and "OK: everything verified" in result.stdout


def test_float_mangled_fixture_fails_with_wire_text(data: Path) -> None:
    status, report = replay_json(
        data / "kraken_spot_v2/btcusd_book10_2023-07-30.json", "--venue", "kraken", "--wire-text"
    )
    assert status == 1
    assert report["issues"][0]["location"] == "init"  # the very first snapshot already fails


# ---------------------------------------------------------------------------- corrupted copies


def test_corrupted_checksum_is_reported_at_its_line_and_replay_keeps_counting(
    data: Path, tmp_path: Path
) -> None:
    source = data / "kraken_spot_v1/cryptofeed_book1000_10pairs_2021-04-17.txt"
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    # Corrupt the checksum of an XBT/CHF update roughly halfway through the file.
    candidates = [i for i, line in enumerate(lines) if '"XBT/CHF"]' in line and '"c":"' in line]
    target = candidates[len(candidates) // 2]
    lines[target] = re.sub(
        r'"c":"(\d+)"', lambda m: f'"c":"{(int(m.group(1)) + 1) % 2**32}"', lines[target]
    )
    corrupted = tmp_path / "book1000_corrupted.txt"
    corrupted.write_text("".join(lines), encoding="utf-8")
    later_same_pair = sum(1 for i in candidates if i > target)

    status, report = replay_json(corrupted, "--venue", "kraken")

    assert status == 1 and report["ok"] is False
    assert [(i["location"], i["kind"], i["symbol"]) for i in report["issues"]] == [
        (f"line {target + 1}", "checksum_mismatch", "XBT/CHF")
    ]
    assert report["checksum_mismatches"] == 1
    assert report["skipped_while_resyncing"] == later_same_pair
    assert report["checksums_verified"] == 4269 - 1 - later_same_pair
    # the other pairs kept verifying after the bad line, up to their last update
    last_eth = [line for line in lines[target:] if '"ETH/CHF"]' in line and '"c":"' in line][-1]
    expected_last = int(re.search(r'"c":"(\d+)"', last_eth).group(1))  # type: ignore[union-attr]
    assert report["symbols"]["ETH/CHF"]["last_checksum"] == expected_last


def _v2_frame_line(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def _book_after(
    frames: list[dict[str, Any]],
) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
    """Bids and asks after applying ``frames`` (depth 10), rebuilt independently."""
    bids: dict[Decimal, Decimal] = {}
    asks: dict[Decimal, Decimal] = {}
    for frame in frames:
        data = frame["data"][0]
        for side, levels in ((bids, data["bids"]), (asks, data["asks"])):
            for level in levels:
                price, qty = Decimal(repr(level["price"])), Decimal(repr(level["qty"]))
                if qty:
                    side[price] = qty
                else:
                    side.pop(price, None)
        for side, best_first in ((bids, True), (asks, False)):
            for price in sorted(side, reverse=best_first)[10:]:
                del side[price]
    return bids, asks


def test_v2_raw_frames_resync_at_the_next_snapshot(data: Path, tmp_path: Path) -> None:
    """One bad checksum; updates wait for the next snapshot, then verify again."""
    fixture = json.loads((data / "kraken_spot_v2/btcusd_book10_2023-07-30.json").read_text())
    frames = [fixture["init"], *fixture["updates"]]
    bad, resync_after = 100, 150
    # A fresh snapshot of the state after frame `resync_after`, written with the pair's
    # precisions; its checksum is the one the venue sent for that same state.
    bids, asks = _book_after(frames[: resync_after + 1])

    def levels(side: dict[Decimal, Decimal], best_first: bool) -> str:
        ordered = sorted(side.items(), reverse=best_first)
        return ",".join(f'{{"price":{p:.1f},"qty":{q:.8f}}}' for p, q in ordered)

    snapshot_line = (
        '{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD",'
        f'"bids":[{levels(bids, True)}],"asks":[{levels(asks, False)}],'
        f'"checksum":{frames[resync_after]["data"][0]["checksum"]}}}]}}'
    )
    lines = [_v2_frame_line(frame) for frame in frames]
    corrupted_frame = json.loads(lines[bad])
    corrupted_frame["data"][0]["checksum"] ^= 0xFF
    lines[bad] = _v2_frame_line(corrupted_frame)
    lines.insert(resync_after + 1, snapshot_line)
    recording = tmp_path / "v2_frames.jsonl"
    recording.write_text("\n".join(lines) + "\n", encoding="utf-8")

    status, report = replay_json(recording, "--venue", "kraken")

    assert status == 1
    assert report["format"] == "raw frames, one per line"
    assert [(i["location"], i["kind"]) for i in report["issues"]] == [
        (f"line {bad + 1}", "checksum_mismatch")
    ]
    skipped = resync_after - bad
    assert report["skipped_while_resyncing"] == skipped
    assert report["snapshots"] == 2
    # 510 original checksums, minus the bad one and the skipped ones, plus the new snapshot's
    assert report["checksums_verified"] == 510 - 1 - skipped + 1
    assert report["symbols"]["BTC/USD"]["last_checksum"] == frames[-1]["data"][0]["checksum"]


def test_skipped_futures_sequence_number_is_reported_and_others_keep_counting(
    data: Path, tmp_path: Path
) -> None:
    source = data / "kraken_futures/cryptofeed_book_trade_ticker_2021-07-22.txt"
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    by_product: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        match = re.search(r'"feed":"book","product_id":"([A-Z_0-9]+)"', line)
        if match:
            by_product.setdefault(match.group(1), []).append(i)
    product, deltas = max(by_product.items(), key=lambda item: len(item[1]))  # busiest product
    removed = deltas[len(deltas) // 2]
    gap_at = deltas[deltas.index(removed) + 1]
    after_gap = len(deltas) - deltas.index(gap_at) - 1
    del lines[removed]
    corrupted = tmp_path / "futures_gap.txt"
    corrupted.write_text("".join(lines), encoding="utf-8")

    status, report = replay_json(corrupted, "--venue", "kraken-futures")

    assert status == 1
    # gap_at moved up one line after the deletion; report locations are 1-based
    assert [(i["location"], i["kind"], i["symbol"]) for i in report["issues"]] == [
        (f"line {gap_at}", "sequence_gap", product)
    ]
    assert report["sequence_gaps"] == 1 and report["crossed_books"] == 0
    assert report["skipped_while_resyncing"] == after_gap
    assert report["sequence_steps_verified"] == 7014 - 1 - 1 - after_gap
    others = {name: stats for name, stats in report["symbols"].items() if name != product}
    assert sum(stats["sequence_steps_verified"] for stats in others.values()) == 7014 - len(deltas)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args",
    [
        ["/nonexistent/recording.txt", "--venue", "kraken"],
        [".", "--venue", "kraken"],
        ["{data}/SOURCES.md", "--venue", "kraken"],
        ["{data}/SOURCES.md"],
        ["{data}/SOURCES.md", "--venue", "binance"],
        ["{data}/SOURCES.md", "--venue", "kraken", "--depth", "0"],
        ["{data}/SOURCES.md", "--venue", "kraken", "--price-precision", "1"],
        ["{data}/SOURCES.md", "--venue", "kraken", "--depth", "ten"],
    ],
)
def test_bad_arguments_and_unreadable_files_exit_2_without_traceback(
    data: Path, args: list[str]
) -> None:
    result = run_replay(*(arg.format(data=data) for arg in args))
    assert result.returncode == 2
    assert result.stderr.strip() and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_binary_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "capture.bin"
    path.write_bytes(b"\xff\xfe\x00\x01binary")
    result = run_replay(path, "--venue", "kraken")
    assert result.returncode == 2 and "cannot read" in result.stderr
    assert "Traceback" not in result.stderr
