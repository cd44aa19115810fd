"""`tradefleet up`: start one location — an InfrastructureManager and the three managers — and
keep them running until Ctrl-C, then stop everything cleanly.

Each component is its own process in its own session, so the terminal's Ctrl-C reaches only this
launcher, which then stops the managers (they stop their workers) and the infra manager in order.
A manager that dies is restarted; it re-adopts its running workers.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from tradefleet.cli.api import CliError
from tradefleet.config import FleetConfig
from tradefleet.service.tokens import customer_tokens, load_or_create_secrets, mask

KINDS = ("broker", "market", "trader")
READY_TIMEOUT_S = 30.0
STABLE_S = 60.0
"""A component that ran this long before it died is restarted at once again (0.5 s), not
after the back-off its earlier crashes built up."""


def restart_delay(restarts: int, ran_for_s: float) -> tuple[float, int]:
    """(seconds to wait, restarts so far) for a component that died after `ran_for_s` s,
    having been restarted `restarts` times: doubling from 0.5 s up to 30 s while it keeps
    dying young, back to 0.5 s once it had run for `STABLE_S`."""
    if ran_for_s >= STABLE_S:
        restarts = 0
    return min(30.0, 0.5 * 2 ** restarts), restarts


def port_free(host: str, port: int) -> bool:
    """Whether a listener could bind `host:port` now (as the components bind: address reuse
    on, so a port whose old connections linger in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Component:
    """One process `up` runs and restarts. `argv` is without `--port`: the component is
    started with `port`, or, when that is 0 (the OS chooses), with the port it bound the
    first time. So a component restarted after a crash comes back at the same URL — what
    algos, workers and operators were given stays valid — unless something else took that
    port meanwhile; then the OS chooses again (and the new URL is announced)."""

    name: str
    argv: list[str]
    url_file: Path
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    ready: bool = False
    kept_port: int = 0
    restarts: int = 0
    next_restart: float = 0.0
    started_at: float = 0.0
    _log: IO[bytes] | None = field(default=None, repr=False)

    def port_to_ask(self) -> int:
        if self.port or not self.kept_port:
            return self.port
        host = urlsplit(self.url).hostname or "127.0.0.1"
        if port_free(host, self.kept_port):
            return self.kept_port
        self.kept_port = 0
        return 0

    def start(self) -> None:
        self.url_file.unlink(missing_ok=True)
        self.ready = False
        argv = [*self.argv, "--port", str(self.port_to_ask())]
        self.started_at = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the child's log, closed by close_log()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def check_ready(self) -> bool:
        """True once the component announced its URL (it writes `url_file` when it serves)."""
        if not self.ready and self.url_file.exists():
            self.url = self.url_file.read_text().strip()
            self.ready = True
            if not self.port:
                self.kept_port = urlsplit(self.url).port or 0
        return self.ready

    def wait_ready(self, deadline: float) -> str:
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise CliError(f"{self.name} exited with code {self.proc.returncode} during "
                               f"start-up; see {self.log_path}")
            if self.check_ready():
                return self.url
            time.sleep(0.05)
        raise CliError(f"{self.name} did not come up within {READY_TIMEOUT_S:.0f}s; "
                       f"see {self.log_path}")

    def stop(self, grace_s: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=grace_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()


class Launcher:
    def __init__(self, config: FleetConfig, config_path: Path | None, data_dir: Path,
                 port_base: int, out: IO[str] = sys.stdout) -> None:
        self.config = config
        self.config_path = config_path.resolve() if config_path else None
        self.data_dir = data_dir.resolve()
        self.port_base = port_base
        self.out = out
        self.components: list[Component] = []
        self._stopping = False

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _port(self, offset: int) -> int:
        return 0 if self.port_base == 0 else self.port_base + offset

    def _common(self) -> list[str]:
        argv = ["--data-dir", str(self.data_dir)]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        return argv

    def run(self) -> int:
        run_dir = self.data_dir / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / "up.lock", "a+")  # noqa: SIM115 - held while the fleet runs
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CliError(f"a fleet is already running from {self.data_dir}; stop it first or "
                           "use another --data-dir", 2) from None
        secrets_ = load_or_create_secrets(self.data_dir)
        api_tokens = customer_tokens({name: [t.get_secret_value() for t in c.api_tokens]
                                      for name, c in self.config.customers.items()},
                                     self.data_dir)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        try:
            self._start_all()
            token = (self.config.security.operator_token.get_secret_value()
                     if self.config.security.operator_token else secrets_["operator_token"])
            self._say(f"tradefleet is up — location '{self.config.location}'")
            for comp in self.components:
                self._say(f"  {comp.name:<16} {comp.url}")
            infra = [c for c in self.components if c.name == "infra-manager"]
            if infra:
                self._say(f"  dashboard        {infra[0].url}/  (operator token "
                          f"{mask(token)} in {self.data_dir / 'secrets.json'})")
            for api_token, customer in api_tokens.items():
                self._say(f"  customer {customer:<8} API token {mask(api_token)}")
            self._say("  try: tradefleet status    — Ctrl-C stops everything")
            self._watch()
        finally:
            self._stop_all()
            (run_dir / "infra.url").unlink(missing_ok=True)
            lock.close()
        self._say("tradefleet stopped; nothing left running")
        return 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _start_all(self) -> None:
        py = sys.executable
        logs = self.data_dir / "logs"
        run = self.data_dir / "run"
        infra_urls = list(self.config.infra_urls)
        if self.config.run_infra:
            infra = Component("infra-manager", [py, "-m", "infra_manager", "--host", "127.0.0.1",
                                                *self._common()],
                              run / "infra.url", logs / "infra-manager.log", self._port(0))
            self.components.append(infra)
            infra.start()
            infra_urls.insert(0, infra.wait_ready(time.monotonic() + READY_TIMEOUT_S))
        if any(a.venue == "paper" for a in self.config.accounts.values()):
            # The built-in exchange is a venue, not a worker: it outlives Broker workers, so a
            # replaced Broker reconciles against the same exchange and ledger.
            paper = Component("paper-exchange", [py, "-m", "workers.broker.adapters.paper.server",
                                                 "--host", "127.0.0.1", *self._common()],
                              run / "paper.url", logs / "paper-exchange.log", self._port(4))
            self.components.append(paper)
            paper.start()
            paper.wait_ready(time.monotonic() + READY_TIMEOUT_S)
        for offset, kind in enumerate(KINDS, start=1):
            argv = [py, "-m", "managers", "--kind", kind, *self._common()]
            for url in infra_urls:
                argv += ["--infra-url", url]
            comp = Component(f"{kind}-manager", argv, run / f"{kind}-manager.url",
                             logs / f"{kind}-manager.log", self._port(offset))
            self.components.append(comp)
            comp.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        for comp in self.components:
            comp.wait_ready(deadline)

    def _watch(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            for comp in self.components:
                if self._stopping or comp.proc is None:
                    continue
                if comp.proc.poll() is None:
                    was_at = comp.url
                    if not comp.ready and comp.check_ready():
                        self._say(f"{comp.name} is back at {comp.url}" if comp.url == was_at
                                  else f"{comp.name} is back at a new URL {comp.url} (its "
                                       f"port {urlsplit(was_at).port} was taken)")
                    continue
                if comp.next_restart == 0.0:
                    delay, comp.restarts = restart_delay(comp.restarts, now - comp.started_at)
                    comp.next_restart = now + delay
                    self._say(f"{comp.name} exited with code {comp.proc.returncode}; "
                              f"restarting in {delay:.1f}s")
                elif now >= comp.next_restart:
                    comp.restarts += 1
                    comp.next_restart = 0.0
                    comp.close_log()
                    comp.start()
            time.sleep(0.1)

    def _stop_all(self) -> None:
        grace = max(10.0, self.config.timeouts.stop_grace_s * 4)
        managers = [c for c in self.components if c.name.endswith("-manager")
                    and c.name != "infra-manager"]
        for comp in managers:  # in parallel: each stops its own workers
            if comp.proc is not None and comp.proc.poll() is None:
                try:
                    os.killpg(comp.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for comp in managers:
            comp.stop(grace)
        for comp in self.components:
            comp.stop(grace)
            comp.close_log()
