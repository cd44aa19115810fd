"""Manager → InfrastructureManager check-in. The infra manager then opens a status pipe to us.

Check-in is retried with backoff + jitter; it is repeated whenever no status pipe from the
infra managers has been open for a few seconds (so a restarted infra manager is healed).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import aiohttp
import structlog

from protocol.codec import decode, encode
from protocol.control import ManagerCheckin, ManagerCheckinAccepted

log = structlog.get_logger(__name__)

RECHECK_AFTER_S = 3.0


class InfraLink:
    """Keeps one manager checked in with one infra manager."""

    def __init__(self, infra_url: str, join_token: str, body: Callable[[], ManagerCheckin],
                 streams_open: Callable[[str | None], bool], session: aiohttp.ClientSession
                 ) -> None:
        self.infra_url = infra_url.rstrip("/")
        self._token = join_token
        self._body = body
        self._streams_open = streams_open
        self._session = session
        self.infra_id: str | None = None
        self.last_checkin = 0.0

    async def run(self) -> None:
        delay = 0.1
        silent_since: float | None = None
        while True:
            now = time.monotonic()
            if self._streams_open(self.infra_id):
                silent_since = None
                await asyncio.sleep(1.0)
                continue
            silent_since = silent_since or now
            due = self.last_checkin == 0.0 or (now - silent_since >= RECHECK_AFTER_S
                                                and now - self.last_checkin >= RECHECK_AFTER_S)
            if not due:
                await asyncio.sleep(0.5)
                continue
            if await self._check_in():
                delay = 0.1
                silent_since = None
                await asyncio.sleep(1.0)
            else:
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def _check_in(self) -> bool:
        try:
            async with self._session.post(
                    f"{self.infra_url}/v1/managers/checkin", data=encode(self._body()),
                    headers={"Authorization": f"Bearer {self._token}",
                             "Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=5)) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    log.warning("infra check-in refused", infra=self.infra_url,
                                status=resp.status, body=raw[:200].decode(errors="replace"))
                    return False
                self.infra_id = ManagerCheckinAccepted.model_validate(decode(raw)).infra_id
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.debug("infra check-in failed", infra=self.infra_url, error=repr(exc))
            return False
        self.last_checkin = time.monotonic()
        log.info("checked in with infra manager", infra=self.infra_url, infra_id=self.infra_id)
        return True
