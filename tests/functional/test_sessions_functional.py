"""MarketManager `POST /v1/sessions`: API tokens, customer isolation, least-loaded placement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fleet import FAST_CONFIG, REPO, Http, wait_for
from tradefleet.service import session_tokens

pytestmark = pytest.mark.timeout(90)

CONFIG = "traders = []\n" + FAST_CONFIG + """
[managers.market]
desired = 2

[accounts.acct-a]
venue = "paper"
[accounts.acct-b]
venue = "paper"

[customers.alice]
accounts = ["acct-a"]
api_tokens = ["alice-token-0123456789abcdef"]
[customers.bob]
accounts = ["acct-b"]
"""


@pytest.fixture
def market_manager(tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(CONFIG)
    log = open(tmp_path / "manager.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "managers", "--kind", "market", "--port",
                             "0", "--data-dir", str(tmp_path), "--config", str(cfg)],
                            stdout=log, stderr=log, cwd=REPO)
    url_file = tmp_path / "run" / "market-manager.url"
    wait_for(lambda: url_file.exists(), 30, "manager to listen")
    secrets = json.loads((tmp_path / "secrets.json").read_text())
    http = Http(url_file.read_text().strip(), secrets["operator_token"])
    wait_for(lambda: [w for w in http.get("/v1/manager")["workers"] if w["state"] == "up"]
             .__len__() == 2, 30, "two market workers up")
    try:
        yield http, secrets
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_sessions_need_an_api_token_and_stay_within_the_customer(market_manager) -> None:  # type: ignore[no-untyped-def]
    http, secrets = market_manager
    status, body = http.call("POST", "/v1/sessions", {}, token="")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = http.call("POST", "/v1/sessions", {}, token=secrets["operator_token"])
    assert status == 401, "the operator token is not an algo API token"

    alice = "alice-token-0123456789abcdef"
    status, body = http.call("POST", "/v1/sessions", {"account": "acct-b"}, token=alice)
    assert status == 403 and body["error"]["field"] == "account"
    status, body = http.call("POST", "/v1/sessions", {"bogus": 1}, token=alice)
    assert status == 400 and body["error"]["code"] == "unknown_field"

    status, session = http.call("POST", "/v1/sessions", {}, token=alice)
    assert status == 200, session
    assert session["account"] == "acct-a" and session["customer"] == "alice"
    assert session["ws_url"].startswith("ws://127.0.0.1:") and session["ws_url"].endswith(
        "/v1/session")
    claims = session_tokens.verify(secrets["join_token"], session["session_token"])
    assert (claims.session_id, claims.customer, claims.account) == (
        session["session_id"], "alice", "acct-a")

    bob = secrets["api_token.bob"]  # generated into the data dir: bob has no configured token
    status, body = http.call("POST", "/v1/sessions", {"session_id": session["session_id"]},
                             token=bob)
    assert status == 403 and body["error"]["field"] == "session_id"
    status, resumed = http.call("POST", "/v1/sessions", {"session_id": session["session_id"]},
                                token=alice)
    assert status == 200 and resumed["session_id"] == session["session_id"]
    assert resumed["resumed"] is True
    # Each grant of a session is later than the one before, even within a millisecond: the
    # Broker sends the session's events to the Market of its latest grant.
    grants = [session_tokens.verify(secrets["join_token"], s["session_token"]).issued_ms
              for s in (session, resumed, http.call("POST", "/v1/sessions", {
                  "session_id": session["session_id"]}, token=alice)[1])]
    assert grants == sorted(set(grants)), grants


def test_new_sessions_spread_over_the_least_loaded_workers(market_manager) -> None:  # type: ignore[no-untyped-def]
    http, _ = market_manager
    alice = "alice-token-0123456789abcdef"
    placed = [http.call("POST", "/v1/sessions", {}, token=alice)[1]["worker_id"]
              for _ in range(4)]
    assert len(set(placed)) == 2
    assert placed.count(placed[0]) == 2


def test_a_trader_tag_is_validated_signed_and_bound_to_the_session(market_manager) -> None:  # type: ignore[no-untyped-def]
    http, secrets = market_manager
    alice = "alice-token-0123456789abcdef"
    for bad in ("", "has space", "x" * 65, 7):
        status, body = http.call("POST", "/v1/sessions", {"trader_tag": bad}, token=alice)
        assert status == 400, body
        assert (body["error"]["code"], body["error"]["field"]) == ("invalid_field", "trader_tag")
    status, tagged = http.call("POST", "/v1/sessions", {"trader_tag": "desk.scalper-1"},
                               token=alice)
    assert status == 200 and tagged["trader_tag"] == "desk.scalper-1", tagged
    claims = session_tokens.verify(secrets["join_token"], tagged["session_token"])
    assert claims.trader_tag == "desk.scalper-1"
    # Resuming keeps the tag: the same one is needed, no other, and not none.
    resume = {"session_id": tagged["session_id"], "trader_tag": "desk.scalper-1"}
    status, again = http.call("POST", "/v1/sessions", resume, token=alice)
    assert status == 200 and again["session_id"] == tagged["session_id"]
    assert session_tokens.verify(secrets["join_token"], again["session_token"]).trader_tag \
        == "desk.scalper-1"
    for other in ({"session_id": tagged["session_id"]},
                  {"session_id": tagged["session_id"], "trader_tag": "another"}):
        status, body = http.call("POST", "/v1/sessions", other, token=alice)
        assert status == 403 and body["error"]["field"] == "trader_tag", body
    status, plain = http.call("POST", "/v1/sessions", {}, token=alice)
    assert status == 200 and "trader_tag" not in plain
    assert session_tokens.verify(secrets["join_token"], plain["session_token"]).trader_tag \
        is None
    status, body = http.call("POST", "/v1/sessions",
                             {"session_id": plain["session_id"], "trader_tag": "desk"},
                             token=alice)
    assert status == 403 and body["error"]["field"] == "trader_tag"
