"""Caller lookup end to end: a real gateway process, calls placed by the simulated Twilio
caller, and a CRM's lookup endpoint on loopback (tests/lookup_server.py) that answers in
time, too late, with errors or with garbage. The caller hears a greeting whatever it does;
what the lookup did is counted at /metrics."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.demo.simulated_twilio import SimulatedTwilioCall
from tests.integration.test_management_api import create_key
from tests.lookup_server import LookupServer, Scripted, run_lookup_server

from .conftest import GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(180)

_numbers = iter(range(1000, 9999))


def _h(key: str) -> dict[str, str]:
    return {"x-api-key": key}


class Stack:
    def __init__(self, gateway: GatewayProcess, key: str, other_key: str, lookup: LookupServer):
        self.gateway, self.key, self.other_key, self.lookup = gateway, key, other_key, lookup

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.gateway.base_url, timeout=30)

    async def assistant(
        self, http: httpx.AsyncClient, *, greeting: str, lookup_path: str | None, number: bool
    ) -> tuple[str, str]:
        """A new assistant of the first organisation (on a fresh number when `number`);
        returns its id and number."""
        phone = f"+1555013{next(_numbers):04d}" if number else ""
        if number:
            claimed = await http.post("/numbers", json={"number": phone}, headers=_h(self.key))
            assert claimed.status_code == 201, claimed.text
        body: dict[str, Any] = {
            "name": "Shop",
            "system_prompt": "You answer questions about the shop.",
            "greeting": greeting,
            "phone_numbers": [phone] if number else [],
        }
        if lookup_path is not None:
            body["inbound_lookup_url"] = self.lookup.url(lookup_path)
        created = await http.post("/assistants", json=body, headers=_h(self.key))
        assert created.status_code == 201, created.text
        return created.json()["id"], phone

    def caller(self, number: str) -> SimulatedTwilioCall:
        gw = self.gateway
        return SimulatedTwilioCall(
            base_url=gw.base_url, public_url=gw.base_url, auth_token=gw.auth_token,
            to_number=number, from_number="+15550007777",
        )  # fmt: skip

    async def greeted(self, http: httpx.AsyncClient, number: str) -> tuple[dict[str, Any], str]:
        """Call `number` until its greeting has played, hang up; the stored call and the
        text of its first agent turn."""
        call = self.caller(number)
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=20)
            await call.wait_agent_silent()
            await call.stop()
        finally:
            await call.aclose()
        stored = (await http.get(f"/calls/{call.call_id}", headers=_h(self.key))).json()
        first = stored["transcript"][0]
        assert first["speaker"] == "agent"
        return stored, first["text"]

    async def lookups(self, http: httpx.AsyncClient) -> dict[str, int]:
        text = (await http.get("/metrics")).text
        found = re.findall(r'voice_gateway_inbound_lookups_total\{outcome="(\w+)"\} (\d+)', text)
        return {outcome: int(n) for outcome, n in found}


@pytest.fixture(scope="module")
def stack(mongo_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    db = "lookup_" + uuid.uuid4().hex[:8]
    key = create_key(mongo_url, db, "shop")  # the first: the default organisation
    other_key = create_key(mongo_url, db, "rival")
    env: dict[str, str | None] = {
        "MONGODB_DB": db,
        "GATEWAY_API_KEY": None,
        "WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
        "INBOUND_LOOKUP_TIMEOUT_S": "1.5",
    }
    with (
        run_lookup_server() as lookup,
        run_gateway(mongo_url, tmp_path_factory.mktemp("lookup"), env) as gateway,
    ):
        secret = httpx.get(gateway.base_url + "/webhooks/secret", headers=_h(key)).json()
        lookup.secrets.append(secret["secret"])
        yield Stack(gateway, key, other_key, lookup)


async def test_an_answer_in_time_fills_the_greeting_and_is_signed(stack: Stack) -> None:
    path = "/crm/ok"
    stack.lookup.scripts[path] = Scripted.json(
        {"metadata": {"name": "Dana", "order": "A-17"}, "ignored": True}
    )
    async with stack.http() as http:
        before = await stack.lookups(http)
        assistant_id, number = await stack.assistant(
            http, greeting="Hello {{name}}, calling about order {{order}}?",
            lookup_path=path, number=True,
        )  # fmt: skip
        stored, greeting = await stack.greeted(http, number)
        after = await stack.lookups(http)
    assert greeting == "Hello Dana, calling about order A-17?"
    assert stored["assistant_id"] == assistant_id
    assert stored["metadata"] == {"name": "Dana", "order": "A-17"}
    assert after["ok"] == before["ok"] + 1
    [seen] = stack.lookup.requests_to(path)
    assert seen.verified_by == tuple(stack.lookup.secrets)  # signed with the org's secret
    assert seen.request_id.startswith("lkp_")
    body = seen.json()
    assert body["event"] == "call.inbound"
    assert body["call"] == {
        "from_number": "+15550007777",
        "to_number": number,
        "transport": "twilio",
        "call_sid": stored["call_sid"],
        "assistant_id": assistant_id,
    }


async def test_the_assistant_the_answer_names_answers_instead(stack: Stack) -> None:
    path = "/crm/billing"
    async with stack.http() as http:
        billing_id, _ = await stack.assistant(
            http, greeting="Billing here. Hello {{name}}.", lookup_path=None, number=False
        )
        stack.lookup.scripts[path] = Scripted.json(
            {"assistant_id": billing_id, "metadata": {"name": "Dana"}}
        )
        _, number = await stack.assistant(
            http, greeting="Hello, this is the front desk.", lookup_path=path, number=True
        )
        stored, greeting = await stack.greeted(http, number)
    assert greeting == "Billing here. Hello Dana."
    assert stored["assistant_id"] == billing_id


async def test_a_lookup_too_slow_leaves_the_defaults_and_is_counted(stack: Stack) -> None:
    path = "/crm/slow"
    stack.lookup.scripts[path] = Scripted.json({"metadata": {"name": "Dana"}}, slow=True)
    async with stack.http() as http:
        before = await stack.lookups(http)
        assistant_id, number = await stack.assistant(
            http, greeting="Hello, this is the shop.", lookup_path=path, number=True
        )
        stored, greeting = await stack.greeted(http, number)
        after = await stack.lookups(http)
    stack.lookup.release.set()  # the CRM answers at last; nobody is waiting any more
    assert greeting == "Hello, this is the shop."
    assert stored["assistant_id"] == assistant_id and stored["metadata"] == {}
    assert after["timeout"] == before["timeout"] + 1
    assert len(stack.lookup.requests_to(path)) == 1
    assert "caller lookup failed (timeout)" in stack.gateway.log_text()


def _too_many_keys() -> Scripted:
    return Scripted.json({"metadata": {f"k{i}": "v" for i in range(100)}})  # > 64 keys


@pytest.mark.parametrize(
    ("script", "outcome"),
    [
        (Scripted.json({"metadata": {"name": "Dana"}}, status=500), "error"),
        (Scripted(status=302, body=b""), "error"),  # redirects are not followed
        (Scripted(body=b"<html>Dana</html>", content_type="text/html"), "invalid"),
        (Scripted.json({"metadata": ["name", "Dana"]}), "invalid"),
        (Scripted.json({"metadata": {"name": "x" * 70_000}}), "invalid"),  # over 64 KiB
        (_too_many_keys(), "invalid"),  # over the API's metadata limits
        (Scripted.json({"assistant_id": "0123456789abcdef01234567"}), "invalid"),
        ("other-org", "invalid"),
    ],
    ids=[
        "http-500", "redirect", "not-json", "wrong-shape", "too-large", "too-many-keys",
        "unknown-assistant", "another-orgs-assistant",
    ],
)  # fmt: skip
async def test_a_failing_or_invalid_answer_leaves_the_defaults(
    stack: Stack, script: Scripted | str, outcome: str
) -> None:
    path = f"/crm/bad-{uuid.uuid4().hex[:8]}"
    async with stack.http() as http:
        if script == "other-org":
            theirs = await http.post(
                "/assistants",
                json={"name": "Rival", "system_prompt": "Sell.", "greeting": "Rival here."},
                headers=_h(stack.other_key),
            )
            assert theirs.status_code == 201, theirs.text
            script = Scripted.json({"assistant_id": theirs.json()["id"]})
        assert isinstance(script, Scripted)
        stack.lookup.scripts[path] = script
        before = await stack.lookups(http)
        assistant_id, number = await stack.assistant(
            http, greeting="Hello, this is the shop.", lookup_path=path, number=True
        )
        call = stack.caller(number)
        stream_url, params = await call.answer(http)  # answered: TwiML with a stream
        stored = (await http.get(f"/calls/{call.call_id}", headers=_h(stack.key))).json()
        after = await stack.lookups(http)
    assert stream_url and params["call_id"] == stored["id"]
    assert stored["assistant_id"] == assistant_id and stored["metadata"] == {}
    assert after[outcome] == before[outcome] + 1
    assert len(stack.lookup.requests_to(path)) == 1


async def test_a_named_assistant_that_cannot_greet_leaves_the_defaults(stack: Stack) -> None:
    path = "/crm/needs-more"
    async with stack.http() as http:
        picky_id, _ = await stack.assistant(
            http, greeting="Hello {{name}} from {{city}}.", lookup_path=None, number=False
        )
        stack.lookup.scripts[path] = Scripted.json(
            {"assistant_id": picky_id, "metadata": {"name": "Dana"}}  # no city
        )
        before = await stack.lookups(http)
        assistant_id, number = await stack.assistant(
            http, greeting="Hello, this is the shop.", lookup_path=path, number=True
        )
        stored, greeting = await stack.greeted(http, number)
        after = await stack.lookups(http)
    assert greeting == "Hello, this is the shop."
    assert stored["assistant_id"] == assistant_id and stored["metadata"] == {}
    assert after["invalid"] == before["invalid"] + 1


async def test_a_placeholder_left_without_a_value_answers_as_before(stack: Stack) -> None:
    """Nothing fills {{name}} (the lookup failed): the caller hears what a call of such an
    assistant heard before lookups existed, and no call is stored."""
    path = "/crm/down"
    stack.lookup.scripts[path] = Scripted(status=503, body=b"")
    async with stack.http() as http:
        _, number = await stack.assistant(
            http, greeting="Hello {{name}}.", lookup_path=path, number=True
        )
        call = stack.caller(number)
        with pytest.raises(RuntimeError, match="no <Connect><Stream>") as refused:
            await call.answer(http)
    assert "<Say>" in str(refused.value) and "<Hangup" in str(refused.value)


async def test_the_organisation_url_serves_assistants_without_one(stack: Stack) -> None:
    path = "/crm/org"
    stack.lookup.scripts[path] = Scripted.json({"metadata": {"name": "Dana"}})
    async with stack.http() as http:
        shown = await http.get("/organization", headers=_h(stack.key))
        assert shown.status_code == 200 and shown.json()["inbound_lookup_url"] is None
        patched = await http.patch(
            "/organization", json={"inbound_lookup_url": stack.lookup.url(path)},
            headers=_h(stack.key),
        )  # fmt: skip
        assert patched.status_code == 200, patched.text
        assert patched.json()["inbound_lookup_url"] == stack.lookup.url(path)
        try:
            _, number = await stack.assistant(
                http, greeting="Hi {{name}}, welcome back.", lookup_path=None, number=True
            )
            _, greeting = await stack.greeted(http, number)
        finally:
            cleared = await http.patch(
                "/organization", json={"inbound_lookup_url": None}, headers=_h(stack.key)
            )
        other = await http.get("/organization", headers=_h(stack.other_key))
    assert greeting == "Hi Dana, welcome back."
    assert cleared.json()["inbound_lookup_url"] is None
    assert other.json()["inbound_lookup_url"] is None  # another organisation is untouched


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.1/lookup", "http://localhost:9000/x", "http://169.254.169.254/", "ftp://a.b/"],
)
async def test_an_unsafe_url_is_refused_when_saved(stack: Stack, url: str) -> None:
    async with stack.http() as http:
        body = {"name": "A", "system_prompt": "Help.", "inbound_lookup_url": url}
        created = await http.post("/assistants", json=body, headers=_h(stack.key))
        fine = await http.post(
            "/assistants", json={"name": "A", "system_prompt": "Help."}, headers=_h(stack.key)
        )
        patched = await http.patch(
            f"/assistants/{fine.json()['id']}", json={"inbound_lookup_url": url},
            headers=_h(stack.key),
        )  # fmt: skip
        org = await http.patch(
            "/organization", json={"inbound_lookup_url": url}, headers=_h(stack.key)
        )
        shown = await http.get(f"/assistants/{fine.json()['id']}", headers=_h(stack.key))
    for refused in (created, patched, org):
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert "inbound_lookup_url" in error["message"] or any(
            "inbound_lookup_url" in d["loc"] for d in error["details"]
        )
        assert any("inbound_lookup_url" in d["loc"] for d in error["details"])
    assert shown.json()["inbound_lookup_url"] is None


@pytest.mark.parametrize(
    "metadata", [{"customer.name": "Dana"}, {"$x": "1"}], ids=["dotted-key", "dollar-key"]
)
async def test_keys_a_stored_call_cannot_hold_leave_the_default_greeting(
    stack: Stack, metadata: dict[str, str]
) -> None:
    """A stored document's keys hold no `.` and begin with no `$`: such an answer is invalid,
    and the caller hears the greeting (it once stopped the call with a 503)."""
    path = f"/crm/keys-{uuid.uuid4().hex[:8]}"
    stack.lookup.scripts[path] = Scripted.json({"metadata": metadata})
    async with stack.http() as http:
        before = await stack.lookups(http)
        assistant_id, number = await stack.assistant(
            http, greeting="Hello, this is the shop.", lookup_path=path, number=True
        )
        stored, greeting = await stack.greeted(http, number)
        after = await stack.lookups(http)
    assert greeting == "Hello, this is the shop."
    assert stored["assistant_id"] == assistant_id and stored["metadata"] == {}
    assert after["invalid"] == before["invalid"] + 1
    assert len(stack.lookup.requests_to(path)) == 1
    assert "metadata keys that are no placeholder names" in stack.gateway.log_text()
