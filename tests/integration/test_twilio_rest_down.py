"""Twilio's REST API unreachable: the `twilio` SDK lets requests' own errors through (a
refused connection, a timeout), which are not `TwilioException`s. Against a real gateway
process whose Twilio base URL is a closed port, placing an outbound call answers 502 in
the one JSON error shape, the stored call is `failed/carrier-unreachable` (not `queued`
forever) and its report reaches the webhook receiver; an agent's transfer mid-call fails,
is logged, and the call goes on; the REST client itself turns a refused connection and a
server that never answers into the telephony error tree."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from telephony.errors import CarrierUnavailable, TransferError
from telephony.twilio.rest import TwilioCalls
from tests.net import free_port
from tests.webhook_receiver import WebhookReceiver, run_webhook_receiver

from .conftest import FakeServer, GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(120)

TWILIO_ACCOUNT = "AC" + "0" * 32


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with run_webhook_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def gateway_without_twilio(
    mongo_url: str, receiver: WebhookReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    env: dict[str, str | None] = {
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT,
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens there
        "WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
    }
    with run_gateway(mongo_url, tmp_path_factory.mktemp("rest-down"), env) as gateway:
        yield gateway


async def test_an_outbound_call_with_twilio_unreachable_is_502_and_failed(
    gateway_without_twilio: GatewayProcess, receiver: WebhookReceiver
) -> None:
    gateway = gateway_without_twilio
    headers = {"x-api-key": gateway.api_key}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        assistant = await http.post(
            "/assistants",
            headers=headers,
            json={
                "name": "Reminders",
                "system_prompt": "You remind people of appointments.",
                "greeting": "Hello, this is a reminder.",
                "webhook_url": receiver.url,
            },
        )
        assert assistant.status_code == 201, assistant.text
        claimed = await http.post("/numbers", headers=headers, json={"number": "+15557770001"})
        assert claimed.status_code == 201, claimed.text
        placed = await http.post(
            "/call/outbound",
            headers=headers,
            json={
                "assistant_id": assistant.json()["id"],
                "to_number": "+15558880002",
                "from_number": "+15557770001",
                "call_service": "twilio",
            },
        )
        assert placed.status_code == 502, placed.text
        error = placed.json()["error"]
        assert error["code"] == "carrier_unreachable"
        assert "Twilio is unreachable" in error["message"]
        assert "127.0.0.1" not in error["message"]  # no internals for the API client

        listed = (await http.get("/calls", headers=headers)).json()["items"]
        [call] = [c for c in listed if c["assistant_id"] == assistant.json()["id"]]
        assert call["status"] == "failed" and call["end_reason"] == "carrier-unreachable"
        assert call["direction"] == "outbound" and call["ended_at"] is not None
        assert (await http.get("/health")).status_code == 200

    accepted = await asyncio.to_thread(receiver.wait_accepted, 1, within_s=30)
    report = next(r.json()["call"] for r in accepted if r.json()["call"]["id"] == call["id"])
    assert report["status"] == "failed" and report["end_reason"] == "carrier-unreachable"


@pytest.fixture(scope="module")
def transferring_gateway(
    mongo_url: str,
    openai_base_url: str,
    deepgram_fake: FakeServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    """The agent on the OpenAI fake (it calls `transfer_call` when asked to transfer), the
    caller heard by the Deepgram fake (scripted words), Twilio's REST API at a closed port."""
    env: dict[str, str | None] = {
        "OPENAI_API_KEY": "test-openai-key",
        "OPENAI_BASE_URL": openai_base_url,
        "DEEPGRAM_API_KEY": "test-deepgram-key",
        "DEEPGRAM_BASE_URL": deepgram_fake.url.replace("http://", "ws://"),
        "TWILIO_ACCOUNT_SID": TWILIO_ACCOUNT,
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{free_port()}",
        "ASSISTANT_TRANSFER_TARGETS": '["+15550001111"]',
    }
    with run_gateway(mongo_url, tmp_path_factory.mktemp("transfer-down"), env) as gateway:
        yield gateway


async def test_a_transfer_with_twilio_unreachable_is_logged_and_the_call_goes_on(
    transferring_gateway: GatewayProcess, deepgram_fake: FakeServer
) -> None:
    gateway = transferring_gateway
    deepgram_fake.reset()
    deepgram_fake.control(
        utterances=["Please transfer me to a person.", "What are your opening hours?"]
    )
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        call = SimulatedTwilioCall(
            base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token
        )
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=15)
            await call.wait_agent_silent()
            call.say(espeak_mulaw("Please transfer me to a person."))
            await call.wait_said()
            await call.wait_agent_audio(within_s=20)  # "Transferring you now."
            await call.wait_agent_silent()
            call.say(espeak_mulaw("What are your opening hours?"))  # still on the line
            await call.wait_said()
            await call.wait_agent_audio(within_s=20)
            await call.wait_agent_silent()
            await call.stop()
            assert call.log.close_code == 1000
        finally:
            await call.aclose()
        stored = (
            await http.get(f"/calls/{call.call_id}", headers={"x-api-key": gateway.api_key})
        ).json()
    turns = [(t["speaker"], t["text"]) for t in stored["transcript"]]
    assert ("agent", "Transferring you now.") in turns
    assert turns[-1] == ("agent", "You said: What are your opening hours?. Anything else?")
    assert stored["status"] == "completed" and stored["end_reason"] == "caller-hung-up"
    logged = [line for line in gateway.log_text().splitlines() if "transfer failed" in line]
    assert len(logged) == 1 and "Twilio is unreachable" in logged[0]


def _client(base_url: str, timeout_s: float = 10.0) -> TwilioCalls:
    return TwilioCalls(
        account_sid=TWILIO_ACCOUNT,
        auth_token="test-twilio-token",
        api_base_url=base_url,
        timeout_s=timeout_s,
    )


async def test_a_refused_connection_is_carrier_unavailable_and_a_failed_transfer() -> None:
    rest = _client(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CarrierUnavailable) as placing:
        await rest.create_call(
            to="+15558880002", from_="+15557770001", twiml="<Response/>", status_callback="x"
        )
    assert placing.value.status is None and not placing.value.caller_fault
    with pytest.raises(TransferError, match="unreachable"):
        await rest.transfer("CA" + "1" * 32, "+15559990000")


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a stalled API)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        listener.close()


async def test_a_twilio_that_never_answers_times_out_as_carrier_unavailable(
    silent_server: str,
) -> None:
    rest = _client(silent_server, timeout_s=1.0)
    with pytest.raises(CarrierUnavailable, match="Timeout"):
        await rest.create_call(
            to="+15558880002", from_="+15557770001", twiml="<Response/>", status_callback="x"
        )
    with pytest.raises(TransferError, match="Timeout"):
        await rest.transfer("CA" + "1" * 32, "+15559990000")
