"""Campaign, contact upload, do-not-call and organisation-cap routes through Starlette's test
client, against the real database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings

PUBLIC = "https://gw.example.com"
KEY = "vg_bootstrap-key-for-campaign-tests"
H = {"x-api-key": KEY}
CSV = {**H, "content-type": "text/csv; charset=utf-8"}
CALLER_ID = "+15550009000"


@pytest.fixture
def client(mongo_url: str) -> Iterator[TestClient]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url=PUBLIC,
        twilio_auth_token="test-auth-token",  # type: ignore[arg-type]
        twilio_account_sid="AC" + "3" * 32,
        gateway_api_key=KEY,  # type: ignore[arg-type]
        mongodb_url=mongo_url,
        mongodb_db="campaign_app_" + uuid.uuid4().hex[:8],
        call_metadata_max_keys=8,
    )
    with TestClient(create_app(settings), base_url=PUBLIC) as test_client:
        assert test_client.post("/numbers", json={"number": CALLER_ID}, headers=H).is_success
        yield test_client


def _assistant(client: TestClient, **changes: object) -> str:
    body = {
        "name": "Reminders",
        "system_prompt": "You remind {{name}} of the appointment on {{day}} ({{to_number}}).",
        "greeting": "Hello {{name}}!",
        **changes,
    }
    created = client.post("/assistants", json=body, headers=H)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _campaign(aid: str, **changes: object) -> dict[str, Any]:
    return {
        "name": "December reminders",
        "assistant_id": aid,
        "from_number": CALLER_ID,
        "schedule": {
            # Opens in 2035: a dialer running in the app has nothing to dial here.
            "start_at": "2035-01-05T00:00:00Z",
            "time_zone": "Europe/Paris",
            "days": ["mon", "tue", "wed", "thu", "fri"],
            "hours": ["09:00", "17:00"],
        },
        "max_concurrency": 5,
        "calls_per_second": 2,
        "retry": {"on": ["busy", "no-answer"], "max_attempts": 3, "backoff_s": 600},
        **changes,
    }


def _create(client: TestClient, assistant_id: str, **changes: object) -> str:
    created = client.post("/campaigns", json=_campaign(assistant_id, **changes), headers=H)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _rows(response: Any) -> list[tuple[int, str]]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "contacts_rejected"
    return [(d["row"], d["reason"]) for d in error["details"]]


def test_a_campaign_is_created_listed_and_read(client: TestClient) -> None:
    aid = _assistant(client)
    start = datetime.now(UTC) + timedelta(days=1)
    created = client.post(
        "/campaigns",
        json=_campaign(
            aid,
            schedule={
                "start_at": start.isoformat(),
                "end_at": (start + timedelta(days=30)).isoformat(),
                "time_zone": "America/New_York",
                "days": ["fri", "mon"],
                "hours": ["09:30", "24:00"],
            },
        ),
        headers=H,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["state"] == "active" and body["contact_count"] == 0
    assert body["schedule"]["days"] == ["mon", "fri"] and body["schedule"]["hours"] == [
        "09:30",
        "24:00",
    ]
    assert body["retry"] == {"on": ["busy", "no-answer"], "max_attempts": 3, "backoff_s": 600.0}
    second = _create(client, aid, name="second")
    listed = client.get("/campaigns", headers=H).json()["items"]
    assert [c["id"] for c in listed] == [second, body["id"]]
    one = client.get(f"/campaigns/{body['id']}", headers=H).json()
    assert one["counts"] == {
        "total": 0,
        "by_status": {"pending": 0, "calling": 0, "done": 0, "cancelled": 0},
        "by_outcome": {},
    }
    assert client.get("/campaigns/0123456789abcdef01234567", headers=H).status_code == 404


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"schedule": {"time_zone": "Mars/Olympus"}}, "time_zone"),
        ({"schedule": {"time_zone": "UTC", "days": []}}, "days"),
        ({"schedule": {"time_zone": "UTC", "days": ["mon", "xyz"]}}, "days"),
        ({"schedule": {"time_zone": "UTC", "hours": ["09:00", "09:00"]}}, "hours"),
        ({"schedule": {"time_zone": "UTC", "hours": ["24:00", "09:00"]}}, "hours"),
        ({"schedule": {"time_zone": "UTC", "hours": ["9am", "17:00"]}}, "hours"),
        (
            {
                "schedule": {
                    "start_at": "2031-01-02T10:00:00Z",
                    "end_at": "2031-01-01T10:00:00Z",
                }
            },
            "schedule",
        ),
        ({"schedule": {"end_at": "2020-01-01T00:00:00Z"}}, "schedule"),
        (  # a Saturday morning, a weekday campaign: the window never opens
            {
                "schedule": {
                    "start_at": "2031-01-04T08:00:00",
                    "end_at": "2031-01-04T12:00:00",
                    "time_zone": "Europe/Paris",
                    "days": ["mon", "tue", "wed", "thu", "fri"],
                    "hours": ["09:00", "17:00"],
                }
            },
            "schedule",
        ),
        ({"schedule": {"start_at": "next tuesday"}}, "start_at"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": 101}, "max_concurrency"),
        ({"calls_per_second": 0}, "calls_per_second"),
        ({"calls_per_second": 11}, "calls_per_second"),
        ({"retry": {"max_attempts": 11}}, "max_attempts"),
        ({"retry": {"backoff_s": 8 * 24 * 3600}}, "backoff_s"),
        ({"retry": {"on": ["completed"]}}, "on"),
        ({"from_number": None}, "from_number"),
        ({"from_number": "+15550009999"}, "from_number"),
        ({"assistant_id": "0123456789abcdef01234567"}, "assistant_id"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_campaign_that_cannot_work_is_refused(
    client: TestClient, change: dict[str, Any], where: str
) -> None:
    aid = _assistant(client)
    response = client.post("/campaigns", json=_campaign(aid, **change), headers=H)
    assert response.status_code == 422, response.text
    assert where in response.text
    assert client.get("/campaigns", headers=H).json()["items"] == []


def test_a_livekit_campaign_needs_livekit(client: TestClient) -> None:
    aid = _assistant(client)
    response = client.post(
        "/campaigns", json=_campaign(aid, call_service="livekit", trunk_id="ST_x"), headers=H
    )
    assert response.status_code == 503 and response.json()["error"]["code"] == "not_configured"


def test_json_contacts_are_checked_row_by_row_and_added_all_or_nothing(
    client: TestClient,
) -> None:
    cid = _create(client, _assistant(client))
    url = f"/campaigns/{cid}/contacts"
    good = [
        {"to_number": "+1 (555) 010-0001", "metadata": {"name": "Ann", "day": "Monday"}},
        {
            "to_number": "+15550100002",
            "metadata": {"name": "Bob", "day": "Tuesday", "unused": "kept"},
            "time_zone": "America/Chicago",
        },
    ]
    added = client.post(url, json=good, headers=H)
    assert added.status_code == 201, added.text
    assert added.json() == {"added": 2, "total": 2}

    bad = [
        {"to_number": "+15550100003", "metadata": {"name": "Cy", "day": "Friday"}},  # fine
        {"to_number": "555-0100", "metadata": {"name": "Di", "day": "Friday"}},
        {"to_number": "+15550100003", "metadata": {"name": "Ed", "day": "Friday"}},
        {"to_number": "+15550100004", "metadata": {"name": "Flo"}},
        {"to_number": "+15550100005", "metadata": {"name": "Gus", "day": "x"}, "time_zone": "X/Y"},
        {"to_number": "+15550100002", "metadata": {"name": "Bob", "day": "Friday"}},
        {"to_number": "+15550100006", "metadata": {"name": "Hal", "day": 3}},
        "+15550100007",
        {"to_number": "+15550100008", "metadata": {"name": "Ida", "day": "x"}, "extra": 1},
    ]
    rows = _rows(client.post(url, json=bad, headers=H))
    assert [r for r, _ in rows] == [1, 2, 3, 4, 5, 6, 7, 8]
    reasons = dict(rows)
    assert "not E.164" in reasons[1]
    assert "also in row 0" in reasons[2]
    assert "{{day}}" in reasons[3]
    assert "'X/Y' is not an IANA time zone" in reasons[4]
    assert "in the campaign already" in reasons[5]
    assert "string values" in reasons[6] and "not an object" in reasons[7]
    assert "unknown field 'extra'" in reasons[8]
    campaign = client.get(f"/campaigns/{cid}", headers=H).json()
    assert campaign["contact_count"] == 2 and campaign["counts"]["total"] == 2

    page = client.get(f"/campaigns/{cid}/contacts", headers=H).json()
    assert [(c["n"], c["to_number"]) for c in page["items"]] == [
        (1, "+15550100001"),
        (2, "+15550100002"),
    ]
    assert page["items"][1]["metadata"]["unused"] == "kept"
    assert page["items"][1]["time_zone"] == "America/Chicago"
    assert page["items"][0]["status"] == "pending" and page["next_after"] is None

    assert client.post(url, json={"contacts": good}, headers=H).status_code == 422
    assert client.post(url, content=b"{not json", headers=H).status_code == 422
    assert client.post(url, json=[], headers=H).status_code == 422
    too_many = {"name": "x", "day": "y", **{f"k{i}": "v" for i in range(10)}}
    (row,) = _rows(
        client.post(url, json=[{"to_number": "+15550100009", "metadata": too_many}], headers=H)
    )
    assert "keys" in row[1]
    other = client.post("/campaigns/0123456789abcdef01234567/contacts", json=good, headers=H)
    assert other.status_code == 404


def test_csv_contacts_are_read_and_reported_by_line(client: TestClient) -> None:
    cid = _create(client, _assistant(client))
    url = f"/campaigns/{cid}/contacts"
    csv_text = (
        "\ufeffto_number,name,day,time_zone,notes\r\n"
        "+15550200001,Ann,Monday,,vip\r\n"
        "\r\n"
        '+15550200002,"Bob, Jr.",Tuesday,Asia/Tokyo,"line one\nline two"\r\n'
    )
    added = client.post(url, content=csv_text.encode(), headers=CSV)
    assert added.status_code == 201, added.text
    assert added.json() == {"added": 2, "total": 2}
    items = client.get(f"/campaigns/{cid}/contacts", headers=H).json()["items"]
    assert items[0]["metadata"] == {"name": "Ann", "day": "Monday", "notes": "vip"}
    assert items[0]["time_zone"] is None
    assert items[1]["metadata"]["name"] == "Bob, Jr." and items[1]["time_zone"] == "Asia/Tokyo"

    bad = (
        "to_number,name,day,time_zone\n"
        "+15550200003,Cy,Friday,\n"  # line 2: fine
        "not-a-number,Di,Friday,\n"  # 3
        "+15550200003,Ed,Friday,\n"  # 4: twice
        "+15550200004,Flo,,\n"  # 5: {{day}} blank
        "+15550200005,Gus,Friday,Nowhere/City\n"  # 6
        "+15550200006,Hal\n"  # 7: ragged
        "+15550200001,Ann,Monday,\n"  # 8: in the campaign
    )
    rows = _rows(client.post(url, content=bad.encode(), headers=CSV))
    assert [r for r, _ in rows] == [3, 4, 5, 6, 7, 8]
    assert "{{day}}" in dict(rows)[5] and "2 fields" in dict(rows)[7]
    assert client.get(f"/campaigns/{cid}", headers=H).json()["contact_count"] == 2

    no_number = client.post(url, content=b"phone,name\n+15550200009,X\n", headers=CSV)
    assert no_number.status_code == 422 and "to_number" in no_number.text
    latin1 = client.post(
        url, content="to_number,name,day\n+15550200009,Zoë,x\n".encode("latin-1"), headers=CSV
    )
    assert latin1.status_code == 400 and "UTF-8" in latin1.text
    unnamed = client.post(url, content=b"to_number,name,day,\n+15550200009,X,Y,\n", headers=CSV)
    assert unnamed.status_code == 422 and "no name" in unnamed.text
    stray_quote = client.post(
        url, content=b'to_number,name,day\n+15550200009,"X"Y,Z\n', headers=CSV
    )
    assert stray_quote.status_code == 400, stray_quote.text
    xml = client.post(url, content=b"<contacts/>", headers={**H, "content-type": "application/xml"})
    assert xml.status_code == 415
    assert client.get(f"/campaigns/{cid}", headers=H).json()["contact_count"] == 2


def test_states_are_idempotent_and_final_states_refuse(client: TestClient) -> None:
    cid = _create(client, _assistant(client))
    base = f"/campaigns/{cid}"
    for _ in range(2):
        paused = client.post(f"{base}/pause", headers=H)
        assert paused.status_code == 200 and paused.json()["state"] == "paused"
    contact = [{"to_number": "+15550300001", "metadata": {"name": "A", "day": "B"}}]
    assert client.post(f"{base}/contacts", json=contact, headers=H).status_code == 201
    for _ in range(2):
        assert client.post(f"{base}/resume", headers=H).json()["state"] == "active"
    for _ in range(2):
        assert client.post(f"{base}/cancel", headers=H).json()["state"] == "cancelled"
    for action in ("pause", "resume"):
        refused = client.post(f"{base}/{action}", headers=H)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "conflict"
    more = [{"to_number": "+15550300002", "metadata": {"name": "A", "day": "B"}}]
    assert client.post(f"{base}/contacts", json=more, headers=H).status_code == 409
    assert client.post("/campaigns/0123456789abcdef01234567/pause", headers=H).status_code == 404


def test_contacts_page_by_cursor_and_status(client: TestClient) -> None:
    cid = _create(client, _assistant(client, system_prompt="Hi.", greeting="Hello."))
    rows = "to_number\n" + "".join(f"+1555040{i:04d}\n" for i in range(250))
    assert client.post(f"/campaigns/{cid}/contacts", content=rows.encode(), headers=CSV).json() == {
        "added": 250,
        "total": 250,
    }
    seen: list[int] = []
    after = 0
    while True:
        page = client.get(
            f"/campaigns/{cid}/contacts", params={"after": after, "limit": 100}, headers=H
        ).json()
        seen += [c["n"] for c in page["items"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == list(range(1, 251))
    pending = client.get(f"/campaigns/{cid}/contacts?status=pending&limit=3", headers=H).json()
    assert [c["n"] for c in pending["items"]] == [1, 2, 3] and pending["next_after"] == 3
    done = client.get(f"/campaigns/{cid}/contacts?status=done", headers=H).json()
    assert done == {"items": [], "next_after": None}
    assert client.get(f"/campaigns/{cid}/contacts?status=lost", headers=H).status_code == 422
    counts = client.get(f"/campaigns/{cid}", headers=H).json()["counts"]
    assert counts["total"] == 250 and counts["by_status"]["pending"] == 250


def test_do_not_call_list(client: TestClient) -> None:
    added = client.post(
        "/do-not-call", json={"numbers": ["+1 555 050 0002", "+15550500001"]}, headers=H
    )
    assert added.status_code == 201 and added.json() == {"added": 2}
    again = client.post("/do-not-call", json={"numbers": ["+15550500001"]}, headers=H)
    assert again.json() == {"added": 0}
    bad = client.post("/do-not-call", json={"numbers": ["+15550500003", "12", "x"]}, headers=H)
    assert bad.status_code == 422
    assert [d["loc"] for d in bad.json()["error"]["details"]] == [
        ["body", "numbers", 1],
        ["body", "numbers", 2],
    ]
    first = client.get("/do-not-call?limit=1", headers=H).json()
    assert first == {"items": ["+15550500001"], "next_after": "+15550500001"}
    rest = client.get("/do-not-call", params={"after": first["next_after"]}, headers=H).json()
    assert rest == {"items": ["+15550500002"], "next_after": None}
    assert client.delete("/do-not-call/+15550500002", headers=H).status_code == 204
    assert client.delete("/do-not-call/+15550500002", headers=H).status_code == 404
    assert client.delete("/do-not-call/nonsense", headers=H).status_code == 422
    assert client.get("/do-not-call", headers=H).json()["items"] == ["+15550500001"]


def test_organisation_call_caps(client: TestClient) -> None:
    org = client.get("/organization", headers=H).json()
    assert org["max_concurrent_calls"] is None and org["inbound_reserved_calls"] == 0
    set_both = client.patch(
        "/organization", json={"max_concurrent_calls": 10, "inbound_reserved_calls": 3}, headers=H
    )
    assert set_both.status_code == 200, set_both.text
    assert (set_both.json()["max_concurrent_calls"], set_both.json()["inbound_reserved_calls"]) == (
        10,
        3,
    )
    too_many = client.patch("/organization", json={"inbound_reserved_calls": 10}, headers=H)
    assert too_many.status_code == 422
    lower = client.patch("/organization", json={"max_concurrent_calls": 3}, headers=H)
    assert lower.status_code == 422  # 3 reserved of 3
    assert (
        client.patch("/organization", json={"max_concurrent_calls": 0}, headers=H).status_code
        == 422
    )
    url_only = client.patch("/organization", json={"inbound_lookup_url": None}, headers=H)
    assert url_only.json()["max_concurrent_calls"] == 10
    cleared = client.patch("/organization", json={"max_concurrent_calls": None}, headers=H)
    assert cleared.json()["max_concurrent_calls"] is None
    assert cleared.json()["inbound_reserved_calls"] == 0
    orphan = client.patch("/organization", json={"inbound_reserved_calls": 2}, headers=H)
    assert orphan.status_code == 422


def test_the_upload_route_alone_takes_a_large_body(client: TestClient) -> None:
    cid = _create(client, _assistant(client, system_prompt="Hi.", greeting="Hello."))
    notes = "n" * 100
    big = (
        "to_number,notes\n" + "".join(f"+1555070{i:04d},{notes}\n" for i in range(10_000))
    ).encode()
    assert len(big) > 1024 * 1024  # over API_MAX_BODY_BYTES
    too_big_elsewhere = client.post("/do-not-call", content=big, headers=CSV)
    assert too_big_elsewhere.status_code == 413
    upload = client.post(f"/campaigns/{cid}/contacts", content=big, headers=CSV)
    assert upload.status_code == 201, upload.text
    assert upload.json() == {"added": 10_000, "total": 10_000}
    huge_field = f"to_number,notes\n+15550800001,{'x' * 200_000}\n".encode()
    refused = client.post(f"/campaigns/{cid}/contacts", content=huge_field, headers=CSV)
    assert refused.status_code == 400 and "field" in refused.text
