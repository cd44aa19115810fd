"""Operator commands, forwarded to the manager that owns the target with the operator token."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from infra_manager.fleet_state import ManagerLink
from protocol.control import DesiredRequest, SpawnRequest

__all__ = ["CommandForwarder", "DesiredRequest", "ManagerUnavailable", "Relayed",
           "SpawnRequest"]


class ManagerUnavailable(Exception):
    """The manager could not be reached or did not answer in time; retry later."""


@dataclass(frozen=True)
class Relayed:
    """A manager's answer, passed back to the operator as is."""

    status: int
    body: bytes
    content_type: str


class CommandForwarder:
    def __init__(self, session: aiohttp.ClientSession, operator_token: str,
                 timeout_s: float) -> None:
        self._session = session
        self._operator_token = operator_token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(self, link: ManagerLink, method: str, path: str,
                   body: dict[str, Any] | None = None) -> Relayed:
        """Send one command to `link`'s manager. Raises `ManagerUnavailable` if unreachable."""
        url = link.url.rstrip("/") + path
        headers = {"Authorization": f"Bearer {self._operator_token}"}
        try:
            async with self._session.request(method, url, json=body, headers=headers,
                                             timeout=self._timeout) as response:
                payload = await response.read()
                return Relayed(response.status, payload,
                               response.content_type or "application/octet-stream")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            detail = "timed out" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            raise ManagerUnavailable(
                f"manager {link.manager_id} at {link.url} is unreachable: {detail}") from exc
