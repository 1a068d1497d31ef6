"""Dashboard sign-in, session cookies and CSRF, through Starlette's test client against
the real database: what a browser's cookie may and may not do."""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.dashboard.session import SESSION_COOKIE, SIGN_IN_COOKIE, SessionSigner
from gateway.settings import Settings
from storage import AssistantConfig, Direction, NewCall

PUBLIC = "https://gw.example.com"
KEY = "vg_Dashboard-session-key-4f9Qx2LmZr8T"
HOSTILE = '<img src=x onerror="alert(1)">'


@pytest.fixture
def client(mongo_url: str) -> Iterator[TestClient]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url=PUBLIC,
        twilio_auth_token="test-auth-token",  # type: ignore[arg-type]
        gateway_api_key=KEY,  # type: ignore[arg-type]
        mongodb_url=mongo_url,
        mongodb_db="dash_" + uuid.uuid4().hex[:8],
    )
    with TestClient(create_app(settings), base_url=PUBLIC, follow_redirects=False) as c:
        yield c


def _form_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match is not None, html
    return match.group(1)


def _sign_in(client: TestClient, key: str = KEY) -> str:
    """Sign in as a browser would; returns the page's CSRF token."""
    form = client.get("/dashboard/login")
    assert form.status_code == 200
    answer = client.post(
        "/dashboard/login", data={"api_key": key, "csrf_token": _form_token(form.text)}
    )
    assert answer.status_code == 303, answer.text
    page = client.get("/dashboard/calls")
    assert page.status_code == 200
    match = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)


def test_sign_in_sets_a_strict_http_only_secure_cookie(client: TestClient) -> None:
    assert client.get("/dashboard/calls").headers["location"].startswith("/dashboard/login")
    form = client.get("/dashboard/login")
    answer = client.post(
        "/dashboard/login", data={"api_key": KEY, "csrf_token": _form_token(form.text)}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/calls"
    cookie = next(
        h for h in answer.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE + "=")
    )
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "secure", "path=/"} <= attributes
    assert KEY not in cookie  # the cookie names the key, it does not carry it
    page = client.get("/dashboard/calls")
    assert page.status_code == 200 and "Calls" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # The JSON API reads the same session (the dashboard's script uses it).
    assert client.get("/calls").status_code == 200


def test_a_wrong_key_shows_an_error_and_sets_no_session(client: TestClient) -> None:
    form = client.get("/dashboard/login")
    answer = client.post(
        "/dashboard/login",
        data={"api_key": "vg_not-a-key-of-anyone-xxxxxxxx", "csrf_token": _form_token(form.text)},
    )
    assert answer.status_code == 401
    assert "wrong or revoked" in answer.text
    assert not any(h.startswith(SESSION_COOKIE) for h in answer.headers.get_list("set-cookie"))
    assert client.get("/dashboard/calls").status_code == 303


def test_sign_in_without_the_form_token_is_refused(client: TestClient) -> None:
    client.get("/dashboard/login")
    answer = client.post("/dashboard/login", data={"api_key": KEY, "csrf_token": "forged"})
    assert answer.status_code == 403
    client.cookies.delete(SIGN_IN_COOKIE)
    answer = client.post("/dashboard/login", data={"api_key": KEY})
    assert answer.status_code == 403
    assert SESSION_COOKIE not in client.cookies


def test_a_change_without_the_csrf_token_is_refused(client: TestClient) -> None:
    csrf = _sign_in(client)
    body = {"name": "Support", "system_prompt": "Help."}
    refused = client.post("/assistants", json=body)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_refused"
    wrong = client.post("/assistants", json=body, headers={"x-csrf-token": csrf + "x"})
    assert wrong.status_code == 403
    assert client.get("/assistants").json()["items"] == []  # nothing was made
    made = client.post("/assistants", json=body, headers={"x-csrf-token": csrf})
    assert made.status_code == 201, made.text
    # A key in the header needs no CSRF token: no browser sends one by itself.
    client.cookies.clear()
    assert client.post("/assistants", json=body, headers={"x-api-key": KEY}).status_code == 201


def test_forged_altered_and_expired_cookies_are_signed_out(client: TestClient) -> None:
    _sign_in(client)
    good = client.cookies[SESSION_COOKIE]
    version, payload, signature = good.split(".")
    for forged in (
        f"{version}.{payload}.{'A' * len(signature)}",
        f"{version}.{payload[:-2]}xx.{signature}",
        SessionSigner(b"another-gateway's-secret-key-xx").issue("x", now=0, ttl_s=10**10)[0],
        "garbage",
    ):
        client.cookies.set(SESSION_COOKIE, forged, domain="gw.example.com")
        page = client.get("/dashboard/calls")
        assert page.status_code == 303 and "/dashboard/login" in page.headers["location"]
        assert client.get("/calls").status_code == 401
    signer: SessionSigner = client.app.state.sessions  # type: ignore[attr-defined]
    session = signer.read(good, now=0)
    assert session is not None
    expired, _ = signer.issue(session.key_id, now=1000.0, ttl_s=60)
    client.cookies.set(SESSION_COOKIE, expired, domain="gw.example.com")
    assert client.get("/dashboard/calls").status_code == 303


