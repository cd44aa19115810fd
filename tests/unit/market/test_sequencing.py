"""Order-event sequencing: in order, each once, gaps filled by replay — whatever the interleaving."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.market.sequencing import SessionSequence


def test_contiguous_events_are_delivered_at_once() -> None:
    seq: SessionSequence[str] = SessionSequence()
    assert seq.receive(1, "e1").deliver == ["e1"]
    assert seq.receive(2, "e2").deliver == ["e2"]
    assert seq.last_delivered == 2


def test_duplicates_are_dropped() -> None:
    seq: SessionSequence[str] = SessionSequence()
    seq.receive(1, "e1")
    outcome = seq.receive(1, "e1")
    assert outcome.deliver == [] and outcome.duplicates == 1


def test_gap_holds_later_events_and_asks_for_a_replay_once() -> None:
    seq: SessionSequence[str] = SessionSequence()
    seq.receive(1, "e1")
    first = seq.receive(3, "e3")
    assert first.deliver == [] and first.replay_after == 1
    seq.request_replay()
    second = seq.receive(4, "e4")
    assert second.replay_after is None  # one request in flight is enough
    answer = seq.replayed([(2, "e2"), (3, "e3")], last_seq=4)
    assert answer.deliver == ["e2", "e3", "e4"]
    assert answer.duplicates == 1 and answer.replay_after is None
    assert seq.last_delivered == 4


def test_restart_moves_the_cursor_to_the_clients_word() -> None:
    seq: SessionSequence[str] = SessionSequence()
    for n in range(1, 6):
        seq.receive(n, f"e{n}")
    seq.restart(3)  # the client only processed 3: 4 and 5 were lost with the old socket
    seq.request_replay()
    answer = seq.replayed([(4, "e4"), (5, "e5")], last_seq=5)
    assert answer.deliver == ["e4", "e5"]


def test_a_stale_answer_after_restart_does_not_skip_anything() -> None:
    seq: SessionSequence[str] = SessionSequence()
    seq.restart(8)
    seq.request_replay()  # on the old connection: after 8
    seq.restart(5)  # the client reconnected having processed only 5
    seq.request_replay()  # after 5
    old = seq.replayed([(9, "e9")], last_seq=9)
    assert old.deliver == [] and old.skipped == 0 and old.replay_after is None
    new = seq.replayed([(6, "e6"), (7, "e7"), (8, "e8"), (9, "e9")], last_seq=9)
    assert new.deliver == ["e6", "e7", "e8", "e9"] and new.skipped == 0


def test_chunked_replay_asks_for_the_rest() -> None:
    seq: SessionSequence[str] = SessionSequence()
    seq.request_replay()
    part = seq.replayed([(1, "e1"), (2, "e2")], last_seq=5)
    assert part.deliver == ["e1", "e2"] and part.replay_after == 2
    seq.request_replay()
    rest = seq.replayed([(3, "e3"), (4, "e4"), (5, "e5")], last_seq=5)
    assert rest.deliver == ["e3", "e4", "e5"] and rest.replay_after is None


def test_a_gap_the_journal_cannot_fill_is_skipped_not_asked_forever() -> None:
    seq: SessionSequence[str] = SessionSequence()
    seq.receive(1, "e1")
    assert seq.receive(3, "e3").replay_after == 1
    seq.request_replay()
    outcome = seq.replayed([], last_seq=3)
    assert outcome.skipped == 1 and outcome.deliver == ["e3"]


def test_link_loss_forgets_requests_in_flight() -> None:
    seq: SessionSequence[str] = SessionSequence()
    seq.receive(1, "e1")
    seq.receive(3, "e3")
    seq.request_replay()
    seq.link_lost()
    assert seq.outstanding == 0
    assert seq.receive(4, "e4").replay_after == 1


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=40),
    data=st.data(),
)
def test_any_interleaving_delivers_each_event_once_in_order(n: int, data: st.DataObject) -> None:
    """Live events arrive shuffled, some twice, some never; replays are answered from the
    journal (everything after the requested seq). The client sees exactly 1..n in order."""
    journal = {s: f"e{s}" for s in range(1, n + 1)}
    live = data.draw(st.lists(st.integers(min_value=1, max_value=n), max_size=3 * n))
    seq: SessionSequence[str] = SessionSequence()
    delivered: list[str] = []
    requests: list[int] = []

    def consume(outcome: object) -> None:
        delivered.extend(outcome.deliver)  # type: ignore[attr-defined]
        if outcome.replay_after is not None:  # type: ignore[attr-defined]
            requests.append(seq.request_replay())

    requests.append(seq.request_replay())  # what the Market does on attach
    for s in live:
        consume(seq.receive(s, journal[s]))
        if len(requests) > 0 and data.draw(st.booleans()):
            after = requests.pop(0)
            consume(seq.replayed([(k, journal[k]) for k in range(after + 1, n + 1)], n))
    while requests:
        after = requests.pop(0)
        consume(seq.replayed([(k, journal[k]) for k in range(after + 1, n + 1)], n))
    assert delivered == [journal[s] for s in range(1, n + 1)]
