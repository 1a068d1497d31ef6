"""A web call from the dashboard in headless Chromium, through a real livekit-server: the
browser's microphone is a WAV (silence while the greeting plays, then a spoken question);
the page hears the agent's greeting (measured in the page with WebAudio), the question gets
an answer the page hears too, and the call is stored with both speakers."""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.async_api import Page, expect

from tests.browser import launch_chromium, loopback_page
from tests.browser.test_dashboard import sign_in
from tests.integration.conftest import GatewayProcess, run_room_stack
from tests.integration.test_livekit_calls import wait_ended
from tests.livekit_caller import RATE, espeak_pcm16k
from tests.livekit_server import LiveKitServer

pytestmark = pytest.mark.timeout(240)

GREETING = "Hello, you reached the web agent. How can I help you today?"
LEAD_S = 20.0  # the microphone is silent this long: the greeting is heard first


@pytest.fixture(scope="module")
def room_stack(
    mongo_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, LiveKitServer]]:
    work = tmp_path_factory.mktemp("web-call-browser")
    with run_room_stack(mongo_url, work, {"VAD_SILENCE_MS": "500"}) as stack:
        yield stack


def microphone_wav(path: Path, text: str) -> Path:
    """Silence, `text` spoken by espeak-ng, then a minute of silence (Chromium loops the
    file), as 16 kHz mono 16-bit PCM."""
    speech = espeak_pcm16k(text)
    silence = np.zeros(int(LEAD_S * RATE), dtype=np.int16)
    tail = np.zeros(60 * RATE, dtype=np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(np.concatenate([silence, speech, tail]).tobytes())
    return path


async def stored_turns(gateway: GatewayProcess, call_id: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(
        base_url=gateway.base_url, headers={"x-api-key": gateway.api_key}
    ) as http:
        body = (await http.get(f"/calls/{call_id}")).json()
    return list(body["transcript"])


async def until_page(page: Page, expression: str, *, within_s: float = 60) -> object:
    # A function, not an expression: Playwright would `eval` an expression, which the
    # page's Content-Security-Policy refuses.
    handle = await page.wait_for_function(f"() => {expression}", timeout=within_s * 1000)
    return await handle.json_value()


async def test_a_web_call_from_the_dashboard(
    room_stack: tuple[GatewayProcess, LiveKitServer], tmp_path: Path
) -> None:
    gateway, _ = room_stack
    async with httpx.AsyncClient(
        base_url=gateway.base_url, headers={"x-api-key": gateway.api_key}
    ) as http:
        made = await http.post(
            "/assistants",
            json={
                "name": "Web agent",
                "system_prompt": "You tell callers the shop's opening hours.",
                "greeting": GREETING,
            },
        )
        assert made.status_code == 201, made.text
    mic = microphone_wav(tmp_path / "caller.wav", "What are your opening hours?")

    async with (
        launch_chromium(fake_microphone=mic) as launched,
        loopback_page(launched.browser) as (page, guard),
    ):
        await sign_in(page, gateway)
        await page.get_by_role("link", name="Assistants").click()
        await page.get_by_role("button", name="Talk to Web agent").click()

        # The greeting, heard in the page.
        await until_page(page, "window.vgWebCall.greetingAt !== undefined")
        await expect(page.locator("#web-call-state")).to_have_text(
            "Connected: the agent is speaking."
        )
        call_id = str(await page.evaluate("window.vgWebCall.callId"))
        greeting_ms = await page.evaluate(
            "window.vgWebCall.greetingAt - window.vgWebCall.clickedAt"
        )
        assert greeting_ms > 0

        # The question is stored as the caller's turn; then the answer is heard in the page.
        deadline = time.monotonic() + 90
        while not any(t["speaker"] == "caller" for t in await stored_turns(gateway, call_id)):
            assert time.monotonic() < deadline, "the caller's question was not heard"
            await asyncio.sleep(0.2)
        loud = "window.vgWebCall.session.remoteTracks[0].meter.loudSamples"
        before = await page.evaluate(loud)
        await until_page(page, f"{loud} > {before} + 10")  # 200 ms of the agent's answer

        await page.get_by_role("button", name="Hang up").click()
        await expect(page.locator("#web-call-state")).to_have_text("The call has ended.")
        assert guard.left_loopback == []

    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=20) as http:
        stored = await wait_ended(http, gateway.api_key, call_id)
    assert stored["transport"] == "web" and stored["status"] == "completed", stored
    assert stored["end_reason"] == "caller-hung-up"
    turns = stored["transcript"]
    assert turns[0]["speaker"] == "agent" and turns[0]["text"] == GREETING
    caller = [i for i, t in enumerate(turns) if t["speaker"] == "caller"]
    assert caller and any(t["speaker"] == "agent" for t in turns[caller[0] + 1 :]), turns
