"""The core routes every integrator uses: /healthz, /api/verdicts, the token and cross-site checks."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from inspectd.daemon.journal import JOURNAL_FILE, Journal
from inspectd.web.app import create_app
from tests.web.conftest import make_context

TOKEN = "s3cret-token-for-tests-0123"


@pytest.fixture
def journaled_state(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    journal = Journal(state / JOURNAL_FILE)
    for index, verdict in enumerate(("PASS", "FAIL", "PASS")):
        journal.commit({"station": "s1", "verdict": verdict, "part_id": f"p{index}"}, None)
    journal.close()
    return state


def test_verdicts_are_the_journal_messages_after_since(journaled_state):
    client = TestClient(create_app(make_context(journaled_state)))
    everything = client.get("/api/verdicts").json()
    assert [m["seq"] for m in everything] == [1, 2, 3]
    assert [m["verdict"] for m in everything] == ["PASS", "FAIL", "PASS"]
    assert all(m["epoch"] == everything[0]["epoch"] for m in everything)
    assert [m["seq"] for m in client.get("/api/verdicts?since=1&limit=1").json()] == [2]


@pytest.mark.parametrize("query", ["since=x", "limit=0", "limit=10001", "since=-1"])
def test_bad_query_is_400_with_a_reason(journaled_state, query):
    answer = TestClient(create_app(make_context(journaled_state))).get(f"/api/verdicts?{query}")
    assert answer.status_code == 400
    assert "must be" in answer.json()["error"]


def test_no_journal_yet_is_503_saying_so(tmp_path):
    answer = TestClient(create_app(make_context(tmp_path / "empty"))).get("/api/verdicts")
    assert answer.status_code == 503
    assert "no journal" in answer.json()["error"]


def test_with_a_token_every_request_but_healthz_needs_it(journaled_state):
    client = TestClient(create_app(make_context(journaled_state, token=TOKEN)))
    assert client.get("/healthz").json()["status"] == "ok"
    refused = client.get("/api/verdicts")
    assert refused.status_code == 401 and "token" in refused.json()["error"]
    assert client.get("/api/verdicts", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert client.get("/api/verdicts", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/api/verdicts", headers={"X-Inspectd-Token": TOKEN}).status_code == 200
    page = client.get("/live", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/login"


def test_login_sets_an_httponly_strict_cookie_that_is_not_the_token(journaled_state):
    client = TestClient(create_app(make_context(journaled_state, token=TOKEN)))
    failed = client.post("/login", data={"token": "wrong"}, follow_redirects=False)
    assert failed.headers["location"] == "/login?failed=1"
    answer = client.post("/login", data={"token": TOKEN}, follow_redirects=False)
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    assert client.get("/api/verdicts").status_code == 200  # the cookie now carries the session


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Referer": "http://evil.example/x"},
                                     {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}])
def test_state_changing_requests_from_another_site_are_refused(journaled_state, headers):
    client = TestClient(create_app(make_context(journaled_state, token=TOKEN)))
    answer = client.post("/login", data={"token": TOKEN}, headers=headers, follow_redirects=False)
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers


def test_same_origin_and_non_browser_posts_pass_the_cross_site_check(journaled_state):
    client = TestClient(create_app(make_context(journaled_state, token=TOKEN)))
    own = client.post("/login", data={"token": TOKEN}, headers={"Origin": "http://testserver"},
                      follow_redirects=False)
    assert own.status_code == 303
    assert client.post("/logout", follow_redirects=False).status_code == 303
