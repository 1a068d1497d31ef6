"""End to end: a Twilio call through a real gateway process with recording on, a real
S3-compatible server and a webhook receiver on loopback that refuses the first attempts.

The recording is checked sample by sample against what the simulated phone sent and
played; the end-call report is checked as a CRM would check it (signature, one accepted
delivery, the transcript, a working recording link)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from audio.codec import ulaw_decode
from audio.stereo import read_wav
from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from tests.s3_server import TEST_PART_MIN_BYTES, S3Server
from tests.webhook_receiver import WebhookReceiver, run_webhook_receiver
from webhooks.signing import verify

from .conftest import GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(180)

RATE = 8000
NUMBER = "+15550009999"


def recording_env(s3: S3Server, bucket: str) -> dict[str, str | None]:
    """Gateway settings: record to `bucket` in small parts, reach loopback webhooks fast."""
    return {
        **s3.env(bucket),
        "RECORDING_PART_BYTES": str(TEST_PART_MIN_BYTES),
        "WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
        "WEBHOOK_RETRY_BASE_S": "0.2",
        "WEBHOOK_RETRY_CAP_S": "1",
        "RECORDING_GRACE_S": "2",
    }


def new_bucket(s3: S3Server) -> str:
    name = "rec-" + uuid.uuid4().hex[:12]
    s3.client().create_bucket(Bucket=name)
    return name


REPORT_ONLY = ("call.ended",)


def assistant_body(
    webhook_url: str, number: str, *, webhook_events: tuple[str, ...] | None = REPORT_ONLY
) -> dict[str, object]:
    """An assistant whose webhook gets `webhook_events` (the report only, by default: these
    tests count reports; None: the API's default subscription)."""
    body: dict[str, object] = {
        "name": "Recorded line",
        "system_prompt": "You answer questions about the shop.",
        "greeting": "Hello, you are on the recorded line. How can I help?",
        "webhook_url": webhook_url,
        "phone_numbers": [number],
    }
    if webhook_events is not None:
        body["webhook_events"] = list(webhook_events)
    return body


def stereo(wav_bytes: bytes) -> np.ndarray:
    wav, samples = read_wav(wav_bytes)
    assert (wav.encoding, wav.rate) == ("pcm16", RATE)
    return samples


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with run_webhook_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def recorded(
    mongo_url: str,
    s3_server: S3Server,
    receiver: WebhookReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, str]]:
    bucket = new_bucket(s3_server)
    log_dir: Path = tmp_path_factory.mktemp("recorded-gateway")
    with run_gateway(mongo_url, log_dir, recording_env(s3_server, bucket)) as gateway:
        yield gateway, bucket


