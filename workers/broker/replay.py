"""Replay a recorded Kraken / Kraken Futures feed through the adapter and verify it.

Usage::

    python -m workers.broker.replay FILE --venue kraken|kraken-futures [--depth D] [--json]

The recording is fed, frame by frame, through the venue adapter's parser and book
builder -- the same pure code the live Broker worker runs -- and the command reports how
many messages, book checksums (spot) and sequence steps (futures ``seq``, spot
``trade_id``/``executions``) it verified. Every mismatch is named by its place in the
file (``line N``; ``updates[i]`` for JSON fixtures), the replay goes on (a symbol resyncs
at its next snapshot) and the exit status is non-zero.

Accepted recordings (detected automatically):

* one raw WebSocket frame (JSON text) per line, exactly as received;
* a JSON fixture ``{"init": <frame or frames>, "updates": [<frames>]}``;
* a JSON document holding one frame or an array of frames (documentation examples);
* the cryptofeed recorder's text format: ``<url> <- <ts>: <sent JSON>`` lines (used to
  learn subscribed depths), ``<ts>: <received JSON>`` lines, ``<url> -> ...`` and
  ``<url> <-> ...`` lines (ignored).

Spot checksums use the exact wire text of each number (always so for v1 frames, whose
strings carry fixed decimals), except for v2 symbols whose
precision is known (from ``--instruments``, a v2 ``instrument`` snapshot; by default the
shared reference snapshot when present): those are re-formatted with the pair's
``price_precision``/``qty_precision``, which also verifies recordings whose numbers went
through floats. ``--price-precision``/``--qty-precision`` force one precision for every
symbol; ``--wire-text`` ignores instrument precisions.

Exit status: 0 when everything was verified, 1 when anything failed or nothing could be
verified, 2 for bad arguments or an unreadable file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from workers.broker.adapters import kraken_futures as futures
from workers.broker.adapters.kraken import checksum as spot_checksum
from workers.broker.adapters.kraken import schemas as spot
from workers.broker.adapters.kraken.book import (
    BookChanged,
    ChecksumMismatch,
    SpotBookBuilder,
    UpdateIgnored,
)
from workers.broker.adapters.kraken.errors import KrakenError
from workers.broker.adapters.kraken.sequence import (
    ExecutionsSequenceTracker,
    SequenceGap,
    SequenceRepeat,
    SequenceResult,
    SequenceStep,
    TradeIdTracker,
)
from workers.broker.adapters.kraken_futures import schemas as fschemas
from workers.broker.adapters.kraken_futures.errors import KrakenFuturesError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

INSTRUMENTS_RELATIVE = Path("reference") / "kraken_v2_instrument_snapshot.json"


class RecordingError(Exception):
    """The recording cannot be read or has no recognisable structure (exit status 2)."""


# ------------------------------------------------------------------------ reading recordings


@dataclass(frozen=True, slots=True)
class Received:
    """A frame received from the venue, decoded, with its place in the file."""

    location: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Sent:
    """A request the recorder sent (cryptofeed ``<-`` lines): subscriptions and depths."""

    location: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A line that is not a frame; reported as an issue."""

    location: str
    reason: str


RecordItem = Received | Sent | Unreadable

_CRYPTOFEED_URL_LINE = re.compile(r"^(\S+) (<-|->|<->) (\d+(?:\.\d+)?)(?:: (.*))?$")
_CRYPTOFEED_RECEIVED = re.compile(r"^(\d+(?:\.\d+)?): (.*)$")


