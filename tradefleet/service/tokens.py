"""Deployment secrets: generated once into the data dir (mode 0600) unless configured."""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path

import orjson

SECRET_NAMES = ("join_token", "operator_token")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def mask(token: str) -> str:
    """A hint safe to show or log: the last four characters only."""
    return f"…{token[-4:]}" if len(token) >= 8 else "…"


def load_or_create_secrets(data_dir: Path, names: tuple[str, ...] = SECRET_NAMES) -> dict[str, str]:
    """Return the deployment secrets in `data_dir/secrets.json`, generating any that are missing.

    Concurrent starters agree on one value: creation happens under an exclusive file lock and the
    file is replaced atomically with mode 0600.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "secrets.json"
    with open(data_dir / ".secrets.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current: dict[str, str] = orjson.loads(path.read_bytes()) if path.exists() else {}
        missing = [n for n in names if not current.get(n)]
        if missing:
            current.update({n: new_token() for n in missing})
            tmp = path.with_name(f".secrets.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(orjson.dumps(current, option=orjson.OPT_INDENT_2))
            os.replace(tmp, path)
    return current


def customer_tokens(customers: dict[str, list[str]], data_dir: Path) -> dict[str, str]:
    """Map each algo API token to its customer.

    `customers` maps a customer to its configured tokens; a customer with none gets one
    generated into `data_dir/secrets.json` as `api_token.<customer>`.
    """
    generated = [f"api_token.{name}" for name, tokens in customers.items() if not tokens]
    stored = load_or_create_secrets(data_dir, (*SECRET_NAMES, *generated)) if generated else {}
    mapping: dict[str, str] = {}
    for name, tokens in customers.items():
        for token in tokens or [stored[f"api_token.{name}"]]:
            mapping[token] = name
    return mapping
