"""MarketManager: hand algo sessions to the least-loaded Market worker.

`POST /v1/sessions` with an algo API token answers where to connect and with what credentials.
Resuming (`{"session_id": ...}`) may land on another Market worker; the Broker's journal makes
the resume lossless wherever it lands.

`{"trader_tag": "..."}` (1-64 of `[A-Za-z0-9._-]`) tags the session: the account's per-tag
risk limits (`accounts.<name>.risk.trader_tags`) then apply to its orders and signals. The tag
is signed into the session token and the session id is derived from it, so it holds for the
session's whole life: resuming needs the same tag (or none for an untagged session), else
`403 forbidden` naming `trader_tag`.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from pydantic import Field

from managers.manager import Manager
from managers.supervision import WorkerRecord
from protocol.control import Frozen, WorkerState
from tradefleet.service import session_tokens

SESSION_TTL_S = 24 * 3600.0


class SessionRequest(Frozen):
    account: str | None = Field(None, min_length=1, max_length=64,
                                description="Account to trade; default: the customer's first.")
    session_id: str | None = Field(None, min_length=1, max_length=128,
                                   description="An existing session to resume.")
    trader_tag: str | None = Field(None, pattern=rf"^{session_tokens.TRADER_TAG.pattern}$",
                                   description="Tag of the trader; the account's limits for "
                                               "this tag apply to the session's orders.")


class SessionRefused(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.field = status, code, field


def new_session_id(customer: str) -> str:
    # The customer is part of the id so a resume can be checked without shared state.
    return f"{customer}.{secrets.token_hex(10)}"


def session_customer(session_id: str) -> str:
    return session_id.rsplit(".", 1)[0]


class SessionPlacer:
    """Chooses the Market worker for each new or resumed session."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self._recent: dict[str, int] = {}  # sessions handed out since the worker's last report
        self._last_grant = 0.0

    def note_status(self, worker_id: str) -> None:
        self._recent.pop(worker_id, None)

    def candidates(self) -> list[WorkerRecord]:
        return [r for r in self.manager.sup.records.values()
                if r.state is WorkerState.UP and r.pipe_up and r.load.accepting
                and not r.stopping and r.url]

    def choose(self) -> WorkerRecord:
        candidates = self.candidates()
        if not candidates:
            raise SessionRefused(503, "unavailable", "no Market worker is taking sessions now; "
                                                     "retry shortly")
        best = min(candidates, key=lambda r: (r.load.sessions + self._recent.get(r.id, 0),
                                              r.epoch))
        self._recent[best.id] = self._recent.get(best.id, 0) + 1
        return best

    def place(self, customer: str, allowed: list[str], request: SessionRequest
              ) -> dict[str, Any]:
        account = request.account or allowed[0]
        if account not in allowed:
            raise SessionRefused(403, "forbidden", f"this token may not trade account "
                                                   f"'{account}'", "account")
        tag, secret = request.trader_tag, self.manager.join_token
        if request.session_id is not None:
            if session_customer(request.session_id) != customer:
                raise SessionRefused(403, "forbidden", "that session belongs to another "
                                                       "customer", "session_id")
            if not session_tokens.session_tag_matches(secret, request.session_id, tag):
                raise SessionRefused(403, "forbidden", (
                    f"that session was not created with trader_tag {tag!r}; resume it with "
                    f"the tag it was created with (none if it had none)" if tag is not None
                    else "that session was created with a trader_tag; resume it with the "
                    "same trader_tag"), "trader_tag")
            session_id = request.session_id
        elif tag is not None:
            session_id = session_tokens.tagged_session_id(secret, customer, tag)
        else:
            session_id = new_session_id(customer)
        worker = self.choose()
        # Grants only grow, to the millisecond, even if the clock steps back: the Broker sends
        # a session's events to the Market of its latest grant.
        self._last_grant = max(time.time(), self._last_grant + 0.001)
        token, expires_at = session_tokens.mint(secret, session_id, customer, account,
                                                SESSION_TTL_S, trader_tag=tag,
                                                now=self._last_grant)
        base = worker.url or ""  # candidates() only yields workers with a URL
        ws_url = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1) \
            + "/v1/session"
        return {"session_id": session_id, "session_token": token, "ws_url": ws_url,
                "account": account, "customer": customer, "expires_at": expires_at,
                "worker_id": worker.id, "resumed": request.session_id is not None,
                **({"trader_tag": tag} if tag is not None else {})}
