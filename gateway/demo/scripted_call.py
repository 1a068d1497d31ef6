"""The scripted demo call: a simulated caller talks to the agent, barges in once, says goodbye.

The transcript is printed live by reading it back through the gateway's own API while the
call runs, which also shows that every turn is stored the moment it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import httpx
import uvicorn

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from gateway.settings import Settings
from storage import redact_url

CALLER_LINES = (
    "What are your opening hours?",
    "I would like to book an appointment.",
    "Yes please.",
    "Thank you, goodbye.",
)


async def _print_transcript(
    http: httpx.AsyncClient, call_id: str, headers: dict[str, str], out: Callable[[str], None]
) -> None:
    seen = 0
    while True:
        response = await http.get(f"/calls/{call_id}", headers=headers)
        if response.status_code == 200:
            turns = response.json()["transcript"]
            for turn in turns[seen:]:
                cut = " [interrupted]" if turn["interrupted"] else ""
                out(f"  {turn['speaker']:>6}: {turn['text']}{cut}")
            seen = len(turns)
        await asyncio.sleep(0.2)


async def run_demo_call(
    server: uvicorn.Server, settings: Settings, *, base_url: str, out: Callable[[str], None]
) -> int:
    """Serve the gateway, place the scripted call, print what happens; return the exit code."""
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            return 1
        await asyncio.sleep(0.05)
    assert settings.twilio_auth_token is not None and settings.gateway_api_key is not None
    headers = {"x-api-key": settings.gateway_api_key.get_secret_value()}
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            call = SimulatedTwilioCall(
                base_url=base_url,
                public_url=settings.public_url,
                auth_token=settings.twilio_auth_token.get_secret_value(),
            )
            out(f"gateway: {base_url}  placing a simulated Twilio call {call.call_sid}")
            await call.start(http)
            assert call.call_id is not None
            out(f"call id: {call.call_id}  live transcript:")
            printer = asyncio.create_task(_print_transcript(http, call.call_id, headers, out))
            try:
                await _converse(call)
            finally:
                await asyncio.sleep(0.5)
                printer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await printer
            stored = (await http.get(f"/calls/{call.call_id}", headers=headers)).json()
        out(
            f"call {stored['status']} ({stored['end_reason']}), {len(stored['transcript'])} turns, "
            f"{stored['duration_s']:.1f} s"
        )
        out(
            f"stored in MongoDB {redact_url(settings.mongodb_url or '')} "
            f"database {settings.mongodb_db!r}: "
            f"collection 'calls' _id {call.call_id}, its turns in collection 'turns'"
        )
        return 0 if stored["status"] == "completed" and len(stored["transcript"]) >= 4 else 1
    finally:
        server.should_exit = True
        await serving


async def _converse(call: SimulatedTwilioCall) -> None:
    lines = [espeak_mulaw(text) for text in CALLER_LINES]
    await call.wait_agent_audio()
    await call.wait_agent_silent()
    call.say(lines[0])  # opening hours
    await call.wait_said()
    await call.wait_agent_audio()
    await call.wait_agent_silent()
    call.say(lines[1])  # book an appointment; the agent's answer is long
    await call.wait_said()
    await call.wait_agent_audio()
    await asyncio.sleep(1.5)
    call.say(lines[2])  # barge in over the answer
    await call.wait_said()
    await call.wait_agent_audio()
    await call.wait_agent_silent()
    call.say(lines[3])  # goodbye: the agent answers and hangs up
    await call.wait_said()
    await call.wait_closed(within_s=20)
