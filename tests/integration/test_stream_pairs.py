"""A Twilio media stream read in pairs while the caller is quiet: the gateway's own app and
server config (`FastFrameProtocol`, the real database, local providers) served in this
process, a call placed as Twilio places it, and the stream's connection looked at directly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import pytest
import uvicorn

from gateway.cli import gateway_server
from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw
from gateway.settings import Settings
from gateway.ws_protocol import FastFrameProtocol
from tests.net import free_port

pytestmark = pytest.mark.timeout(180)

TOKEN = "test-auth-token-pairs"


async def _until(condition: Callable[[], object], what: str, bound_s: float = 60.0) -> None:
    """Let the loop (the gateway's too) run until `condition()` holds, within a bound."""
    deadline = asyncio.get_running_loop().time() + bound_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {bound_s:g} s: {what}")
        await asyncio.sleep(0.01)


def _streams(server: uvicorn.Server) -> list[FastFrameProtocol]:
    return [
        c
        for c in server.server_state.connections
        if isinstance(c, FastFrameProtocol) and c.scope.get("path") == "/twilio/stream"
    ]


async def test_a_quiet_callers_stream_is_read_in_pairs_and_a_speaking_ones_is_not(
    mongo_url: str,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        public_url=base,
        twilio_auth_token=TOKEN,  # type: ignore[arg-type]
        gateway_api_key="test-key-" + uuid.uuid4().hex,  # type: ignore[arg-type]
        mongodb_url=mongo_url,
        mongodb_db="pairs_" + uuid.uuid4().hex[:8],
        max_loop_lag_ms=10_000,  # a loaded machine's late loop refuses no call here
        max_write_wait_ms=0,
    )
    # The served config of `serve`, on a plain uvicorn server (no frozen heap in pytest).
    server = uvicorn.Server(gateway_server(settings, host="127.0.0.1", port=port).config)
    serving = asyncio.create_task(server.serve())
    try:
        await _until(lambda: server.started, "the gateway serves")
        call = SimulatedTwilioCall(base_url=base, public_url=base, auth_token=TOKEN)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            await call.start(http)
        try:
            await _until(lambda: _streams(server), "the stream's connection")
            [stream] = _streams(server)
            # Quiet (silence frames while the agent greets): read in pairs.
            await _until(lambda: stream.reading_in_pairs, "reading in pairs while quiet")
            call.say(espeak_mulaw("What are your opening hours?"))
            # The VAD hears the caller: every message is read as it comes.
            await _until(lambda: not stream.reading_in_pairs, "reading each message in speech")
            await call.wait_said()
            # The turn over and the caller quiet again (the agent answers): pairs again.
            await _until(lambda: stream.reading_in_pairs, "reading in pairs after the turn")
            await call.wait_agent_audio(within_s=30)
            # Twilio's `stop` comes alone (no media after it): it is let through, and the
            # gateway ends the call and closes the stream.
            await call.stop()
            assert call.log.close_code == 1000
        finally:
            await call.aclose()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 60)
