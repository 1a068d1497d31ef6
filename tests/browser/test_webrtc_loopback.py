"""Headless Chromium joins a room on a real livekit-server over loopback with the LiveKit
browser SDK the gateway serves, its microphone fed from a WAV: the page hears a Python
participant's tone (measured with WebAudio in the page) and the Python side hears the
browser's microphone. This is what a web call in the dashboard stands on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import api, rtc

from gateway.settings import Settings
from gateway.web_assets import StaticDirectory, WebAssets
from tests.browser import launch_chromium, loopback_page, serve_routes
from tests.livekit_server import LiveKitServer

log = logging.getLogger(__name__)

PAGES = Path(__file__).resolve().parent / "pages"
RATE = 48000
FRAME = RATE // 100  # 10 ms
TONE_RMS = 0.2 * 32767 / np.sqrt(2)


def write_tone_wav(path: Path, *, hz: float, seconds: float, lead_s: float = 0.3) -> None:
    """16-bit mono WAV: `lead_s` of silence, then a sine at 0.2 of full scale."""
    t = np.arange(int(RATE * seconds)) / RATE
    tone = (0.2 * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2")
    pcm = np.concatenate([np.zeros(int(RATE * lead_s), dtype="<i2"), tone])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(pcm.tobytes())


def token(server: LiveKitServer, room: str, identity: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True)
    return (
        api.AccessToken(server.api_key, server.api_secret)
        .with_identity(identity)
        .with_grants(grants)
        .to_jwt()
    )


class ToneParticipant:
    """A Python participant publishing a continuous tone and measuring what it hears."""

    def __init__(self) -> None:
        self.room = rtc.Room()
        self.heard: list[tuple[float, float]] = []  # (monotonic, rms) of remote frames
        self._tasks: list[asyncio.Task[None]] = []

    async def join(self, url: str, jwt: str) -> None:
        self.room.on("track_subscribed", self._on_track)
        await self.room.connect(url, jwt)
        self.source = rtc.AudioSource(RATE, 1, queue_size_ms=100)
        track = rtc.LocalAudioTrack.create_audio_track("tone", self.source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self._tasks.append(asyncio.create_task(self._play(440.0)))

    def _on_track(self, track: rtc.Track, *_: Any) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self._tasks.append(asyncio.create_task(self._listen(track)))

    async def _play(self, hz: float) -> None:
        n = 0
        while True:
            t = (np.arange(FRAME) + n) / RATE
            pcm = (0.2 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
            n += FRAME
            await self.source.capture_frame(rtc.AudioFrame(pcm.tobytes(), RATE, 1, FRAME))

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
        try:
            async for event in stream:
                pcm = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
                rms = float(np.sqrt(np.mean(pcm * pcm))) if pcm.size else 0.0
                self.heard.append((time.monotonic(), rms))
        finally:
            await stream.aclose()

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.source.aclose()
        await self.room.disconnect()


async def wait_for(condition: Any, what: str, within_s: float = 60.0) -> Any:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(180)
async def test_browser_and_python_hear_each_other(
    livekit_server: LiveKitServer, tmp_path: Path
) -> None:
    assets = WebAssets(Settings().web_assets_dir)
    assert assets.vendor.available, assets.vendor.missing
    wav = tmp_path / "mic.wav"
    write_tone_wav(wav, hz=880.0, seconds=30.0)
    room = "spike-" + tmp_path.name[-8:]
    ws_url = livekit_server.url.replace("http://", "ws://")
    routes = [*assets.routes(), StaticDirectory(PAGES, "/test").route()]
    agent = ToneParticipant()
    with serve_routes(routes) as base:
        await agent.join(livekit_server.url, token(livekit_server, room, "agent"))
        try:
            async with launch_chromium(fake_microphone=wav) as launched:
                log.info("chromium launched in %.3f s", launched.launch_s)
                async with loopback_page(launched.browser) as (page, guard):
                    page.on("console", lambda m: log.info("page: %s", m.text))
                    jwt = token(livekit_server, room, "browser")
                    await page.goto(f"{base}/test/webrtc.html?url={ws_url}&token={jwt}&raw=1")

                    async def report() -> dict[str, Any]:
                        result: dict[str, Any] = await page.evaluate("window.spikeReport()")
                        if result["error"]:
                            raise AssertionError(f"the page failed: {result['error']}")
                        return result

                    async def page_heard() -> dict[str, Any] | None:
                        r = await report()
                        return r if r["firstRemoteAudioAt"] is not None else None

                    heard = await wait_for(page_heard, "the page to hear the tone")
                    first_loud_s = (heard["firstRemoteAudioAt"] - heard["startedAt"]) / 1000
                    log.info(
                        "page: connected after %.3f s, mic published after %.3f s, first "
                        "remote audio after %.3f s (from joinCall); remote %s",
                        (heard["connectedAt"] - heard["startedAt"]) / 1000,
                        (heard["micPublishedAt"] - heard["startedAt"]) / 1000,
                        first_loud_s,
                        heard["remote"],
                    )

                    async def python_heard() -> bool:
                        return any(rms > TONE_RMS / 4 for _, rms in agent.heard)

                    await wait_for(python_heard, "the Python side to hear the browser's mic")
                    log.info("ICE pairs: %s", await page.evaluate("window.spikeIce()"))
                    assert [r["participant"] for r in heard["remote"]] == ["agent"]
                    assert guard.left_loopback == []
        finally:
            await agent.leave()
