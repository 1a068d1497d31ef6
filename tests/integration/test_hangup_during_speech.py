"""The caller hangs up while the agent is speaking: against a real gateway process with
recording on (moto's S3 server) and a webhook receiver, the call's clean-up runs to its
end (call finished, recording completed, report delivered) and nothing is logged as an
error, whether Twilio's `stop` comes alone or with the socket closed right behind it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from tests.integration.test_recorded_calls import (
    assistant_body,
    new_bucket,
    receiver,  # noqa: F401 - a fixture of this module too
    recording_env,
)
from tests.s3_server import S3Server
from tests.webhook_receiver import WebhookReceiver

from .conftest import GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(240)

NUMBER = "+15550007777"


@pytest.fixture(scope="module")
def recorded_gateway(
    mongo_url: str,
    s3_server: S3Server,
    receiver: WebhookReceiver,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    log_dir: Path = tmp_path_factory.mktemp("hangup-gateway")
    env = {**recording_env(s3_server, new_bucket(s3_server)), "LOG_LEVEL": "DEBUG"}
    with run_gateway(mongo_url, log_dir, env) as gateway:
        yield gateway


def _errors_logged(gateway: GatewayProcess, call_id: str) -> list[str]:
    """Log lines of the call at warning level or above, or carrying a traceback."""
    found = []
    # Split on newlines only: str.splitlines() also breaks a JSON line at characters such
    # as U+2028 or \x1c, which JSON text may hold as they are.
    for line in gateway.log_text().split("\n"):
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            found.append(line)  # not ours: a traceback printed by something else
            continue
        if record.get("call_id") not in (call_id, None):
            continue
        if str(record.get("msg", "")).startswith("call costs use the EXAMPLE price table"):
            continue  # start-up: these gateways run on the example prices
        if record.get("level") in ("warning", "error", "critical") or "exc" in record:
            found.append(line)
    return found


@pytest.mark.parametrize(
    ("how", "end_reason"),
    [
        ("stop", "caller-hung-up"),  # `stop`; the gateway closes the socket
        ("stop-and-close", "caller-hung-up"),  # `stop` and the socket gone at once (Twilio)
        ("socket-closed", "stream-disconnected"),  # the socket closes with no `stop` at all
        ("socket-dropped", "stream-disconnected"),  # the TCP connection drops (no close frame)
    ],
)
async def test_hang_up_while_the_agent_speaks_cleans_up_fully(
    recorded_gateway: GatewayProcess,
    receiver: WebhookReceiver,  # noqa: F811
    how: str,
    end_reason: str,
) -> None:
    gateway = recorded_gateway
    headers = {"x-api-key": gateway.api_key}
    booking = espeak_mulaw("I would like to book an appointment.")
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        if not (await http.get("/assistants", headers=headers)).json()["items"]:
            claimed = await http.post("/numbers", json={"number": NUMBER}, headers=headers)
            assert claimed.status_code == 201, claimed.text
            created = await http.post(
                "/assistants", json=assistant_body(receiver.url, NUMBER), headers=headers
            )
            assert created.status_code == 201, created.text
        already = len(receiver.accepted())
        call = SimulatedTwilioCall(
            base_url=gateway.base_url, public_url=gateway.base_url,
            auth_token=gateway.auth_token, to_number=NUMBER,
        )  # fmt: skip
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=15)
            await call.wait_agent_silent()
            call.say(booking)
            await call.wait_said()
            await call.wait_agent_audio(within_s=20)  # the long reply is being paced out
            await asyncio.sleep(0.5)  # into the reply ...
            await call.wait_agent_audio(within_s=20)  # ... and its audio still coming
            assert call.agent_speaking
            if how == "stop":
                await call.stop()
                assert call.log.close_code == 1000
            elif how == "stop-and-close":
                await call.hang_up()
            elif how == "socket-closed":
                await call.aclose()
            else:
                await call.drop()
        finally:
            await call.aclose()
        assert call.call_id is not None

        accepted = await asyncio.to_thread(receiver.wait_accepted, already + 1, within_s=60)
        stored = (await http.get(f"/calls/{call.call_id}", headers=headers)).json()

    report = next(r.json() for r in accepted if r.json()["call"]["id"] == call.call_id)
    assert stored["status"] == "completed" and stored["end_reason"] == end_reason
    assert stored["recording"]["status"] == "complete"
    assert report["call"]["recording"]["status"] == "complete"
    assert report["call"]["end_reason"] == end_reason
    # The reply cut by the hang-up is stored as heard, after the caller's question.
    assert [t["speaker"] for t in stored["transcript"]][-2:] == ["caller", "agent"]
    assert stored["transcript"][-1]["interrupted"] is True
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        metrics = (await http.get("/metrics")).text
    assert "\nvoice_gateway_calls_active 0\n" in metrics
    assert _errors_logged(gateway, call.call_id) == []
