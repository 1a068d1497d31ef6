"""A caller in a LiveKit room, as LiveKit's SIP bridge would put one there: a participant of
kind SIP with the bridge's attributes, publishing microphone audio in real time (silence
between sentences, as a phone line does) and listening to the agent's track."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import subprocess
import time
import uuid

import httpx
import numpy as np
from livekit import api, rtc
from livekit.protocol import sip as lksip

from audio.frames import samples_per_frame
from audio.resample import StreamResampler
from gateway.livekit.fanout import keep_native_logs_native, narrow_room_events
from tests.livekit_server import LiveKitServer

RATE = 16000
FRAME = samples_per_frame(RATE)
SPEAKING_RMS = 300.0


def espeak_pcm16k(text: str, *, voice: str = "en-us+f3", words_per_minute: int = 140) -> np.ndarray:
    binary = shutil.which("espeak-ng")
    assert binary is not None, "espeak-ng is required"
    wav = subprocess.run(
        [binary, "--stdout", "-v", voice, "-s", str(words_per_minute), "--", text],
        check=True,
        capture_output=True,
    ).stdout
    pcm = np.frombuffer(wav[44:], dtype="<i2").astype(np.int16)
    resampler = StreamResampler(22050, RATE)
    out = np.concatenate([resampler.process(pcm), resampler.flush()])
    return np.concatenate([out, np.zeros(-out.size % FRAME, dtype=np.int16)])


async def dispatch_attributes(
    http: httpx.AsyncClient,
    key: str,
    server_url: str,
    api_key: str,
    api_secret: str,
    assistant: dict[str, object],
    numbers: list[str],
) -> tuple[str, dict[str, str]]:
    """`numbers` registered to the key's organisation, `assistant`, an inbound trunk for
    `numbers` and a dispatch rule to it, made through the gateway's API; the assistant's id
    and the attributes the rule gives SIP participants, read back from LiveKit (what the
    SIP bridge would set)."""
    h = {"x-api-key": key}
    for number in numbers:
        claimed = await http.post("/numbers", headers=h, json={"number": number})
        assert claimed.status_code == 201, claimed.text
    created = await http.post("/assistants", headers=h, json=assistant)
    assert created.status_code == 201, created.text
    trunk = await http.post(
        "/sip/trunks/inbound",
        headers=h,
        json={"name": "in", "numbers": numbers, "allowed_addresses": ["127.0.0.1"]},
    )
    assert trunk.status_code == 201, trunk.text
    rule = await http.post(
        "/sip/dispatch-rules",
        headers=h,
        json={"name": "r", "assistant_id": created.json()["id"], "trunk_ids": [trunk.json()["id"]]},
    )
    assert rule.status_code == 201, rule.text
    async with api.LiveKitAPI(server_url, api_key, api_secret) as lk:
        rules = await lk.sip.list_dispatch_rule(lksip.ListSIPDispatchRuleRequest())
    [info] = [r for r in rules.items if r.sip_dispatch_rule_id == rule.json()["livekit_id"]]
    return created.json()["id"], dict(info.attributes)


def caller_token(
    api_key: str, api_secret: str, room: str, identity: str, attributes: dict[str, str]
) -> str:
    grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True)
    return (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_kind("sip")
        .with_attributes(attributes)
        .with_grants(grants)
        .to_jwt()
    )


class RoomCaller:
    """Joins a room as the SIP caller; `say()` queues speech, `agent_frames` records the
    agent's audio as (monotonic time, rms) per received frame of `frame_ms`.

    `frame_ms`: how much audio each microphone capture and each listened frame holds (a
    round trip through the SDK's native core each). Many callers in one process (the rooms
    bench) take the shared cores from the gateway they measure: they use 40.

    The caller joins with a peer connection per direction, as LiveKit's SIP bridge does
    (livekit/sip joins through server-sdk-go, whose single peer connection is opt-in and
    not asked for). The Python SDK's default, one for both, made the caller's subscription
    to the agent's track wait for an offer of the caller's own, debounced behind its own
    publish: 0.6-0.8 s with 8 rooms joining at once, a delay no SIP caller has."""

    def __init__(self, *, frame_ms: int = 20, single_peer_connection: bool = False) -> None:
        # A SIP bridge's native logs do not cross into Python (fanout.py).
        keep_native_logs_native()
        self.room = rtc.Room()
        self.frame_ms = frame_ms
        self._single_pc = single_peer_connection
        self.agent_frames: list[tuple[float, float]] = []
        self._mic: collections.deque[np.ndarray] = collections.deque()
        self._mic_idle = asyncio.Event()
        self._mic_idle.set()
        self.left = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.speech_started_at: float | None = None
        # When the room connection was up (monotonic): the participant is active then, and
        # LiveKit sends its `participant_joined` webhook; the track is published after.
        self.connected_at: float | None = None
        self._last_loud = float("-inf")  # when the agent's latest loud frame arrived
        self._loud_since = float("-inf")  # ... and the first of that stretch of loud frames
        self._loud = asyncio.Event()  # set by each loud frame

    async def join(self, url: str, token: str) -> None:
        self.room.on("track_subscribed", self._on_track)
        self.room.on("disconnected", lambda *_: self.left.set())
        options = rtc.RoomOptions(single_peer_connection=self._single_pc)
        await self.room.connect(url, token, options)
        self.connected_at = time.monotonic()
        # Many callers share the bench's process: each room's listener takes only its own
        # events, as the gateway's do (a SIP bridge is its own process, not N SDK rooms).
        narrow_room_events(self.room)
        self._source = rtc.AudioSource(RATE, 1, queue_size_ms=max(60, 2 * self.frame_ms))
        track = rtc.LocalAudioTrack.create_audio_track("phone", self._source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self._tasks.append(asyncio.create_task(self._microphone()))

    def _on_track(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self._tasks.append(asyncio.create_task(self._listen(track)))

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(
            track, sample_rate=RATE, num_channels=1, frame_size_ms=self.frame_ms
        )
        try:
            async for event in stream:
                now = time.monotonic()
                pcm = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
                rms = float(np.sqrt(np.mean(pcm * pcm))) if pcm.size else 0.0
                self.agent_frames.append((now, rms))
                if rms > SPEAKING_RMS:
                    if now - self._last_loud > 0.1:  # a new stretch of the agent's audio
                        self._loud_since = now
                    self._last_loud = now
                    self._loud.set()
        finally:
            await stream.aclose()

    async def _microphone(self) -> None:
        per_capture = max(1, self.frame_ms // (1000 * FRAME // RATE))
        silence = np.zeros(FRAME * per_capture, dtype=np.int16)
        while True:
            if self._mic:
                frames = [self._mic.popleft() for _ in range(min(per_capture, len(self._mic)))]
                pcm = np.concatenate(frames)
                if pcm.size < silence.size:
                    pcm = np.concatenate([pcm, silence[: silence.size - pcm.size]])
                if self.speech_started_at is None:
                    self.speech_started_at = time.monotonic()
            else:
                pcm = silence
                self._mic_idle.set()
            samples = pcm.size
            await self._source.capture_frame(rtc.AudioFrame(pcm.tobytes(), RATE, 1, samples))

    def say(self, pcm: np.ndarray) -> None:
        self.speech_started_at = None
        for offset in range(0, pcm.size, FRAME):
            self._mic.append(pcm[offset : offset + FRAME])
        self._mic_idle.clear()

    async def wait_said(self) -> None:
        await self._mic_idle.wait()

    def agent_speaking(self, window_s: float = 0.2) -> bool:
        return self._last_loud > time.monotonic() - window_s

    async def wait_agent_audio(self, within_s: float = 20.0) -> float:
        """Wait until the agent is heard (a loud frame in the last 100 ms); returns when its
        audio began to arrive, and never earlier than this call."""
        start = time.monotonic()
        deadline = start + within_s
        while not self.agent_speaking(0.1):
            self._loud.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("the agent did not speak")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loud.wait(), left)
        return max(self._loud_since, start)

    async def wait_agent_silent(self, quiet_s: float = 0.8, within_s: float = 40.0) -> float:
        """Wait until the agent has been quiet for `quiet_s`; returns when its audio stopped."""
        deadline = time.monotonic() + within_s
        while (quiet_for := time.monotonic() - self._last_loud) < quiet_s:
            if time.monotonic() >= deadline:
                raise AssertionError("the agent did not stop speaking")
            await asyncio.sleep(min(quiet_s - quiet_for, max(0.0, deadline - time.monotonic())))
        return max(self._last_loud, 0.0)

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._source.aclose()
        await self.room.disconnect()


async def sip_caller_joins(
    server: LiveKitServer, rule_attributes: dict[str, str], number: str, identity: str
) -> tuple[str, dict[str, str], RoomCaller]:
    """A SIP caller from +15550001111 to `number` through a dispatch rule's attributes,
    joined to a new room as `identity` (what LiveKit's SIP bridge does): the room's name,
    the participant's attributes and the caller."""
    room = "call-" + uuid.uuid4().hex[:8]
    attributes = {
        **rule_attributes,
        "sip.phoneNumber": "+15550001111",
        "sip.trunkPhoneNumber": number,
        "sip.callID": "SCL_" + uuid.uuid4().hex[:8],
    }
    caller = RoomCaller()
    token = caller_token(server.api_key, server.api_secret, room, identity, attributes)
    await caller.join(server.url.replace("http://", "ws://"), token)
    return room, attributes, caller