def test_a_revoked_key_ends_its_session(client: TestClient) -> None:
    admin = {"x-api-key": KEY}
    org_id = client.get("/organization", headers=admin).json()["id"]
    accounts = client.app.state.services.database.accounts  # type: ignore[attr-defined]
    assert client.portal is not None
    record, key = client.portal.call(accounts.create_key, org_id)
    _sign_in(client, key)
    assert client.get("/dashboard/assistants").status_code == 200
    revoked = client.post(f"/api-keys/{record.id}/revoke", headers=admin)
    assert revoked.status_code == 200, revoked.text
    assert client.get("/dashboard/assistants").status_code == 303
    assert client.get("/calls").status_code == 401  # the JSON API through the cookie too


def test_sign_out_needs_its_token_and_clears_the_cookie(client: TestClient) -> None:
    csrf = _sign_in(client)
    assert client.post("/dashboard/logout", data={}).status_code == 403
    assert client.get("/dashboard/calls").status_code == 200
    out = client.post("/dashboard/logout", data={"csrf_token": csrf})
    assert out.status_code == 303
    assert client.get("/dashboard/calls").status_code == 303


def test_user_text_is_escaped(client: TestClient) -> None:
    csrf = _sign_in(client)
    made = client.post(
        "/assistants",
        json={"name": HOSTILE, "system_prompt": "<script>alert(1)</script>"},
        headers={"x-csrf-token": csrf},
    )
    assert made.status_code == 201
    aid = made.json()["id"]
    for path in ("/dashboard/assistants", f"/dashboard/assistants/{aid}"):
        html = client.get(path).text
        assert HOSTILE not in html and "<script>alert" not in html
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in html


def test_other_organisations_records_are_not_found(client: TestClient) -> None:
    database = client.app.state.services.database  # type: ignore[attr-defined]
    assert client.portal is not None
    other = client.portal.call(database.accounts.ensure_organization, "globex")
    theirs = client.portal.call(
        functools.partial(
            database.assistants.create,
            other.id,
            AssistantConfig(name="Their agent", system_prompt="Theirs."),
        )
    )
    their_call = client.portal.call(
        functools.partial(
            database.calls.create_call,
            NewCall(
                org_id=other.id, transport="twilio", call_sid="CA-theirs",
                from_number="+15550001234", to_number="+15550005678",
                direction=Direction.INBOUND, assistant_id=theirs.id,
            ),
            started_at=datetime.now(UTC),
        )
    )  # fmt: skip
    _sign_in(client)
    assert client.get(f"/dashboard/calls/{their_call.id}").status_code == 404
    assert client.get(f"/dashboard/assistants/{theirs.id}").status_code == 404
    for path in ("/dashboard/calls", "/dashboard/calls/rows", "/dashboard/assistants"):
        page = client.get(path)
        assert page.status_code == 200
        assert their_call.id not in page.text and "Their agent" not in page.text
    assert client.get(f"/calls/{their_call.id}").status_code == 404
    assert client.get("/dashboard/calls/not-an-id").status_code == 404


def test_bad_filters_show_an_error_on_the_page(client: TestClient) -> None:
    _sign_in(client)
    for query in ("status=bogus", "limit=0", "colour=red", "cursor=not-a-cursor"):
        page = client.get("/dashboard/calls?" + query)
        assert page.status_code == 422, (query, page.text)
        assert "Invalid" in page.text and 'role="alert"' in page.text
    # An HTML datetime-local value has no zone: it is read as UTC, by the API too.
    assert client.get("/dashboard/calls?started_after=2026-01-01T10:00").status_code == 200
    assert client.get("/calls?started_after=2026-01-01T10:00").status_code == 200


def test_forged_values_with_any_characters_are_refused_not_errors(client: TestClient) -> None:
    csrf = _sign_in(client)
    forged_token = (csrf[:-1] + "é").encode("latin-1")  # a header's bytes, read as latin-1
    refused = client.post("/assistants", json={}, headers={"x-csrf-token": forged_token})
    assert refused.status_code == 403
    client.cookies.clear()
    forged_cookie = {"cookie": f"{SESSION_COOKIE}=v1.é.é".encode("latin-1")}
    assert client.get("/dashboard/calls", headers=forged_cookie).status_code == 303
    assert client.get("/calls", headers=forged_cookie).status_code == 401
