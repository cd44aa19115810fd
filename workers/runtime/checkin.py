"""Worker check-in: `POST {manager}/v1/workers/checkin`, retried with backoff and jitter."""

from __future__ import annotations

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from protocol.codec import decode, encode
from protocol.control import WorkerCheckin, WorkerCheckinAccepted


class CheckinRefused(RuntimeError):
    """The manager refused this worker (bad token, unknown id): fatal, the worker must exit."""


class CheckinUnavailable(RuntimeError):
    """The manager could not be reached or answered 5xx: retry."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, CheckinUnavailable)


async def _attempt(session: aiohttp.ClientSession, url: str, body: WorkerCheckin
                   ) -> WorkerCheckinAccepted:
    try:
        async with session.post(url, data=encode(body),
                                headers={"Content-Type": "application/json"}) as resp:
            raw = await resp.read()
            if resp.status >= 500:
                raise CheckinUnavailable(f"manager answered {resp.status}")
            if resp.status != 200:
                raise CheckinRefused(f"manager refused check-in ({resp.status}): {raw[:200]!r}")
            return WorkerCheckinAccepted.model_validate(decode(raw))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise CheckinUnavailable(f"manager unreachable: {exc}") from exc


async def check_in(manager_url: str, body: WorkerCheckin, deadline_s: float
                   ) -> WorkerCheckinAccepted:
    """Check in until accepted, giving up after `deadline_s` (raises the last error).

    Raises `CheckinRefused` at once on a 4xx: retrying a refused token cannot help.
    """
    url = manager_url.rstrip("/") + "/v1/workers/checkin"
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retryable),
            wait=wait_exponential_jitter(initial=0.05, max=2.0),
            stop=stop_after_delay(deadline_s),
            reraise=True,
        ):
            with attempt:
                return await _attempt(session, url, body)
    raise CheckinUnavailable("check-in deadline passed")  # pragma: no cover
