"""The management flow end to end, against real servers: a key made by the CLI, an
assistant, SIP trunks and a dispatch rule in a real livekit-server, an outbound Twilio
call through the `twilio` SDK (to a Twilio REST fake that sends signed status callbacks),
the callee's audio over Media Streams, and the call listed with its status."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from livekit import api as lkapi
from livekit.protocol import sip as lksip
from openapi_spec_validator import validate

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from tests.integration.conftest import FakeServer, GatewayProcess, run_gateway
from tests.livekit_server import LiveKitServer

TWILIO_ACCOUNT = "AC" + "0" * 32
TWILIO_TOKEN = "test-twilio-token"


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
    key = done.stdout.strip()
    assert key.startswith("vg_") and len(key) > 40, done.stdout + done.stderr
    return key


@pytest.fixture(scope="module")
def stack(
    mongo_url: str,
    livekit_server: LiveKitServer,
    twilio_fake: FakeServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, str, str]]:
    """A gateway with LiveKit and Twilio REST configured and no GATEWAY_API_KEY; two orgs."""
    db = "mgmt_" + uuid.uuid4().hex[:8]
    key_a = create_key(mongo_url, db, "acme")
    key_b = create_key(mongo_url, db, "globex")
    env: dict[str, str | None] = {
        "MONGODB_DB": db,
        "GATEWAY_API_KEY": None,
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT,
        "TWILIO_API_BASE_URL": twilio_fake.url,
        "LIVEKIT_URL": livekit_server.url,
        "LIVEKIT_API_KEY": livekit_server.api_key,
        "LIVEKIT_API_SECRET": livekit_server.api_secret,
        "VAD_SILENCE_MS": "400",
    }
    with run_gateway(mongo_url, tmp_path_factory.mktemp("mgmt"), env) as gateway:
        twilio_fake.reset()
        twilio_fake.control(account_sid=TWILIO_ACCOUNT, auth_token=gateway.auth_token)
        yield gateway, key_a, key_b


def _h(key: str) -> dict[str, str]:
    return {"x-api-key": key}


ASSISTANT = {
    "name": "Order follow-up",
    "system_prompt": "You call {{customer}} about order {{order}}. Be brief.",
    "greeting": "Hello {{customer}}, this is Acme about your order {{order}}.",
    "phone_numbers": ["+15557770001"],
    "max_duration_s": 300,
}


async def _lk_state(server: LiveKitServer) -> tuple[set[str], set[str], set[str]]:
    async with lkapi.LiveKitAPI(server.url, server.api_key, server.api_secret) as lk:
        inbound = await lk.sip.list_inbound_trunk(lksip.ListSIPInboundTrunkRequest())
        outbound = await lk.sip.list_outbound_trunk(lksip.ListSIPOutboundTrunkRequest())
        rules = await lk.sip.list_dispatch_rule(lksip.ListSIPDispatchRuleRequest())
    return (
        {t.sip_trunk_id for t in inbound.items},
        {t.sip_trunk_id for t in outbound.items},
        {r.sip_dispatch_rule_id for r in rules.items},
    )


async def _wait_status(http: httpx.AsyncClient, call_id: str, key: str, status: str) -> Any:
    for _ in range(200):
        call = (await http.get(f"/calls/{call_id}", headers=_h(key))).json()
        if call["status"] == status:
            return call
        await asyncio.sleep(0.05)
    raise AssertionError(f"call stayed {call['status']!r}, wanted {status!r}")


async def test_whole_management_flow(
    stack: tuple[GatewayProcess, str, str],
    livekit_server: LiveKitServer,
    twilio_fake: FakeServer,
) -> None:
    gateway, key_a, key_b = stack
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        # The number the assistant and the trunks use is acme's.
        claimed = await http.post("/numbers", json={"number": "+15557770001"}, headers=_h(key_a))
        assert claimed.status_code == 201, claimed.text
        # An assistant with placeholders.
        created = await http.post("/assistants", json=ASSISTANT, headers=_h(key_a))
        assert created.status_code == 201, created.text
        assistant = created.json()
        assert assistant["greeting"] == ASSISTANT["greeting"]

        # Trunks and a dispatch rule, made in the real livekit-server.
        outbound = await http.post(
            "/sip/trunks/outbound",
            headers=_h(key_a),
            json={
                "name": "twilio out",
                "provider": "twilio",
                "address": "acme.pstn.twilio.com",
                "transport": "tcp",
                "numbers": ["+15557770001"],
                "auth_username": "acme",
                "auth_password": "s3cret-pass",
            },
        )
        assert outbound.status_code == 201, outbound.text
        inbound = await http.post(
            "/sip/trunks/inbound",
            headers=_h(key_a),
            json={
                "name": "twilio in",
                "provider": "twilio",
                "numbers": ["+15557770001"],
                "auth_username": "acme-in",
                "auth_password": "in-s3cret",
            },
        )
        assert inbound.status_code == 201, inbound.text
        rule = await http.post(
            "/sip/dispatch-rules",
            headers=_h(key_a),
            json={
                "name": "to follow-up",
                "assistant_id": assistant["id"],
                "trunk_ids": [inbound.json()["id"]],
            },
        )
        assert rule.status_code == 201, rule.text
        lk_in, lk_out, lk_rules = await _lk_state(livekit_server)
        assert inbound.json()["livekit_id"] in lk_in
        assert outbound.json()["livekit_id"] in lk_out
        assert rule.json()["livekit_id"] in lk_rules
        for listing in ("/sip/trunks/inbound", "/sip/trunks/outbound"):
            items = (await http.get(listing, headers=_h(key_a))).json()["items"]
            assert len(items) == 1 and items[0]["has_password"] is True
            assert "secret" not in str(items).lower() and "auth_password" not in items[0]

        # A missing placeholder is a 422 at call time, naming what is missing.
        call_body = {
            "assistant_id": assistant["id"],
            "to_number": "+15558880002",
            "from_number": "+15557770001",
            "call_service": "twilio",
            "metadata": {"customer": "Dana"},
            "machine_detection": True,
        }
        missing = await http.post("/call/outbound", json=call_body, headers=_h(key_a))
        assert missing.status_code == 422
        assert missing.json()["error"]["details"][0]["loc"][-1] == "order"

        # The outbound call: created through the twilio SDK, its id back at once.
        call_body["metadata"] = {"customer": "Dana", "order": "A-17"}
        placed = await http.post("/call/outbound", json=call_body, headers=_h(key_a))
        assert placed.status_code == 201, placed.text
        call_id, call_sid = placed.json()["call_id"], placed.json()["call_sid"]
        created_req = next(e for e in twilio_fake.log() if e.get("method") == "POST")
        form: Any = created_req["form"]
        assert form["To"] == "+15558880002" and form["MachineDetection"] == "Enable"
        assert parse_qs(urlsplit(form["StatusCallback"]).query)["call_id"] == [call_id]
        stream = ET.fromstring(form["Twiml"]).find("./Connect/Stream")
        assert stream is not None
        params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        assert params["call_id"] == call_id

        # Carrier callbacks: initiated/ringing come by themselves, then the callee answers.
        await _wait_status(http, call_id, key_a, "ringing")
        answer = await http.post(
            f"{twilio_fake.url}/control/calls/{call_sid}/status",
            json={"status": "in-progress", "answered_by": "human"},
        )
        assert answer.json()["callback_status"] == 204
        answered = await _wait_status(http, call_id, key_a, "in-progress")
        assert answered["answered_by"] == "human"

        # The callee's audio: the stream Twilio would open from that TwiML.
        callee = SimulatedTwilioCall(
            base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token
        )
        callee.call_sid = call_sid
        await callee.connect(stream.attrib["url"], params)
        try:
            await callee.wait_agent_audio()
            await callee.wait_agent_silent()
            callee.say(espeak_mulaw("What are your opening hours?"))
            await callee.wait_said()
            await callee.wait_agent_audio()
            await callee.wait_agent_silent()
        finally:
            await callee.stop()
            await callee.aclose()
        done = await http.post(
            f"{twilio_fake.url}/control/calls/{call_sid}/status", json={"status": "completed"}
        )
        assert done.json()["callback_status"] == 204
        finished = await _wait_status(http, call_id, key_a, "completed")
        agent_first = finished["transcript"][0]
        assert agent_first["speaker"] == "agent"
        assert agent_first["text"] == "Hello Dana, this is Acme about your order A-17."
        assert any(t["speaker"] == "caller" for t in finished["transcript"])
        assert finished["direction"] == "outbound" and finished["assistant_id"] == assistant["id"]

        # Listed, with filters; invisible to the other organisation.
        listed = await http.get(
            "/calls",
            params={
                "status": "completed",
                "direction": "outbound",
                "assistant_id": assistant["id"],
            },
            headers=_h(key_a),
        )
        assert [c["id"] for c in listed.json()["items"]] == [call_id]
        assert (await http.get(f"/calls/{call_id}", headers=_h(key_b))).status_code == 404
        assert (await http.get("/calls", headers=_h(key_b))).json()["items"] == []
        other = await http.get(f"/assistants/{assistant['id']}", headers=_h(key_b))
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
        # Nothing of acme's can be changed, used or seen with globex's key.
        key_a_id = (await http.get("/api-keys", headers=_h(key_a))).json()["items"][0]["id"]
        for method, url, body in (
            ("PATCH", f"/assistants/{assistant['id']}", {"name": "stolen"}),
            ("DELETE", f"/assistants/{assistant['id']}", None),
            ("DELETE", f"/sip/trunks/outbound/{outbound.json()['id']}", None),
            ("DELETE", f"/sip/trunks/inbound/{inbound.json()['id']}", None),
            ("DELETE", f"/sip/dispatch-rules/{rule.json()['id']}", None),
            ("POST", f"/api-keys/{key_a_id}/revoke", None),
            ("POST", "/call/outbound", call_body),
            (
                "POST",
                "/sip/dispatch-rules",
                {"name": "x", "assistant_id": assistant["id"], "trunk_ids": [inbound.json()["id"]]},
            ),
        ):
            response = await http.request(method, url, json=body, headers=_h(key_b))
            assert response.status_code == 404, (method, url, response.text)
        for listing in ("/assistants", "/sip/trunks/inbound", "/sip/dispatch-rules"):
            assert (await http.get(listing, headers=_h(key_b))).json()["items"] == []
        still = await http.get(f"/assistants/{assistant['id']}", headers=_h(key_a))
        assert still.json()["name"] == ASSISTANT["name"]
        assert (await http.get("/assistants", headers=_h(key_a))).status_code == 200

        # LiveKit outbound: the room is made and the dial reaches LiveKit's SIP service;
        # with no SIP bridge running it is refused, and the stored call says so.
        lk_call = await http.post(
            "/call/outbound",
            headers=_h(key_a),
            json={**call_body, "call_service": "livekit", "from_number": None},
        )
        assert lk_call.status_code == 502, lk_call.text
        assert lk_call.json()["error"]["code"] == "carrier_error"
        failed = await http.get("/calls", params={"status": "failed"}, headers=_h(key_a))
        [failed_call] = failed.json()["items"]
        assert failed_call["transport"] == "livekit"
        assert failed_call["end_reason"] == "sip-dial-failed"
        assert failed_call["from_number"] == "+15557770001"  # the trunk's number

        # An assistant or a trunk a rule uses cannot go; after the rule, they can.
        in_use = await http.delete(f"/assistants/{assistant['id']}", headers=_h(key_a))
        assert in_use.status_code == 409 and rule.json()["id"] in in_use.text
        in_id = inbound.json()["id"]
        blocked = await http.delete(f"/sip/trunks/inbound/{in_id}", headers=_h(key_a))
        assert blocked.status_code == 409
        gone = await http.delete(f"/sip/dispatch-rules/{rule.json()['id']}", headers=_h(key_a))
        assert gone.status_code == 204
        assert (
            await http.delete(f"/sip/trunks/inbound/{in_id}", headers=_h(key_a))
        ).status_code == 204
        lk_in, _, lk_rules = await _lk_state(livekit_server)
        assert inbound.json()["livekit_id"] not in lk_in
        assert rule.json()["livekit_id"] not in lk_rules


async def test_every_route_refuses_missing_wrong_and_revoked_keys(
    stack: tuple[GatewayProcess, str, str], mongo_url: str
) -> None:
    gateway, key_a, _ = stack
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        spec = (await http.get("/openapi.json")).json()
        fake_id = "0" * 24
        checked = 0
        for path, item in spec["paths"].items():
            for method, op in item.items():
                if not op.get("security"):
                    continue
                url = path.replace("{", "").replace("}", "")
                for name in ("call_id", "assistant_id", "trunk_id", "rule_id", "key_id"):
                    url = url.replace(name, fake_id)
                for headers in ({}, {"x-api-key": "vg_wrong"}):
                    response = await http.request(method.upper(), url, headers=headers, json={})
                    assert response.status_code == 401, (method, path, response.text)
                    assert response.json()["error"]["code"] == "unauthorized"
                checked += 1
        assert checked >= 15

        # Revoking works from the very next request.
        key_c = create_key(mongo_url, gateway.db_name, "acme")
        keys = (await http.get("/api-keys", headers=_h(key_c))).json()["items"]
        mine = next(k for k in keys if key_c.startswith(k["prefix"]) and k["revoked_at"] is None)
        assert all("hash" not in k for k in keys)
        revoked = await http.post(f"/api-keys/{mine['id']}/revoke", headers=_h(key_a))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        assert (await http.get("/assistants", headers=_h(key_c))).status_code == 401
        assert (await http.get("/assistants", headers=_h(key_a))).status_code == 200


async def test_openapi_document_validates_and_docs_are_served(
    stack: tuple[GatewayProcess, str, str],
) -> None:
    gateway, _, _ = stack
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        spec = (await http.get("/openapi.json")).json()
        validate(spec)
        assert {
            "/assistants",
            "/call/outbound",
            "/web-calls",
            "/sip/trunks/inbound",
            "/calls",
        } <= set(spec["paths"])
        body = spec["paths"]["/sip/trunks/inbound"]["post"]["requestBody"]
        ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        password = spec["components"]["schemas"][ref]["properties"]["auth_password"]
        assert "writeOnly" in str(password)
        trunk_out = spec["components"]["schemas"]["TrunkOut"]["properties"]
        assert "auth_password" not in trunk_out
        docs = await http.get("/docs")
        assert (
            docs.status_code == 200 and "swagger-ui" in docs.text and "/openapi.json" in docs.text
        )


def operator_numbers(mongo_url: str, db: str, *args: str) -> str:
    """`voice-gateway numbers ...`, as the operator runs it; returns what it printed."""
    env = {**os.environ, "MONGODB_URL": mongo_url, "MONGODB_DB": db}
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "numbers", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def test_numbers_are_checked_across_organisations(
    stack: tuple[GatewayProcess, str, str],
    livekit_server: LiveKitServer,
    twilio_fake: FakeServer,
    mongo_url: str,
) -> None:
    """Globex can neither claim, nor dial from, nor put on a trunk a number acme holds; the
    operator moves a number; an inbound call to acme's number reaches acme's assistant."""
    gateway, key_a, key_b = stack
    acme_number, moved_number = "+15557770002", "+15557770003"
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        claimed = await http.post("/numbers", json={"number": acme_number}, headers=_h(key_a))
        assert claimed.status_code == 201, claimed.text
        taken = await http.post("/numbers", json={"number": acme_number}, headers=_h(key_b))
        assert taken.status_code == 409
        assert (
            taken.json()["error"]["message"]
            == f"{acme_number} is not available to this organisation"
        )
        assert "acme" not in taken.text.lower()

        theirs = await http.post(
            "/assistants", json={"name": "G", "system_prompt": "Help."}, headers=_h(key_b)
        )
        assert theirs.status_code == 201, theirs.text
        dialled_before = len(twilio_fake.log())
        spoofed = await http.post(
            "/call/outbound",
            json={"assistant_id": theirs.json()["id"], "to_number": "+15558880009",
                  "from_number": acme_number, "call_service": "twilio"},
            headers=_h(key_b),
        )  # fmt: skip
        assert spoofed.status_code == 422, spoofed.text
        assert spoofed.json()["error"]["details"][0]["loc"] == ["from_number"]
        assert len(twilio_fake.log()) == dialled_before  # Twilio was never asked
        assert (await http.get("/calls", headers=_h(key_b))).json()["items"] == []

        lk_before = await _lk_state(livekit_server)
        for kind, body in (
            ("inbound", {"name": "in", "numbers": [acme_number],
                         "allowed_addresses": ["127.0.0.1"]}),
            ("outbound", {"name": "out", "address": "sip.example.com",
                          "numbers": [acme_number]}),
        ):  # fmt: skip
            trunk = await http.post(f"/sip/trunks/{kind}", json=body, headers=_h(key_b))
            assert trunk.status_code == 422, (kind, trunk.text)
            assert trunk.json()["error"]["details"][0]["loc"] == ["numbers", 0]
        assert await _lk_state(livekit_server) == lk_before

        # A trunk made while globex held its number cannot dial once the operator moves it.
        mine = await http.post("/numbers", json={"number": moved_number}, headers=_h(key_b))
        assert mine.status_code == 201, mine.text
        out = await http.post(
            "/sip/trunks/outbound",
            json={"name": "out", "address": "sip.example.com", "numbers": [moved_number]},
            headers=_h(key_b),
        )
        assert out.status_code == 201, out.text
        printed = await asyncio.to_thread(
            operator_numbers, mongo_url, gateway.db_name, "assign", moved_number, "--org", "acme"
        )
        assert f"{moved_number}: assigned to 'acme' (was 'globex')" in printed
        assert f"outbound trunk {out.json()['id']} of 'globex' still lists it" in printed
        stale = await http.post(
            "/call/outbound",
            json={"assistant_id": theirs.json()["id"], "to_number": "+15558880009",
                  "call_service": "livekit", "trunk_id": out.json()["id"]},
            headers=_h(key_b),
        )  # fmt: skip
        assert stale.status_code == 422, stale.text
        assert stale.json()["error"]["details"][0]["loc"] == ["from_number"]
        deleted = await http.delete(f"/sip/trunks/outbound/{out.json()['id']}", headers=_h(key_b))
        assert deleted.status_code == 204

        # An inbound call to acme's number reaches acme's assistant, seen by acme only.
        assistant = await http.post(
            "/assistants",
            json={"name": "A", "system_prompt": "Help.", "phone_numbers": [acme_number]},
            headers=_h(key_a),
        )
        assert assistant.status_code == 201, assistant.text
        phone = SimulatedTwilioCall(
            base_url=gateway.base_url, public_url=gateway.base_url,
            auth_token=gateway.auth_token, to_number=acme_number,
        )  # fmt: skip
        await phone.answer(http)
        assert phone.call_id is not None
        call = (await http.get(f"/calls/{phone.call_id}", headers=_h(key_a))).json()
        assert call["assistant_id"] == assistant.json()["id"]
        assert (await http.get(f"/calls/{phone.call_id}", headers=_h(key_b))).status_code == 404


async def test_an_assistants_turn_taking_is_validated_and_changed_field_by_field(
    stack: tuple[GatewayProcess, str, str],
) -> None:
    gateway, key_a, _ = stack
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        body = {
            "name": "Patient",
            "system_prompt": "Be brief.",
            "turn_taking": {"end_of_turn": "silence", "silence_ms": 900, "idle_timeout_s": 5},
        }
        created = await http.post("/assistants", json=body, headers=_h(key_a))
        assert created.status_code == 201, created.text
        turn = created.json()["turn_taking"]
        assert (turn["end_of_turn"], turn["silence_ms"], turn["idle_timeout_s"]) == (
            "silence",
            900,
            5,
        )
        assert turn["vad"] == "silero" and "uh-huh" in turn["backchannel_words"]
        url = f"/assistants/{created.json()['id']}"

        # Out-of-range or unknown settings are refused, naming the field; nothing changes.
        for bad, field in (
            ({"pause_ms": 10}, "pause_ms"),
            ({"idle_timeout_s": -1}, "idle_timeout_s"),
            ({"vad": "fancy"}, "vad"),
            ({"keypad_max_digits": 0}, "keypad_max_digits"),
            ({"backchannel_words": [""]}, "backchannel_words"),
            ({"no_such_setting": 1}, "no_such_setting"),
        ):
            refused = await http.patch(url, json={"turn_taking": bad}, headers=_h(key_a))
            assert refused.status_code == 422, (bad, refused.text)
            assert field in str(refused.json()["error"]["details"]), refused.text
            create = await http.post(
                "/assistants", json={**body, "turn_taking": bad}, headers=_h(key_a)
            )
            assert create.status_code == 422, (bad, create.text)
        assert (await http.get(url, headers=_h(key_a))).json()["turn_taking"] == turn

        # A change names only what changes; the rest keeps its value.
        changed = await http.patch(
            url,
            json={"turn_taking": {"backchannel_words": ["genau"], "idle_max_prompts": 0}},
            headers=_h(key_a),
        )
        assert changed.status_code == 200, changed.text
        after = changed.json()["turn_taking"]
        assert after == {**turn, "backchannel_words": ["genau"], "idle_max_prompts": 0}

        # A reprompt's placeholders are checked when a call is placed, like the prompt's.
        templated = await http.patch(
            url,
            json={"turn_taking": {"idle_reprompt": "{{customer}}, are you there?"}},
            headers=_h(key_a),
        )
        assert templated.status_code == 200, templated.text
        number = "+15557770009"
        claimed = await http.post("/numbers", json={"number": number}, headers=_h(key_a))
        assert claimed.status_code == 201, claimed.text
        call_body = {
            "assistant_id": created.json()["id"],
            "to_number": "+15558880009",
            "from_number": number,
            "call_service": "twilio",
            "metadata": {},
        }
        missing = await http.post("/call/outbound", json=call_body, headers=_h(key_a))
        assert missing.status_code == 422, missing.text
        assert missing.json()["error"]["details"][0]["loc"][-1] == "customer"
