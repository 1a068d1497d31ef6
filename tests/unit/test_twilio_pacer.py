"""The Twilio pacer: 20 ms media frames on schedule, marks in order, clear."""

import asyncio
import base64
import json
import time

import numpy as np

from gateway.metrics import GatewayMetrics
from gateway.twilio.pacer import TwilioPacer
from telephony.twilio import MediaStreamProtocol

START = json.dumps(
    {
        "event": "start",
        "streamSid": "MZ1",
        "start": {
            "streamSid": "MZ1",
            "callSid": "CA1",
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
)


async def _transport(lead_ms: int = 0) -> tuple[TwilioPacer, list[tuple[float, dict]]]:
    protocol = MediaStreamProtocol()
    protocol.receive_text(START)
    protocol.events()
    sent: list[tuple[float, dict]] = []

    async def send_text(text: str) -> None:
        sent.append((time.monotonic(), json.loads(text)))

    transport = TwilioPacer(
        protocol=protocol, send_text=send_text, metrics=GatewayMetrics(), lead_ms=lead_ms
    )
    return transport, sent


async def test_frames_leave_every_20_ms_with_marks_in_order() -> None:
    transport, sent = await _transport()
    pacer = asyncio.create_task(transport.run())
    await transport.play(np.full(8000 // 5 + 80, 1000, dtype=np.int16))  # 210 ms
    await transport.mark("end")
    await asyncio.sleep(0.35)
    pacer.cancel()
    media = [(t, m) for t, m in sent if m["event"] == "media"]
    assert len(media) == 11  # 10 whole frames + the padded remainder
    assert all(len(base64.b64decode(m["media"]["payload"])) == 160 for _, m in media)
    assert sent[-1][1] == {"event": "mark", "streamSid": "MZ1", "mark": {"name": "end"}}
    gaps = np.diff([t for t, _ in media]) * 1000
    assert 15 < float(np.median(gaps)) < 25
    assert transport.stats.frames_sent == 11 and transport.stats.frames_late == 0


async def test_clear_drops_queued_audio_and_tells_twilio() -> None:
    transport, sent = await _transport()
    pacer = asyncio.create_task(transport.run())
    await transport.play(np.zeros(8000, dtype=np.int16))  # 1 s queued
    await asyncio.sleep(0.1)
    await transport.clear()
    count = len(sent)
    await asyncio.sleep(0.1)
    pacer.cancel()
    assert sent[count - 1][1] == {"event": "clear", "streamSid": "MZ1"}
    assert len(sent) == count  # nothing more after the clear
    assert 3 <= sum(1 for _, m in sent if m["event"] == "media") <= 8


async def test_lead_sends_ahead_of_real_time() -> None:
    transport, sent = await _transport(lead_ms=60)
    pacer = asyncio.create_task(transport.run())
    await transport.play(np.zeros(1600, dtype=np.int16))  # 200 ms
    await asyncio.sleep(0.01)
    pacer.cancel()
    assert sum(1 for _, m in sent if m["event"] == "media") >= 3
