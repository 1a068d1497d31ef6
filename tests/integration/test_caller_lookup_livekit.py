"""Caller lookup for a LiveKit SIP caller: a real livekit-server, a gateway it sends its
webhooks to, and a CRM's lookup endpoint on loopback. The agent joins the room and greets
the caller by the name the lookup gave, after the lookup was asked with the SIP numbers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import GatewayProcess, run_gateway
from tests.integration.test_livekit_calls import _call_in
from tests.livekit_caller import dispatch_attributes, sip_caller_joins
from tests.livekit_server import LiveKitServer, run_livekit_server
from tests.lookup_server import LookupServer, Scripted, run_lookup_server
from tests.net import free_port

pytestmark = pytest.mark.timeout(180)

NUMBER = "+15557780001"


@pytest.fixture(scope="module")
def room_stack(
    mongo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, LiveKitServer, LookupServer]]:
    port = free_port()
    work = tmp_path_factory.mktemp("lk-lookup")
    webhook = f"http://127.0.0.1:{port}/livekit/webhook"
    with (
        run_lookup_server() as lookup,
        run_livekit_server(work, webhook_url=webhook) as server,
    ):
        env: dict[str, str | None] = {
            "LIVEKIT_URL": server.url,
            "LIVEKIT_API_KEY": server.api_key,
            "LIVEKIT_API_SECRET": server.api_secret,
            "WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
        }
        with run_gateway(mongo_url, work, env, port=port) as gateway:
            yield gateway, server, lookup


async def test_a_sip_caller_is_greeted_with_the_lookups_values(
    room_stack: tuple[GatewayProcess, LiveKitServer, LookupServer],
) -> None:
    gateway, server, lookup = room_stack
    key = gateway.api_key
    path = "/crm/sip"
    lookup.scripts[path] = Scripted.json({"metadata": {"name": "Dana", "room": "elsewhere"}})
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        secret = (await http.get("/webhooks/secret", headers={"x-api-key": key})).json()
        lookup.secrets.append(secret["secret"])
        assistant: dict[str, object] = {
            "name": "Rooms",
            "system_prompt": "Help the caller.",
            "greeting": "Hello {{name}}, you reached the room agent.",
            "inbound_lookup_url": lookup.url(path),
        }
        assistant_id, rule_attributes = await dispatch_attributes(
            http, key, server.url, server.api_key, server.api_secret, assistant, [NUMBER]
        )
        room, attributes, caller = await sip_caller_joins(
            server, rule_attributes, NUMBER, "sip_caller"
        )
        try:
            await caller.wait_agent_audio(within_s=30)
            await caller.wait_agent_silent()
            call = await _call_in(http, key, room)
        finally:
            await caller.leave()
        stored = (await http.get(f"/calls/{call['id']}", headers={"x-api-key": key})).json()
    # The gateway's own values win: the room stays the call's room.
    assert stored["metadata"] == {"name": "Dana", "room": room}
    assert stored["assistant_id"] == assistant_id
    assert stored["transcript"][0]["text"] == "Hello Dana, you reached the room agent."
    [seen] = lookup.requests_to(path)
    assert seen.verified_by == tuple(lookup.secrets)
    assert seen.json()["call"] == {
        "from_number": "+15550001111",
        "to_number": NUMBER,
        "transport": "livekit",
        "call_sid": attributes["sip.callID"],
        "assistant_id": assistant_id,
    }
