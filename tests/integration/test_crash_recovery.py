"""The crash test: a gateway is SIGKILLed while an end-call report waits for a retry and
while a call is live with its recording half uploaded. A restarted gateway delivers both
reports (each accepted once), the killed call keeps its finished turns, and its recording
is completed from the parts uploaded before the kill, sample-exact."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from audio.codec import ulaw_decode
from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from tests.s3_server import S3Server
from tests.webhook_receiver import WebhookReceiver, run_webhook_receiver
from webhooks.signing import verify

from .conftest import GatewayProcess, run_gateway
from .test_recorded_calls import NUMBER, assistant_body, new_bucket, recording_env, stereo

pytestmark = pytest.mark.timeout(240)


def _phone(gateway: GatewayProcess, *, record_audio: bool = False) -> SimulatedTwilioCall:
    return SimulatedTwilioCall(
        base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token,
        to_number=NUMBER, record_audio=record_audio,
    )  # fmt: skip


async def _wait_for(predicate: object, what: str, within_s: float = 20.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


def _parts(s3: S3Server, bucket: str) -> list[dict[str, object]]:
    """The parts of the one open multipart upload in `bucket` (none if there is none)."""
    client = s3.client()
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    if not uploads:
        return []
    upload = uploads[0]
    parts: list[dict[str, object]] = client.list_parts(
        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
    ).get("Parts", [])
    return parts


def _attempts_for(receiver: WebhookReceiver, call_id: str) -> list[int]:
    return [r.answered for r in receiver.received if r.json()["call"]["id"] == call_id]


async def test_a_killed_gateway_loses_no_report_no_turn_and_no_uploaded_audio(
    mongo_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = new_bucket(s3_server)
    env = {
        **recording_env(s3_server, bucket),
        "WEBHOOK_RETRY_BASE_S": "1",
        "WEBHOOK_RETRY_CAP_S": "1",
        "WEBHOOK_MAX_ATTEMPTS": "100",
        "CALL_LEASE_S": "3",
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with run_webhook_receiver() as receiver:
        receiver.script[:] = [500] * 10_000  # the CRM is down until the restart
        with run_gateway(mongo_url, tmp_path / "a", env) as first:
            headers = {"x-api-key": first.api_key}
            async with httpx.AsyncClient(base_url=first.base_url, timeout=10) as http:
                claimed = await http.post("/numbers", json={"number": NUMBER}, headers=headers)
                assert claimed.status_code == 201, claimed.text
                # Reports only (the default sends call.analyzed too: its own tests).
                body = {**assistant_body(receiver.url, NUMBER), "webhook_events": ["call.ended"]}
                created = await http.post("/assistants", json=body, headers=headers)
                assert created.status_code == 201, created.text
                secret = (await http.get("/webhooks/secret", headers=headers)).json()["secret"]

                # Call 1 ends normally; its report is refused and waits for a retry.
                ended = _phone(first)
                await ended.start(http)
                await ended.wait_agent_audio(within_s=10)
                await ended.wait_agent_silent()
                await ended.stop()
                assert ended.call_id is not None
                ended_id = ended.call_id
                await _wait_for(lambda: _attempts_for(receiver, ended_id), "no first attempt")

                # Call 2 is live: a turn answered, recording parts uploaded ... then SIGKILL.
                live = _phone(first, record_audio=True)
                await live.start(http)
                try:
                    await live.wait_agent_audio(within_s=10)
                    await live.wait_agent_silent()
                    live.say(espeak_mulaw("What are your opening hours?"))
                    await live.wait_said()
                    await live.wait_agent_audio(within_s=15)
                    await live.wait_agent_silent()
                    await _wait_for(lambda: len(_parts(s3_server, bucket)) >= 3, "no parts")
                    os.kill(first.pid, signal.SIGKILL)
                    await live.wait_closed(within_s=10)
                finally:
                    await live.aclose()
        assert live.call_id is not None
        parts_at_kill = _parts(s3_server, bucket)
        uploaded = sum(int(str(p["Size"])) for p in parts_at_kill)
        assert set(_attempts_for(receiver, ended_id)) == {500}  # still owed at the kill

        receiver.script.clear()  # the CRM is back
        same = {
            **env,
            "MONGODB_DB": first.db_name,
            "TWILIO_AUTH_TOKEN": first.auth_token,
            "GATEWAY_API_KEY": first.api_key,
        }
        with run_gateway(mongo_url, tmp_path / "b", same) as second:
            accepted = await asyncio.to_thread(receiver.wait_accepted, 2, within_s=60)
            async with httpx.AsyncClient(base_url=second.base_url, timeout=10) as http:
                stored = (await http.get(f"/calls/{live.call_id}", headers=headers)).json()
                report = {r.json()["call"]["id"]: r for r in accepted}
                assert set(report) == {ended_id, live.call_id}
                link = report[live.call_id].json()["call"]["recording_url"]
                download = await http.get(link)
        assert "finished a call whose gateway stopped" in second.log_text()

    # Both reports: accepted exactly once each, signed, the first after its refusals.
    for request in accepted:
        verify(secret, timestamp=request.timestamp, body=request.body,
               signature=request.signature, now=time.time())  # fmt: skip
    assert len({r.delivery_id for r in accepted}) == 2
    first_attempts = _attempts_for(receiver, ended_id)
    assert first_attempts[-1] == 200 and first_attempts.count(200) == 1
    assert _attempts_for(receiver, live.call_id) == [200]

    # The killed call: finished by the restarted gateway, with the turns said before the kill.
    lost = report[live.call_id].json()["call"]
    assert lost["status"] == "failed" and lost["end_reason"] == "gateway-lost"
    speakers = [t["speaker"] for t in lost["transcript"]]
    assert speakers[:3] == ["agent", "caller", "agent"]
    assert "opening hours" in lost["transcript"][1]["text"]
    assert [t["text"] for t in stored["transcript"]] == [t["text"] for t in lost["transcript"]]

    # Its recording: completed from the parts uploaded before the kill, audio exact.
    recording = lost["recording"]
    assert recording["status"] == "complete" and recording["salvaged"] is True
    assert recording["size_bytes"] == uploaded and len(download.content) == uploaded
    pcm = stereo(download.content)
    assert pcm.shape[0] == (uploaded - 44) // 4
    covered = [(ts, frame) for ts, frame in live.log.sent if ts * 8 + 160 <= pcm.shape[0]]
    assert len(covered) > 100
    for ts, frame in covered:
        assert np.array_equal(pcm[ts * 8 : ts * 8 + 160, 0], ulaw_decode(frame)), ts
    assert np.count_nonzero(pcm[:, 1]) > 0  # the greeting is on the agent's side
