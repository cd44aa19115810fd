"""MarketManager: hand algo sessions to the least-loaded Market worker.

`POST /v1/sessions` with an algo API token answers where to connect and with what credentials.
Resuming (`{"session_id": ...}`) may land on another Market worker; the Broker's journal makes
the resume lossless wherever it lands.
"""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import Field

from managers.manager import Manager
from managers.supervision import WorkerRecord
from protocol.control import Frozen, WorkerState

SESSION_TTL_S = 24 * 3600.0


class SessionRequest(Frozen):
    account: str | None = Field(None, min_length=1, max_length=64,
                                description="Account to trade; default: the customer's first.")
    session_id: str | None = Field(None, min_length=1, max_length=128,
                                   description="An existing session to resume.")


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

    def place(self, customer: str, allowed: list[str], request: SessionRequest,
              mint: Any) -> dict[str, Any]:
        account = request.account or allowed[0]
        if account not in allowed:
            raise SessionRefused(403, "forbidden", f"this token may not trade account "
                                                   f"'{account}'", "account")
        if request.session_id is not None:
            if session_customer(request.session_id) != customer:
                raise SessionRefused(403, "forbidden", "that session belongs to another "
                                                       "customer", "session_id")
            session_id = request.session_id
        else:
            session_id = new_session_id(customer)
        worker = self.choose()
        token, expires_at = mint(session_id, customer, account, SESSION_TTL_S)
        base = worker.url or ""  # candidates() only yields workers with a URL
        ws_url = base.replace("http://", "ws://", 1).replace("https://", "wss://", 1) \
            + "/v1/session"
        return {"session_id": session_id, "session_token": token, "ws_url": ws_url,
                "account": account, "customer": customer, "expires_at": expires_at,
                "worker_id": worker.id, "resumed": request.session_id is not None}
