"""A simulated Twilio call: it speaks to the gateway exactly as Twilio does.

Used by `voice-gateway demo`, the end-to-end tests and the load benchmark. It POSTs the
signed voice webhook, follows the TwiML `<Connect><Stream>`, opens the signed WebSocket,
sends `connected` and `start`, then streams the caller's microphone as 20 ms mu-law media
in real time (silence when nobody talks), plays the agent's audio out in real time and
echoes each mark once the audio before it has played, as Twilio does; `clear` empties the
playout buffer and returns its pending marks.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import secrets
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from audio.codec import ULAW_SILENCE, ulaw_encode
from audio.frames import FRAME_MS, samples_per_frame
from audio.resample import StreamResampler
from telephony.twilio import TwilioSignatureValidator

log = logging.getLogger(__name__)

RATE = 8000
FRAME_BYTES = samples_per_frame(RATE)  # one mu-law byte per sample
FRAME_S = FRAME_MS / 1000
_SILENT_FRAME = ULAW_SILENCE * FRAME_BYTES
_MEDIA = (
    '{"event":"media","sequenceNumber":"%s","media":{"track":"inbound","chunk":"%d",'
    '"timestamp":"%d","payload":"%s"},"streamSid":"%s"}'
)


def espeak_mulaw(text: str, *, voice: str = "en-us+f3", words_per_minute: int = 140) -> bytes:
    """Caller speech for `text`: espeak-ng audio as 8 kHz mu-law, whole 20 ms frames."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
    wav = subprocess.run(
        [binary, "--stdout", "-v", voice, "-s", str(words_per_minute), "--", text],
        check=True,
        capture_output=True,
    ).stdout
    pcm = np.frombuffer(wav[44:], dtype="<i2").astype(np.int16)
    resampler = StreamResampler(22050, RATE)
    out = np.concatenate([resampler.process(pcm), resampler.flush()])
    data = ulaw_encode(out)
    return data + ULAW_SILENCE * (-len(data) % FRAME_BYTES)


@dataclass(slots=True)
class CallLog:
    """What the simulated phone observed, with times on the monotonic clock."""

    media_frames: int = 0
    first_media_at: float | None = None
    last_media_at: float | None = None
    clears: list[float] = field(default_factory=list)
    marks_echoed: list[str] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    closed_at: float | None = None
    # Arrival time of every media frame, for pacing statistics.
    arrivals: list[float] = field(default_factory=list)
    # With `record_audio`: every caller frame sent (its media timestamp, mu-law), every agent
    # frame played (when it started playing, mu-law), and when the microphone started.
    sent: list[tuple[int, bytes]] = field(default_factory=list)
    played: list[tuple[float, bytes]] = field(default_factory=list)
    mic_started_at: float | None = None


