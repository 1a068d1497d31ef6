"""The campaigns API end to end against a real gateway process on the real FerretDB: two
organisations (keys made by the CLI), uploads as JSON and CSV with the per-row report,
a 100 000-row upload, states, counts, pages, the do-not-call list and the call caps.

Every campaign here opens in 2035, so a dialer in the gateway has nothing to dial."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from tests.integration.conftest import GatewayProcess, run_gateway
from tests.net import free_port

LATER = {"start_at": "2035-01-01T00:00:00Z", "time_zone": "Europe/Paris"}
ASSISTANT = {
    "name": "Order follow-up",
    "system_prompt": "You call {{customer}} about order {{order}}. Be brief.",
    "greeting": "Hello {{customer}}, this is Acme about your order {{order}}.",
}


def create_key(mongo_url: str, db: str, org: str) -> str:
    """`voice-gateway create-key --org ORG`, as an operator runs it; returns the printed key."""
    env = {**os.environ, "MONGODB_URL": mongo_url, "MONGODB_DB": db}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "create-key", "--org", org],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def stack(
    mongo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str, str]]:
    db = "campaigns_" + uuid.uuid4().hex[:8]
    key_a = create_key(mongo_url, db, "acme")
    key_b = create_key(mongo_url, db, "globex")
    env: dict[str, str | None] = {
        "MONGODB_DB": db,
        "GATEWAY_API_KEY": None,
        "TWILIO_ACCOUNT_SID": "AC" + "5" * 32,
        # Nothing here places a call: a port with no server behind it.
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{free_port()}",
    }
    with run_gateway(mongo_url, tmp_path_factory.mktemp("campaigns"), env) as gateway:
        yield gateway, key_a, key_b


def _h(key: str, **more: str) -> dict[str, str]:
    return {"x-api-key": key, **more}


async def _setup(http: httpx.AsyncClient, key: str, number: str) -> str:
    """Register `number` and make an assistant; its id."""
    claimed = await http.post("/numbers", json={"number": number}, headers=_h(key))
    assert claimed.status_code == 201, claimed.text
    made = await http.post("/assistants", json=ASSISTANT, headers=_h(key))
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


async def _campaign(http: httpx.AsyncClient, key: str, aid: str, number: str) -> dict[str, Any]:
    created = await http.post(
        "/campaigns",
        json={
            "name": "Orders",
            "assistant_id": aid,
            "from_number": number,
            "schedule": {**LATER, "days": ["mon", "tue", "wed", "thu", "fri"]},
            "max_concurrency": 4,
            "calls_per_second": 1.5,
            "retry": {"on": ["busy", "no-answer", "voicemail"], "max_attempts": 2},
        },
        headers=_h(key),
    )
    assert created.status_code == 201, created.text
    body: dict[str, Any] = created.json()
    return body


async def test_campaign_flow_across_organisations(
    stack: tuple[GatewayProcess, str, str],
) -> None:
    gateway, key_a, key_b = stack
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as http:
        aid = await _setup(http, key_a, "+15558880001")
        aid_b = await _setup(http, key_b, "+15558880002")
        camp = await _campaign(http, key_a, aid, "+15558880001")
        cid = camp["id"]
        assert camp["state"] == "active" and camp["schedule"]["start_at"].startswith("2035")

        # Another organisation sees none of it, and cannot use A's caller id or assistant.
        for method, path in (
            ("GET", f"/campaigns/{cid}"),
            ("GET", f"/campaigns/{cid}/contacts"),
            ("POST", f"/campaigns/{cid}/pause"),
            ("POST", f"/campaigns/{cid}/cancel"),
        ):
            other = await http.request(method, path, headers=_h(key_b))
            assert other.status_code == 404, (method, path, other.text)
        theirs = await http.post(
            f"/campaigns/{cid}/contacts",
            json=[{"to_number": "+15550000001", "metadata": {"customer": "x", "order": "1"}}],
            headers=_h(key_b),
        )
        assert theirs.status_code == 404
        assert (await http.get("/campaigns", headers=_h(key_b))).json()["items"] == []
        stolen = await http.post(
            "/campaigns",
            json={"name": "x", "assistant_id": aid_b, "from_number": "+15558880001"},
            headers=_h(key_b),
        )
        assert stolen.status_code == 422 and "not registered" in stolen.text
        borrowed = await http.post(
            "/campaigns",
            json={"name": "x", "assistant_id": aid, "from_number": "+15558880002"},
            headers=_h(key_b),
        )
        assert borrowed.status_code == 422 and "assistant" in borrowed.text

        # JSON, then CSV; a rejected upload adds nothing.
        url = f"/campaigns/{cid}/contacts"
        first = await http.post(
            url,
            json=[
                {"to_number": "+15551110001", "metadata": {"customer": "Ann", "order": "17"}},
                {
                    "to_number": "+15551110002",
                    "metadata": {"customer": "Bob", "order": "18"},
                    "time_zone": "America/Denver",
                },
            ],
            headers=_h(key_a),
        )
        assert first.status_code == 201 and first.json() == {"added": 2, "total": 2}
        csv_body = (
            "to_number,customer,order,time_zone,segment\n"
            "+15551110003,Cy,19,,gold\n"
            "+15551110004,Di,20,Asia/Kolkata,\n"
        )
        second = await http.post(
            url, content=csv_body.encode(), headers=_h(key_a, **{"content-type": "text/csv"})
        )
        assert second.status_code == 201 and second.json() == {"added": 2, "total": 4}
        rejected = await http.post(
            url,
            content=(
                b"to_number,customer,order,time_zone\n"
                b"+15551110005,Ed,21,\n"
                b"+44 20 7946 0000x,Flo,22,\n"
                b"+15551110005,Gus,23,\n"
                b"+15551110006,Hal,,\n"
                b"+15551110007,Ida,24,Europe/Atlantis\n"
                b"+15551110001,Ann,17,\n"
            ),
            headers=_h(key_a, **{"content-type": "text/csv"}),
        )
        assert rejected.status_code == 422, rejected.text
        error = rejected.json()["error"]
        assert error["code"] == "contacts_rejected" and "nothing was added" in error["message"]
        assert [d["row"] for d in error["details"]] == [3, 4, 5, 6, 7]
        assert "{{order}}" in error["details"][2]["reason"]
        one = (await http.get(f"/campaigns/{cid}", headers=_h(key_a))).json()
        assert one["contact_count"] == 4 and one["counts"]["by_status"]["pending"] == 4

        page = (await http.get(f"{url}?limit=3", headers=_h(key_a))).json()
        assert [c["n"] for c in page["items"]] == [1, 2, 3] and page["next_after"] == 3
        rest = (await http.get(f"{url}?after=3", headers=_h(key_a))).json()
        assert [c["to_number"] for c in rest["items"]] == ["+15551110004"]
        assert rest["items"][0]["metadata"] == {"customer": "Di", "order": "20"}
        assert rest["items"][0]["time_zone"] == "Asia/Kolkata"

        # States: idempotent, final ones refuse; cancel is final.
        for action, state in (("pause", "paused"), ("pause", "paused"), ("resume", "active")):
            moved = await http.post(f"/campaigns/{cid}/{action}", headers=_h(key_a))
            assert moved.status_code == 200 and moved.json()["state"] == state
        for _ in range(2):
            cancelled = await http.post(f"/campaigns/{cid}/cancel", headers=_h(key_a))
            assert cancelled.json()["state"] == "cancelled"
        assert (await http.post(f"/campaigns/{cid}/resume", headers=_h(key_a))).status_code == 409
        late = await http.post(
            url,
            json=[{"to_number": "+15551110009", "metadata": {"customer": "Jo", "order": "9"}}],
            headers=_h(key_a),
        )
        assert late.status_code == 409
        assert [
            c["id"] for c in (await http.get("/campaigns", headers=_h(key_a))).json()["items"]
        ] == [cid]


async def test_a_100_000_row_csv_is_accepted(stack: tuple[GatewayProcess, str, str]) -> None:
    gateway, key_a, _ = stack
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=300) as http:
        aid = await _setup(http, key_a, "+15558880003")
        cid = (await _campaign(http, key_a, aid, "+15558880003"))["id"]
        rows = 100_000
        body = "to_number,customer,order,notes\n" + "".join(
            f"+1556{i:07d},Customer {i},{1000 + i},imported\n" for i in range(rows)
        )
        start = time.perf_counter()
        upload = await http.post(
            f"/campaigns/{cid}/contacts",
            content=body.encode(),
            headers=_h(key_a, **{"content-type": "text/csv"}),
        )
        took = time.perf_counter() - start
        assert upload.status_code == 201, upload.text[:2000]
        assert upload.json() == {"added": rows, "total": rows}
        print(f"100 000-row CSV ({len(body) / 1e6:.1f} MB) uploaded in {took:.1f} s")
        last = (
            await http.get(f"/campaigns/{cid}/contacts?after={rows - 2}", headers=_h(key_a))
        ).json()
        assert [c["n"] for c in last["items"]] == [rows - 1, rows]
        assert last["items"][-1]["to_number"] == f"+1556{rows - 1:07d}"
        counts = (await http.get(f"/campaigns/{cid}", headers=_h(key_a))).json()["counts"]
        assert counts["total"] == rows and counts["by_status"]["pending"] == rows

        # The same rows again: every one is in the campaign already; the report is bounded.
        again = await http.post(
            f"/campaigns/{cid}/contacts",
            content=body.encode(),
            headers=_h(key_a, **{"content-type": "text/csv"}),
        )
        assert again.status_code == 422
        error = again.json()["error"]
        assert len(error["details"]) == 1000 and "100000 of 100000" in error["message"]
        assert (await http.get(f"/campaigns/{cid}", headers=_h(key_a))).json()[
            "contact_count"
        ] == rows


async def test_do_not_call_and_call_caps_per_organisation(
    stack: tuple[GatewayProcess, str, str],
) -> None:
    gateway, key_a, key_b = stack
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as http:
        added = await http.post(
            "/do-not-call", json={"numbers": ["+15557770001", "+15557770002"]}, headers=_h(key_a)
        )
        assert added.status_code == 201 and added.json() == {"added": 2}
        assert (await http.get("/do-not-call", headers=_h(key_b))).json()["items"] == []
        gone = await http.delete("/do-not-call/+15557770001", headers=_h(key_b))
        assert gone.status_code == 404
        assert (
            await http.delete("/do-not-call/+15557770001", headers=_h(key_a))
        ).status_code == 204
        assert (await http.get("/do-not-call", headers=_h(key_a))).json() == {
            "items": ["+15557770002"],
            "next_after": None,
        }

        capped = await http.patch(
            "/organization",
            json={"max_concurrent_calls": 20, "inbound_reserved_calls": 5},
            headers=_h(key_a),
        )
        assert capped.status_code == 200, capped.text
        assert (await http.get("/organization", headers=_h(key_a))).json()[
            "inbound_reserved_calls"
        ] == 5
        other = (await http.get("/organization", headers=_h(key_b))).json()
        assert other["max_concurrent_calls"] is None
        bad = await http.patch(
            "/organization", json={"inbound_reserved_calls": 20}, headers=_h(key_a)
        )
        assert bad.status_code == 422


async def test_the_openapi_document_describes_the_campaign_routes(
    stack: tuple[GatewayProcess, str, str],
) -> None:
    gateway, _, _ = stack
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        spec = (await http.get("/openapi.json")).json()
    validate(spec)
    upload = spec["paths"]["/campaigns/{campaign_id}/contacts"]["post"]["requestBody"]
    assert set(upload["content"]) == {"application/json", "text/csv", "application/csv"}
    assert {"/campaigns", "/do-not-call", "/do-not-call/{number}"} <= set(spec["paths"])
