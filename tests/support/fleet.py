"""Run real tradefleet processes for functional and end-to-end tests.

Everything binds 127.0.0.1 with OS-chosen ports (`--port-base 0` / `--port 0`); waits poll a
condition against a deadline and fail with the last observed state, never a bare sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]

FAST_CONFIG = """
log_level = "INFO"
[timeouts]
heartbeat_interval_s = 0.3
checkin_deadline_s = 20
spawn_ready_timeout_s = 20
pipe_grace_s = 2.0
orphan_pause_s = 5
orphan_exit_s = 60
silence_timeout_s = 2.0
stop_grace_s = 2.0
drain_timeout_s = 10
restart_backoff_initial_s = 0.2
restart_backoff_max_s = 2.0
"""


def wait_for(probe: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.05) -> T:
    """Call `probe` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


@dataclass
class Http:
    base: str
    token: str | None = None

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        headers = {"Content-Type": "application/json"}
        tok = token if token is not None else self.token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read()
            try:
                return exc.code, json.loads(text)
            except ValueError:
                return exc.code, text.decode(errors="replace")

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body


def workers_of(fleet: dict[str, Any], kind: str | None = None) -> list[dict[str, Any]]:
    return [w for loc in fleet["locations"] for m in loc["managers"] for w in m["workers"]
            if kind is None or w["kind"] == kind]


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@dataclass
class RunningFleet:
    """`tradefleet up` as a user starts it, in a temporary data dir."""

    data_dir: Path
    proc: subprocess.Popen[bytes]
    infra: Http = field(init=False)

    def __post_init__(self) -> None:
        url_file = self.data_dir / "run" / "infra.url"
        wait_for(lambda: url_file.exists() or self._check_alive(), 30, "infra.url")
        token = json.loads((self.data_dir / "secrets.json").read_text())["operator_token"]
        self.infra = Http(url_file.read_text().strip(), token)
        self.manager_url_files = {k: self.data_dir / "run" / f"{k}-manager.url"
                                  for k in ("broker", "market", "trader")}
        wait_for(lambda: all(p.exists() for p in self.manager_url_files.values()), 30,
                 "manager url files")

    def _check_alive(self) -> bool:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"tradefleet up exited with {code}: {self.output()}")
        return False

    def output(self) -> str:
        path = self.data_dir / "up.out"
        return path.read_text() if path.exists() else ""

    def secrets(self) -> dict[str, str]:
        """The deployment's generated secrets (`secrets.json`: tokens by name)."""
        return json.loads((self.data_dir / "secrets.json").read_text())  # type: ignore[no-any-return]

    def fleet(self) -> dict[str, Any]:
        return self.infra.get("/v1/fleet")  # type: ignore[no-any-return]

    def manager(self, kind: str) -> Http:
        return Http(self.manager_url_files[kind].read_text().strip(), self.infra.token)

    def manager_pid(self, kind: str) -> int:
        return int(self.manager(kind).get("/health").get("pid") or 0) or self._pid_from_ps(kind)

    def _pid_from_ps(self, kind: str) -> int:
        out = subprocess.run(["pgrep", "-f", f"-m managers --kind {kind}.*{self.data_dir}"],
                             capture_output=True, text=True, check=False).stdout.split()
        return int(out[0])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tradefleet.cli", *args, "--data-dir",
                               str(self.data_dir)], capture_output=True, text=True, timeout=30,
                              cwd=REPO, check=False)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
                raise
        return self.proc.returncode


def start_fleet(tmp: Path, config: str = FAST_CONFIG) -> RunningFleet:
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "fleet.toml"
    cfg.write_text(config)
    with open(tmp / "up.out", "wb") as out:  # the child keeps its own copy
        proc = subprocess.Popen([sys.executable, "-m", "tradefleet.cli", "up", "--port-base", "0",
                                 "--data-dir", str(tmp), "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=REPO, start_new_session=True)
    return RunningFleet(tmp, proc)


def processes_under(data_dir: Path) -> list[str]:
    """Command lines of tradefleet processes that mention `data_dir` (what would be leaked)."""
    out = subprocess.run(["pgrep", "-af", str(data_dir)], capture_output=True, text=True,
                         check=False).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]