class SimulatedTwilioCall:
    """One phone call placed through the gateway as Twilio would place it."""

    def __init__(
        self,
        *,
        base_url: str,
        public_url: str,
        auth_token: str,
        from_number: str = "+15550001111",
        to_number: str = "+15550002222",
        record_arrivals: bool = False,
        record_audio: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self._signer = TwilioSignatureValidator(auth_token)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.account_sid = "AC" + secrets.token_hex(16)
        self.from_number = from_number
        self.to_number = to_number
        self.log = CallLog()
        self.call_id: str | None = None
        self._record_arrivals = record_arrivals
        self._record_audio = record_audio
        self._ws: ClientConnection | None = None
        self._mic: collections.deque[bytes] = collections.deque()
        self._mic_idle = asyncio.Event()
        self._mic_idle.set()
        # The agent's audio waiting to be "played" and marks in between.
        self._speaker: collections.deque[bytes | str] = collections.deque()
        self._speaker_idle_since: float = time.monotonic()
        # Set when something is put on the speaker queue, and when it is emptied: the
        # playout and the waits below sleep on it instead of polling (a load test runs
        # hundreds of these calls in one process).
        self._speaker_changed = asyncio.Event()
        self._playout_wake = asyncio.Event()  # set when the gateway sends media or a mark
        self._playing_until = 0.0  # when the frame the playout took last ends
        self._tasks: list[asyncio.Task[None]] = []
        self._sequence = 0
        self._media_chunk = 0
        self._closed = asyncio.Event()
        self._stopped = False

    # ------------------------------------------------------------------ set-up

    async def answer(self, http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
        """POST the signed voice webhook; return the stream URL and parameters of the TwiML."""
        form = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": self.from_number,
            "To": self.to_number,
        }
        url = self.public_url + "/twilio/voice"
        headers = {"X-Twilio-Signature": self._signer.sign(url, form)}
        response = await http.post(self.base_url + "/twilio/voice", data=form, headers=headers)
        response.raise_for_status()
        stream = ET.fromstring(response.text).find("./Connect/Stream")
        if stream is None:
            raise RuntimeError(f"no <Connect><Stream> in TwiML: {response.text}")
        params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
        self.call_id = params.get("call_id")
        return stream.attrib["url"], params

    async def connect(self, stream_url: str, params: dict[str, str]) -> None:
        """Open the signed WebSocket and send `connected` + `start`, then stream."""
        local_url = stream_url.replace(
            self.public_url.replace("http", "ws", 1), self.base_url.replace("http", "ws", 1)
        )
        signature = self._signer.sign(stream_url, {})
        self._ws = await websockets.connect(
            local_url, additional_headers={"X-Twilio-Signature": signature}, max_size=2**20
        )
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "sequenceNumber": self._next_sequence(),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
                    "customParameters": params,
                },
                "streamSid": self.stream_sid,
            }
        )
        self._tasks = [
            asyncio.create_task(self._microphone(), name="mic"),
            asyncio.create_task(self._receive(), name="receive"),
            asyncio.create_task(self._playout(), name="playout"),
        ]

    async def start(self, http: httpx.AsyncClient) -> None:
        stream_url, params = await self.answer(http)
        await self.connect(stream_url, params)

    # ------------------------------------------------------------------ actions

    def say(self, mulaw: bytes) -> None:
        """Queue caller speech (8 kHz mu-law) on the microphone."""
        for offset in range(0, len(mulaw), FRAME_BYTES):
            self._mic.append(mulaw[offset : offset + FRAME_BYTES].ljust(FRAME_BYTES, ULAW_SILENCE))
        self._mic_idle.clear()

    @property
    def mic_backlog_s(self) -> float:
        """How long the speech queued on the microphone still plays."""
        return len(self._mic) * FRAME_S

    async def wait_said(self) -> None:
        """Wait until the microphone queue has been sent."""
        await self._mic_idle.wait()

    async def send_dtmf(self, digit: str) -> None:
        await self._send(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self._next_sequence(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    @property
    def agent_speaking(self) -> bool:
        return bool(self._speaker)

    async def wait_agent_audio(self, within_s: float = 15.0) -> float:
        """Wait until agent audio is playing; return when it started."""
        deadline = time.monotonic() + within_s
        # Playing: audio queued, or a frame taken off the queue and still playing (the
        # playout takes a lone frame the moment it comes, before this wait wakes up).
        while not self._speaker and time.monotonic() >= self._playing_until:
            if time.monotonic() > deadline or self._closed.is_set():
                raise TimeoutError("the agent did not speak")
            await self._speaker_change(deadline - time.monotonic())
        return time.monotonic()

    async def wait_agent_silent(self, quiet_s: float = 0.8, within_s: float = 30.0) -> None:
        """Wait until the agent has been silent for `quiet_s` (its audio all played)."""
        deadline = time.monotonic() + within_s
        while True:
            if self._closed.is_set():
                return
            now = time.monotonic()
            quiet_for = now - self._speaker_idle_since
            if not self._speaker and quiet_for >= quiet_s:
                return
            if now > deadline:
                raise TimeoutError("the agent kept talking")
            # Until the speaker queue changes, or the quiet would be long enough.
            wait_s = deadline - now if self._speaker else min(quiet_s - quiet_for, deadline - now)
            await self._speaker_change(wait_s)

    async def _speaker_change(self, within_s: float) -> None:
        """Until the speaker queue changes (or the stream closes), at most `within_s`."""
        self._speaker_changed.clear()
        closed = self._closed.wait()
        changed = self._speaker_changed.wait()
        waits = [asyncio.ensure_future(closed), asyncio.ensure_future(changed)]
        try:
            await asyncio.wait(waits, timeout=max(0.0, within_s) + 0.001,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            for waiter in waits:
                waiter.cancel()

    async def stop(self) -> None:
        """Hang up as Twilio does: send `stop` and wait for the gateway to close."""
        await self._send_stop()
        await self.wait_closed()

    async def hang_up(self) -> None:
        """Hang up as Twilio does when the caller puts the phone down: `stop`, then the
        socket is closed at once, without waiting for the gateway."""
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._send_stop()
        await self.aclose()

    async def _send_stop(self) -> None:
        """Send Twilio's `stop` (once, and only on a live stream)."""
        if self._stopped or self._closed.is_set():
            return
        self._stopped = True
        stop = {"accountSid": self.account_sid, "callSid": self.call_sid}
        message = {"event": "stop", "sequenceNumber": self._next_sequence(), "stop": stop}
        await self._send({**message, "streamSid": self.stream_sid})

    async def drop(self) -> None:
        """The connection drops: no `stop`, no closing handshake, the TCP socket just goes."""
        if self._ws is not None:
            self._ws.transport.abort()
        await self.aclose()

    async def wait_closed(self, within_s: float = 10.0) -> None:
        await asyncio.wait_for(self._closed.wait(), within_s)
        await self.aclose()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._ws is not None:
            await self._ws.close()

    # ------------------------------------------------------------------ tasks

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    async def _send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send(json.dumps(message))

    async def _microphone(self) -> None:
        """Send one 20 ms media frame every 20 ms, as Twilio does for the inbound track."""
        t0 = time.monotonic()
        self.log.mic_started_at = t0
        start_ts = 0
        while not self._stopped:
            if self._mic:
                frame = self._mic.popleft()
            else:
                frame = _SILENT_FRAME
                self._mic_idle.set()
            self._media_chunk += 1
            if self._record_audio:
                self.log.sent.append((start_ts, frame))
            payload = base64.b64encode(frame).decode()
            # Twilio's media message, written out: the fields are digits, base64 and the
            # stream's id, none needing escapes (a load test sends thousands a second).
            text = _MEDIA % (self._next_sequence(), self._media_chunk, start_ts, payload,
                             self.stream_sid)  # fmt: skip
            with contextlib.suppress(websockets.ConnectionClosed):
                assert self._ws is not None
                await self._ws.send(text)
            start_ts += 20
            next_at = t0 + self._media_chunk * FRAME_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                event = message.get("event")
                now = time.monotonic()
                if event == "media":
                    self.log.media_frames += 1
                    self.log.first_media_at = self.log.first_media_at or now
                    self.log.last_media_at = now
                    if self._record_arrivals:
                        self.log.arrivals.append(now)
                    self._to_speaker(base64.b64decode(message["media"]["payload"]))
                elif event == "mark":
                    self._to_speaker(message["mark"]["name"])
                elif event == "clear":
                    self.log.clears.append(now)
                    pending = [item for item in self._speaker if isinstance(item, str)]
                    self._speaker.clear()
                    self._playing_until = 0.0
                    self._speaker_idle_since = now
                    self._speaker_changed.set()
                    for name in pending:
                        await self._echo_mark(name)
        except websockets.ConnectionClosed:
            pass
        finally:
            if self._ws.close_code is not None:
                self.log.close_code = self._ws.close_code
                self.log.close_reason = self._ws.close_reason or ""
            self.log.closed_at = time.monotonic()
            self._closed.set()

    async def _playout(self) -> None:
        """Play the agent's audio in real time; echo marks when playback reaches them."""
        t_next = time.monotonic()
        while True:
            await self._echo_marks_async()
            if self._speaker and isinstance(self._speaker[0], bytes):
                frame = self._speaker.popleft()
                self._playing_until = time.monotonic() + FRAME_S
                if self._record_audio and isinstance(frame, bytes):
                    self.log.played.append((time.monotonic(), frame))
                if not self._speaker:
                    self._went_quiet()
                t_next = max(t_next + FRAME_S, time.monotonic() - FRAME_S)
                await asyncio.sleep(max(0.0, t_next - time.monotonic()))
                await self._echo_marks_async()
            else:
                if not self._speaker:  # nothing to play: until the gateway sends something
                    self._playout_wake.clear()
                    await self._playout_wake.wait()
                t_next = time.monotonic()

    def _to_speaker(self, item: bytes | str) -> None:
        """Queue agent audio or a mark for the playout, and wake it and the waits."""
        self._speaker.append(item)
        self._speaker_changed.set()
        self._playout_wake.set()

    def _went_quiet(self) -> None:
        self._speaker_idle_since = time.monotonic()
        self._speaker_changed.set()

    async def _echo_marks_async(self) -> None:
        while self._speaker and isinstance(self._speaker[0], str):
            name = self._speaker.popleft()
            if not self._speaker:
                self._went_quiet()
            assert isinstance(name, str)
            await self._echo_mark(name)

    async def _echo_mark(self, name: str) -> None:
        self.log.marks_echoed.append(name)
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._send(
                {
                    "event": "mark",
                    "sequenceNumber": self._next_sequence(),
                    "streamSid": self.stream_sid,
                    "mark": {"name": name},
                }
            )