async def test_a_twilio_call_is_recorded_in_stereo_and_reported_once(
    recorded: tuple[GatewayProcess, str], receiver: WebhookReceiver, s3_server: S3Server
) -> None:
    gateway, bucket = recorded
    receiver.script[:] = [503, 500]  # the CRM is down for the first two attempts
    headers = {"x-api-key": gateway.api_key}
    hours, booking, yes = (
        espeak_mulaw(t)
        for t in (
            "What are your opening hours?",
            "I would like to book an appointment.",
            "Yes please.",
        )
    )
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        claimed = await http.post("/numbers", json={"number": NUMBER}, headers=headers)
        assert claimed.status_code == 201, claimed.text
        created = await http.post(
            "/assistants", json=assistant_body(receiver.url, NUMBER), headers=headers
        )
        assert created.status_code == 201, created.text
        secret = (await http.get("/webhooks/secret", headers=headers)).json()["secret"]
        call = SimulatedTwilioCall(
            base_url=gateway.base_url, public_url=gateway.base_url,
            auth_token=gateway.auth_token, to_number=NUMBER, record_audio=True,
        )  # fmt: skip
        await call.start(http)
        try:
            await call.wait_agent_audio(within_s=10)
            await call.wait_agent_silent()
            call.say(hours)
            await call.wait_said()
            await call.wait_agent_audio(within_s=15)
            await call.wait_agent_silent()
            call.say(booking)
            await call.wait_said()
            await call.wait_agent_audio(within_s=15)
            await asyncio.sleep(1.0)
            call.say(yes)  # barge-in
            for _ in range(100):
                if call.log.clears:
                    break
                await asyncio.sleep(0.02)
            assert call.log.clears
            await call.wait_said()
            await call.wait_agent_audio(within_s=15)
            await call.wait_agent_silent()
            await call.stop()
        finally:
            await call.aclose()

        accepted = await asyncio.to_thread(receiver.wait_accepted, 1, within_s=30)
        stored = (await http.get(f"/calls/{call.call_id}", headers=headers)).json()
        deliveries = (
            await http.get(
                "/webhooks/deliveries", params={"call_id": call.call_id}, headers=headers
            )
        ).json()["items"]
        assert stored["recording_url"]
        download = await http.get(stored["recording_url"])

    # ---- the report: three attempts, one delivery id, accepted once, signed
    attempts = [r for r in receiver.received if r.delivery_id == accepted[0].delivery_id]
    assert [r.answered for r in attempts] == [503, 500, 200]
    assert len(accepted) == 1
    for request in attempts:
        verify(secret, timestamp=request.timestamp, body=request.body,
               signature=request.signature, now=time.time())  # fmt: skip
    event = accepted[0].json()
    assert event["type"] == "call.ended" and event["id"] == accepted[0].delivery_id
    report = event["call"]
    assert report["id"] == call.call_id and report["direction"] == "inbound"
    assert report["to_number"] == NUMBER and report["transport"] == "twilio"
    assert report["end_reason"] == "caller-hung-up" and report["duration_s"] > 5
    transcript = report["transcript"]
    assert transcript[0]["speaker"] == "agent" and "recorded line" in transcript[0]["text"]
    assert [t for t in transcript if t["interrupted"]], "the barge-in is in the report"
    assert report["recording"]["status"] == "complete"
    assert report["recording"]["key"].endswith(f"/{call.call_id}.wav")
    assert report["latency_p50_ms"]["first_frame_out"] > 0
    assert len(deliveries) == 1 and deliveries[0]["status"] == "delivered"
    assert [a["status_code"] for a in deliveries[0]["attempts"]] == [503, 500, 200]

    # ---- the recording: the object, its presigned link, both legs on one timeline
    s3_bytes = s3_server.client().get_object(Bucket=bucket, Key=report["recording"]["key"])
    data = s3_bytes["Body"].read()
    assert download.status_code == 200 and download.content == data
    assert stored["recording"]["size_bytes"] == len(data)
    assert len(data) > 4 * TEST_PART_MIN_BYTES  # several parts
    pcm = stereo(data)
    sent = call.log.sent
    # Caller left: every frame the phone sent, sample-exact where Twilio's timestamp puts it.
    mismatched = [
        ts for ts, frame in sent
        if ts * 8 + 160 <= pcm.shape[0]
        and not np.array_equal(pcm[ts * 8 : ts * 8 + 160, 0], ulaw_decode(frame))
    ]  # fmt: skip
    assert not mismatched, f"{len(mismatched)} caller frames misplaced, first at {mismatched[0]}"
    assert pcm.shape[0] >= sent[-1][0] * 8  # the recording runs to the hang-up
    # Agent right: as much agent audio as the phone played (within 5 frames) ...
    played = np.concatenate([ulaw_decode(f) for _, f in call.log.played])
    recorded_agent = np.count_nonzero(pcm[:, 1])
    assert abs(recorded_agent - np.count_nonzero(played)) <= 5 * 160
    # ... starting when the phone heard the greeting start (on the phone's clock) ...
    t0 = call.log.mic_started_at
    assert t0 is not None
    first_heard = (call.log.played[0][0] - t0) * RATE
    first_recorded = int(np.flatnonzero(pcm[:, 1])[0])
    assert abs(first_recorded - first_heard) < 0.15 * RATE
    # ... and cut at the barge-in: the agent falls silent when the caller starts speaking
    # (a pause: the pacer stops sending) and the `clear` comes once the caller's words
    # make it an interruption, so its last audio is at most that long before the clear;
    # silent from there until the next answer.
    cleared = int((call.log.clears[0] - t0) * RATE)
    last_before = int(np.flatnonzero(pcm[: cleared + int(0.6 * RATE), 1])[-1])
    assert cleared - 2.0 * RATE < last_before < cleared + 0.05 * RATE