def _decode(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


def _json_document(data: Any) -> tuple[str, list[RecordItem]]:
    if isinstance(data, dict) and "init" in data and "updates" in data:
        init, updates = data["init"], data["updates"]
        if not isinstance(updates, list):
            raise RecordingError("fixture 'updates' is not an array")
        items: list[RecordItem] = []
        # A v1 fixture's init is a list of frames; a v2 fixture's init is one frame.
        if isinstance(init, list) and init and not isinstance(init[0], int):
            items += [Received(f"init[{i}]", frame) for i, frame in enumerate(init)]
            kind = "json-fixture (init frames + updates)"
        else:
            items.append(Received("init", init))
            kind = "json-fixture (init snapshot + updates)"
        items += [Received(f"updates[{i}]", frame) for i, frame in enumerate(updates)]
        return kind, items
    if isinstance(data, list) and data and not isinstance(data[0], int):
        return "json-array of frames", [Received(f"[{i}]", frame) for i, frame in enumerate(data)]
    return "json-frame", [Received("document", data)]


def _line_items(text: str) -> tuple[str, list[RecordItem]]:
    items: list[RecordItem] = []
    raw_lines = cryptofeed_lines = 0
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        location = f"line {number}"
        body: str | None
        if line[0] in "{[":
            raw_lines += 1
            body, sent = line, False
        elif match := _CRYPTOFEED_RECEIVED.match(line):
            cryptofeed_lines += 1
            body, sent = match.group(2), False
        elif match := _CRYPTOFEED_URL_LINE.match(line):
            cryptofeed_lines += 1
            # Only "<-" (sent) lines matter: "->" are REST answers, "<->" connection marks.
            body, sent = (match.group(4), True) if match.group(2) == "<-" else (None, False)
            if body is None:
                continue
        else:
            items.append(Unreadable(location, "not a JSON frame or a recorder line"))
            continue
        try:
            payload = _decode(body)
        except ValueError as exc:
            items.append(Unreadable(location, f"invalid JSON: {exc}"))
            continue
        items.append(Sent(location, payload) if sent else Received(location, payload))
    if not any(isinstance(item, (Received, Sent)) for item in items):
        raise RecordingError("no WebSocket frames found (expected JSON frames or recorder lines)")
    if cryptofeed_lines:
        kind = "cryptofeed recording" if not raw_lines else "mixed recorder/raw lines"
    else:
        kind = "raw frames, one per line"
    return kind, items


def read_recording(path: Path) -> tuple[str, list[RecordItem]]:
    """Read and classify a recording; raise :class:`RecordingError` if impossible."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"cannot read {path}: {exc}") from exc
    stripped = text.strip()
    if not stripped:
        raise RecordingError(f"{path} is empty")
    if stripped[0] in "{[":
        try:
            data = _decode(stripped)
        except ValueError:
            pass  # several lines of JSON: one frame per line
        else:
            is_fixture = isinstance(data, dict) and "init" in data and "updates" in data
            # A one-line file is a raw-frame recording: name its frame "line N".
            if is_fixture or "\n" in stripped:
                return _json_document(data)
    return _line_items(text)


# ------------------------------------------------------------------------ the report


@dataclass(slots=True)
class Issue:
    """One thing that failed verification, named by its place in the file."""

    location: str
    kind: str
    detail: str
    symbol: str | None = None


@dataclass(slots=True)
class SymbolStats:
    """Per-symbol (spot) or per-product (futures) counts."""

    book_messages: int = 0
    checksums_verified: int = 0
    last_checksum: int | None = None
    sequence_steps_verified: int = 0
    last_seq: int | None = None
    issues: int = 0


@dataclass(slots=True)
class ReplayReport:
    """What a replay verified. ``ok`` is the verdict the exit status follows."""

    file: str
    venue: str
    format: str
    precision: str = "wire text"
    frames: int = 0
    book_messages: int = 0
    snapshots: int = 0
    updates: int = 0
    checksums_verified: int = 0
    checksum_mismatches: int = 0
    sequence_steps_verified: int = 0
    sequence_gaps: int = 0
    cross_checks: int = 0
    crossed_books: int = 0
    skipped_while_resyncing: int = 0
    other_frames: int = 0
    symbols: dict[str, SymbolStats] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)

    def symbol(self, name: str) -> SymbolStats:
        """The stats of one symbol, created on first use."""
        stats = self.symbols.get(name)
        if stats is None:
            stats = self.symbols[name] = SymbolStats()
        return stats

    @property
    def verified(self) -> int:
        """Total checks that passed."""
        return self.checksums_verified + self.sequence_steps_verified + self.cross_checks

    @property
    def ok(self) -> bool:
        """True when nothing failed and something was actually verified."""
        return not self.issues and self.verified > 0

    def add_issue(self, location: str, kind: str, detail: str, symbol: str | None = None) -> None:
        """Record a failure."""
        self.issues.append(Issue(location, kind, detail, symbol))
        if symbol is not None:
            self.symbol(symbol).issues += 1

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON-serialisable document."""
        document = asdict(self)
        document["symbols"] = dict(sorted(document["symbols"].items()))
        document["ok"] = self.ok
        return document


# ------------------------------------------------------------------------ spot replay


@dataclass(frozen=True, slots=True)
class PrecisionChoice:
    """How spot checksum text is produced for v2 symbols (see module docstring)."""

    by_symbol: dict[str, spot.PairPrecision]
    override: spot.PairPrecision | None
    description: str


class SpotReplay:
    """Feeds Kraken spot frames through the adapter and fills a :class:`ReplayReport`."""

    def __init__(self, report: ReplayReport, depth: int | None, precision: PrecisionChoice) -> None:
        self.report = report
        self.depth_override = depth
        # v1 books always checksum their exact strings (fixed decimals on the wire), so
        # v2 instrument precisions (newer, and keyed by v2 names) never apply to them.
        self.v1_books = SpotBookBuilder(default_precision=precision.override)
        self.v2_books = SpotBookBuilder(
            precisions=precision.by_symbol, default_precision=precision.override
        )
        self.trades = TradeIdTracker()
        self.executions = ExecutionsSequenceTracker()
        self.precision = precision
        report.precision = precision.description

    def sent(self, item: Sent) -> None:
        """Learn subscribed depths from a recorded subscribe request."""
        payload = item.payload
        # v1 and v2 requests name pairs differently; each spelling feeds its own builder.
        books = self.v1_books if isinstance(payload, dict) and "event" in payload else self.v2_books
        for symbol, depth in spot.book_subscription_request_depths(payload).items():
            books.subscribe(symbol, self.depth_override or depth)

    def received(self, item: Received) -> None:
        """Parse and apply one received frame."""
        report = self.report
        report.frames += 1
        frame = spot.parse_frame(item.payload)
        if isinstance(frame, spot.BookMessage):
            self._book(item.location, self.v2_books, frame)
        elif isinstance(frame, spot.BookMessageV1):
            self._book(item.location, self.v1_books, frame)
        elif isinstance(frame, (spot.MethodResponse, spot.SubscriptionStatusV1)):
            ack = spot.book_subscription_ack(frame)
            if ack is not None:
                books = self.v2_books if isinstance(frame, spot.MethodResponse) else self.v1_books
                books.subscribe(ack[0], self.depth_override or ack[1])
            report.other_frames += 1
        elif isinstance(frame, spot.TradeMessage):
            for result in self.trades.receive(frame):
                self._sequence(item.location, result, "trade_id")
        elif isinstance(frame, spot.ExecutionsMessage):
            self._sequence(item.location, self.executions.receive(frame), "executions sequence")
        elif isinstance(frame, spot.Level3Message):
            self._level3(item.location, frame)
        else:
            report.other_frames += 1

    def _book(
        self, location: str, books: SpotBookBuilder, frame: spot.BookMessage | spot.BookMessageV1
    ) -> None:
        report = self.report
        report.book_messages += 1
        for event in books.receive(frame):
            stats = report.symbol(event.symbol)
            stats.book_messages += 1
            if isinstance(event, BookChanged):
                if event.is_snapshot:
                    report.snapshots += 1
                else:
                    report.updates += 1
                if event.checksum is not None:
                    report.checksums_verified += 1
                    stats.checksums_verified += 1
                    stats.last_checksum = event.checksum
            elif isinstance(event, ChecksumMismatch):
                if event.is_snapshot:
                    report.snapshots += 1
                else:
                    report.updates += 1
                report.checksum_mismatches += 1
                report.add_issue(
                    location,
                    "checksum_mismatch",
                    f"expected {event.expected}, computed {event.computed}; "
                    "book resyncs at the next snapshot",
                    event.symbol,
                )
            elif isinstance(event, UpdateIgnored):
                report.updates += 1
                if event.reason == "awaiting_resync":
                    report.skipped_while_resyncing += 1
                else:
                    report.add_issue(
                        location,
                        "update_before_snapshot",
                        "update for a symbol with no snapshot yet",
                        event.symbol,
                    )

    def _sequence(self, location: str, result: SequenceResult, what: str) -> None:
        report = self.report
        if isinstance(result, SequenceStep):
            report.sequence_steps_verified += 1
            stats = report.symbol(str(result.key))
            stats.sequence_steps_verified += 1
            stats.last_seq = result.value
        elif isinstance(result, SequenceGap):
            report.sequence_gaps += 1
            report.add_issue(
                location,
                "sequence_gap",
                f"{what}: expected {result.expected}, got {result.received}",
                str(result.key),
            )
        elif isinstance(result, SequenceRepeat):
            report.add_issue(
                location,
                "sequence_repeat",
                f"{what}: {result.received} after {result.last}",
                str(result.key),
            )

    def _level3(self, location: str, frame: spot.Level3Message) -> None:
        report = self.report
        report.book_messages += 1
        if frame.type != "snapshot":
            # Verifying level3 updates needs a per-order book, which this replay lacks.
            report.add_issue(location, "unverified", "level3 updates are not verified")
            return
        for data in frame.data:
            stats = report.symbol(data.symbol)
            stats.book_messages += 1
            report.snapshots += 1
            computed = spot_checksum.level3_checksum(
                ((order.limit_price, order.order_qty) for order in data.asks),
                ((order.limit_price, order.order_qty) for order in data.bids),
                self._formatter(data.symbol),
            )
            if computed == data.checksum:
                report.checksums_verified += 1
                stats.checksums_verified += 1
                stats.last_checksum = computed
            else:
                report.checksum_mismatches += 1
                report.add_issue(
                    location,
                    "checksum_mismatch",
                    f"level3: expected {data.checksum}, computed {computed}",
                    data.symbol,
                )

    def _formatter(self, symbol: str) -> spot_checksum.LevelFormatter:
        precision = self.precision.override or self.precision.by_symbol.get(symbol)
        if precision is None:
            return spot_checksum.LevelFormatter.wire_text()
        return spot_checksum.LevelFormatter.with_precision(
            precision.price_precision, precision.qty_precision
        )


# ------------------------------------------------------------------------ futures replay


class FuturesReplay:
    """Feeds Kraken Futures frames through the adapter and fills a :class:`ReplayReport`."""

    def __init__(self, report: ReplayReport) -> None:
        self.report = report
        self.books = futures.FuturesBookBuilder()
        report.precision = "not applicable (no checksum)"

    def sent(self, item: Sent) -> None:
        """Futures subscriptions carry nothing the book needs."""

    def received(self, item: Received) -> None:
        """Parse and apply one received frame."""
        report = self.report
        report.frames += 1
        frame = fschemas.parse_frame(item.payload)
        if not isinstance(frame, (fschemas.BookSnapshot, fschemas.BookDelta)):
            report.other_frames += 1
            return
        report.book_messages += 1
        stats = report.symbol(frame.product_id)
        stats.book_messages += 1
        if isinstance(frame, fschemas.BookSnapshot):
            report.snapshots += 1
        else:
            report.updates += 1
        event = self.books.receive(frame)
        location = item.location
        if isinstance(event, futures.BookChanged):
            report.cross_checks += 1
            stats.last_seq = event.seq
            if not event.is_snapshot:
                report.sequence_steps_verified += 1
                stats.sequence_steps_verified += 1
        elif isinstance(event, futures.SequenceGap):
            report.sequence_gaps += 1
            report.add_issue(
                location,
                "sequence_gap",
                f"seq: expected {event.expected}, got {event.received}; "
                "book resyncs at the next snapshot",
                event.product_id,
            )
        elif isinstance(event, futures.BookCrossed):
            report.crossed_books += 1
            report.add_issue(
                location,
                "crossed_book",
                f"best bid {event.best_bid} >= best ask {event.best_ask} at seq {event.seq}",
                event.product_id,
            )
        elif event.reason == "awaiting_resync":
            report.skipped_while_resyncing += 1
        else:
            report.add_issue(
                location,
                "unverified_delta",
                f"delta seq {event.seq} ignored ({event.reason})",
                event.product_id,
            )


# ------------------------------------------------------------------------ running


def _default_instruments() -> Path | None:
    override = os.environ.get("TRADEFLEET_EXCHANGE_DATA")
    if override:
        base = Path(override)
    else:
        base = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "exchanges"
    path = (base / INSTRUMENTS_RELATIVE).resolve()
    return path if path.is_file() else None


def _precision_choice(args: argparse.Namespace) -> PrecisionChoice:
    if args.price_precision is not None:
        override = spot.PairPrecision(args.price_precision, args.qty_precision)
        return PrecisionChoice(
            {}, override, f"forced: price {override.price_precision}, qty {override.qty_precision}"
        )
    if args.wire_text:
        return PrecisionChoice({}, None, "wire text")
    path = args.instruments or _default_instruments()
    if path is None:
        return PrecisionChoice({}, None, "wire text (no instrument snapshot found)")
    try:
        table = spot.pair_precisions(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, KrakenError) as exc:
        raise RecordingError(f"cannot read instrument snapshot {path}: {exc}") from exc
    return PrecisionChoice(table, None, f"v2 symbols: instrument precisions from {path}")


def replay(path: Path, args: argparse.Namespace) -> ReplayReport:
    """Replay one recording; raise :class:`RecordingError` if it cannot be read."""
    kind, items = read_recording(path)
    report = ReplayReport(file=str(path), venue=args.venue, format=kind)
    replayer: SpotReplay | FuturesReplay
    if args.venue == "kraken":
        replayer = SpotReplay(report, args.depth, _precision_choice(args))
        adapter_error: type[Exception] = KrakenError
    else:
        replayer = FuturesReplay(report)
        adapter_error = KrakenFuturesError
    # A frame of an unexpected shape is a finding about the recording, not a crash.
    recoverable = (adapter_error, KeyError, TypeError, ValueError, AttributeError)
    for item in items:
        if isinstance(item, Unreadable):
            report.add_issue(item.location, "unreadable", item.reason)
            continue
        try:
            if isinstance(item, Sent):
                replayer.sent(item)
            else:
                replayer.received(item)
        except recoverable as exc:
            report.add_issue(item.location, "malformed_frame", f"{type(exc).__name__}: {exc}")
    return report


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def render_text(report: ReplayReport, max_issues: int = 50) -> str:
    """Human summary of a report."""
    book_counts = f"{_plural(report.snapshots, 'snapshot')}, {_plural(report.updates, 'update')}"
    symbols = _plural(len(report.symbols), "symbol")
    lines = [
        f"{report.venue} replay of {report.file}",
        f"  format            {report.format}",
        f"  frames            {report.frames} received ({report.other_frames} non-book)",
        f"  book messages     {report.book_messages} ({book_counts}) for {symbols}",
    ]
    if report.venue == "kraken":
        total = report.checksums_verified + report.checksum_mismatches
        lines.append(
            f"  checksums         {report.checksums_verified} of {total} verified "
            f"(text: {report.precision})"
        )
    else:
        lines.append(f"  crossed books     {report.crossed_books} in {report.cross_checks} checks")
    lines.append(
        f"  sequence steps    {report.sequence_steps_verified} verified, "
        f"{_plural(report.sequence_gaps, 'gap')}"
    )
    if report.skipped_while_resyncing:
        lines.append(
            f"  skipped           {report.skipped_while_resyncing} updates while "
            "waiting for a resync snapshot"
        )
    for issue in report.issues[:max_issues]:
        symbol = f" {issue.symbol}" if issue.symbol else ""
        lines.append(f"  ! {issue.location}: {issue.kind}{symbol}: {issue.detail}")
    if len(report.issues) > max_issues:
        lines.append(f"  ! ... and {len(report.issues) - max_issues} more issues (see --json)")
    if report.ok:
        lines.append("OK: everything verified")
    elif report.issues:
        lines.append(f"FAILED: {_plural(len(report.issues), 'issue')}")
    else:
        lines.append("FAILED: nothing in this file could be verified")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workers.broker.replay",
        description="Verify a recorded Kraken feed with the adapter's parser and book builder.",
    )
    parser.add_argument("file", type=Path, help="the recording")
    parser.add_argument("--venue", required=True, choices=("kraken", "kraken-futures"))
    parser.add_argument(
        "--depth", type=int, help="book depth (default: from the recording, else 10)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON document")
    parser.add_argument("--price-precision", type=int, help="force price decimals (spot)")
    parser.add_argument("--qty-precision", type=int, help="force quantity decimals (spot)")
    parser.add_argument("--instruments", type=Path, help="v2 instrument snapshot for precisions")
    parser.add_argument("--wire-text", action="store_true", help="ignore instrument precisions")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the replay command; returns the process exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the reason
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    if (args.price_precision is None) != (args.qty_precision is None):
        parser.print_usage(sys.stderr)
        print("error: give --price-precision and --qty-precision together", file=sys.stderr)
        return EXIT_USAGE
    if args.price_precision is not None and (args.price_precision < 0 or args.qty_precision < 0):
        print("error: precisions must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    if args.depth is not None and args.depth < 1:
        print("error: --depth must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = replay(args.file, args)
    except RecordingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK if report.ok else EXIT_FAILED
    try:
        print(json.dumps(report.to_json(), indent=2) if args.json else render_text(report))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (e.g. piped into head); the verdict still stands.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status


if __name__ == "__main__":
    sys.exit(main())
