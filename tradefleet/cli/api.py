"""A small synchronous client of the InfrastructureManager's operator API, for the CLI."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class CliError(Exception):
    """A failure to report to the operator as one line, with exit code `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def find_infra_url(explicit: str | None, data_dir: Path) -> str:
    if explicit:
        return explicit.rstrip("/")
    if env := os.environ.get("TRADEFLEET_INFRA_URL"):
        return env.rstrip("/")
    path = data_dir / "run" / "infra.url"
    if path.exists():
        return path.read_text().strip().rstrip("/")
    raise CliError(f"no running fleet found ({path} is missing); start one with `tradefleet up` "
                   "or pass --infra-url", 2)


def find_token(explicit: str | None, data_dir: Path) -> str:
    if explicit:
        return explicit
    if env := os.environ.get("TRADEFLEET_OPERATOR_TOKEN"):
        return env
    path = data_dir / "secrets.json"
    if path.exists():
        token = json.loads(path.read_text()).get("operator_token")
        if token:
            return str(token)
    raise CliError(f"no operator token: pass --token, set TRADEFLEET_OPERATOR_TOKEN, or run "
                   f"from the fleet's data dir ({path} is missing)", 2)


class OperatorApi:
    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        self.base_url = base_url
        self._token = token
        self._timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)["error"]
                message = f"{err['code']}: {err['message']}"
            except (ValueError, KeyError, TypeError):
                message = raw[:200].decode(errors="replace")
            raise CliError(f"{method} {path} failed ({exc.code}) — {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CliError(f"cannot reach the infrastructure manager at {self.base_url}: "
                           f"{getattr(exc, 'reason', exc)}", 3) from None
