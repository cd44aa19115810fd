"""`tradefleet up` restarts a component that died: back-off while it keeps dying young, and
at once again after it had been running steadily; on the port it had, when that is free."""

from __future__ import annotations

import socket
from pathlib import Path

from tradefleet.cli.up import STABLE_S, Component, restart_delay


def test_a_crash_loop_backs_off_doubling_up_to_thirty_seconds() -> None:
    restarts, delays = 0, []
    for _ in range(8):
        delay, restarts = restart_delay(restarts, ran_for_s=1.0)
        delays.append(delay)
        restarts += 1  # what the launcher counts when it restarts the component
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_component_that_ran_steadily_is_restarted_at_once_again() -> None:
    # Six crashes in a row, then a month of uptime: the next death is not met with 30 s.
    assert restart_delay(6, ran_for_s=30 * 86400.0) == (0.5, 0)
    assert restart_delay(6, ran_for_s=STABLE_S) == (0.5, 0)
    assert restart_delay(6, ran_for_s=STABLE_S - 1) == (30.0, 6)


def component(tmp_path: Path, port: int = 0) -> Component:
    return Component("market-manager", ["true"], tmp_path / "market-manager.url",
                     tmp_path / "market-manager.log", port)


def test_a_restarted_component_asks_for_the_port_it_bound_before(tmp_path: Path) -> None:
    comp = component(tmp_path)
    assert comp.port_to_ask() == 0  # the first start: the OS chooses
    with socket.socket() as probe:  # a port that is free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    comp.url_file.write_text(f"http://127.0.0.1:{port}\n")
    assert comp.check_ready() and comp.url == f"http://127.0.0.1:{port}"
    assert comp.port_to_ask() == port


def test_a_port_taken_meanwhile_is_given_up_for_one_the_os_chooses(tmp_path: Path) -> None:
    comp = component(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        comp.url_file.write_text(f"http://127.0.0.1:{port}")
        assert comp.check_ready()
        assert comp.port_to_ask() == 0
    assert comp.kept_port == 0  # the new port is learned when it is ready again


def test_a_configured_port_is_always_asked_for(tmp_path: Path) -> None:
    comp = component(tmp_path, port=8701)
    comp.url_file.write_text("http://127.0.0.1:8701")
    assert comp.check_ready()
    assert comp.port_to_ask() == 8701 and comp.kept_port == 0
