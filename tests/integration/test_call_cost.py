"""Cost per call, end to end: a real gateway process with all three cloud providers (the
Deepgram, OpenAI and Cartesia wire fakes) and a price table in PRICES_JSON. What the
gateway counted matches what each fake says it received (Deepgram: audio bytes -> seconds;
OpenAI: the tokens of its usage chunks; Cartesia: the characters of the transcripts sent),
the cost items are those quantities at the table's prices, to the exact decimal, and
`GET /calls` sums the page's costs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest

from gateway.demo.simulated_twilio import SimulatedTwilioCall, espeak_mulaw

from .conftest import FakeServer, GatewayProcess, run_gateway

pytestmark = pytest.mark.timeout(180)

PRICES = {
    "currency": "EUR",
    "carrier_per_minute": {"twilio": "0.0130", "livekit": "0.0040"},
    "stt_per_minute": {"deepgram": "0.0059", "local": "0"},
    "llm_per_1m_tokens": {
        "gpt-4o-mini": {"input": "0.15", "output": "0.60"},
        "default": {"input": "2.50", "output": "10.00"},
    },
    "tts_per_1k_chars": {"cartesia": "0.065", "local": "0"},
}
SIX = Decimal("0.000001")


def _amount(value: Decimal) -> Decimal:
    return value.quantize(SIX, rounding=ROUND_HALF_UP)


@pytest.fixture(scope="module")
def openai_fake(openai_base_url: str) -> FakeServer:
    return FakeServer(openai_base_url.removesuffix("/v1"))


@pytest.fixture(scope="module")
def priced_gateway(
    mongo_url: str,
    openai_base_url: str,
    deepgram_fake: FakeServer,
    cartesia_fake: FakeServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    env = {
        "OPENAI_API_KEY": "test-openai-key",
        "OPENAI_BASE_URL": openai_base_url,
        "DEEPGRAM_API_KEY": "test-deepgram-key",
        "DEEPGRAM_BASE_URL": deepgram_fake.url.replace("http://", "ws://"),
        "CARTESIA_API_KEY": "test-cartesia-key",
        "CARTESIA_BASE_URL": cartesia_fake.url,
        "PRICES_JSON": json.dumps(PRICES),
    }
    with run_gateway(mongo_url, tmp_path_factory.mktemp("gw-cost"), env) as process:
        yield process


async def _finished(gateway: GatewayProcess, http: httpx.AsyncClient, call_id: str) -> Any:
    """The stored call once it is finished (and costed)."""
    deadline = time.monotonic() + 30
    while True:
        response = await http.get(f"/calls/{call_id}", headers={"x-api-key": gateway.api_key})
        stored = response.json()
        if stored.get("cost") is not None:
            return stored
        assert time.monotonic() < deadline, stored
        await asyncio.sleep(0.1)


async def _call(
    gateway: GatewayProcess, http: httpx.AsyncClient, questions: list[str]
) -> tuple[str, Any]:
    """A call that asks `questions`, then says bye (the agent hangs up)."""
    call = SimulatedTwilioCall(
        base_url=gateway.base_url, public_url=gateway.base_url, auth_token=gateway.auth_token
    )
    await call.start(http)
    try:
        await call.wait_agent_audio(within_s=10)
        await call.wait_agent_silent()
        for question in questions:
            call.say(espeak_mulaw(question))
            await call.wait_said()
            await call.wait_agent_audio(within_s=15)
            await call.wait_agent_silent()
        call.say(espeak_mulaw("Bye."))
        await call.wait_closed(within_s=30)  # the model called end_call
    finally:
        await call.aclose()
    assert call.call_id is not None
    return call.call_id, await _finished(gateway, http, call.call_id)


def _items(stored: Any) -> dict[tuple[str, str, str | None], dict[str, Any]]:
    return {(i["kind"], i["provider"], i["model"]): i for i in stored["cost"]["items"]}


async def test_cost_items_match_the_usage_the_providers_received(
    priced_gateway: GatewayProcess,
    deepgram_fake: FakeServer,
    cartesia_fake: FakeServer,
    openai_fake: FakeServer,
) -> None:
    gateway = priced_gateway
    for fake in (deepgram_fake, cartesia_fake, openai_fake):
        fake.reset()
    deepgram_fake.control(utterances=["What are your opening hours?", "Bye."])
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        _, stored = await _call(gateway, http, ["What are your opening hours?"])

    # What each provider received, by its own record.
    [opened] = [e for e in deepgram_fake.log() if e["kind"] == "open"]
    assert opened["query"]["encoding"] == "mulaw"  # type: ignore[index]
    audio_bytes = sum(int(e["bytes"]) for e in deepgram_fake.log() if e["kind"] == "audio")  # type: ignore[call-overload]
    stt_seconds = audio_bytes / 8000  # mu-law at 8 kHz: one byte a sample
    requests = [e["data"] for e in cartesia_fake.log() if e["kind"] == "json"]
    characters = sum(
        len(r["transcript"].strip())  # type: ignore[index]
        for r in requests
        if r.get("transcript")  # type: ignore[attr-defined]
    )
    billed = openai_fake.log()
    assert {b["model"] for b in billed} == {"gpt-4o-mini"} and len(billed) == 2
    prompt = sum(int(b["usage"]["prompt_tokens"]) for b in billed)  # type: ignore[index]
    completion = sum(int(b["usage"]["completion_tokens"]) for b in billed)  # type: ignore[index]

    usage = stored["usage"]
    assert stt_seconds > 1 and usage["stt"] == [
        {"provider": "deepgram", "seconds": round(stt_seconds, 3)}
    ]
    assert usage["llm"] == [
        {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "prompt_tokens": prompt,
            "completion_tokens": completion,
        }
    ]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, completion)
    assert characters > 50 and usage["tts"] == [{"provider": "cartesia", "characters": characters}]
    [carrier] = usage["carrier"]
    assert carrier["provider"] == "twilio"
    assert stt_seconds - 1 < carrier["seconds"] <= stored["duration_s"]
    # The carrier counts from the answer, which is stored: the basis a sweeper uses for a
    # call lost with its gateway (BSON keeps milliseconds).
    answered, ended = (datetime.fromisoformat(stored[k]) for k in ("answered_at", "ended_at"))
    assert datetime.fromisoformat(stored["started_at"]) <= answered <= ended
    assert abs((ended - answered).total_seconds() - carrier["seconds"]) < 0.01

    # The cost: each quantity at the table's price, exact, as decimal strings.
    cost = stored["cost"]
    assert cost["currency"] == "EUR"
    items = _items(stored)
    assert set(items) == {
        ("carrier", "twilio", None),
        ("stt", "deepgram", None),
        ("llm_input", "openai", "gpt-4o-mini"),
        ("llm_output", "openai", "gpt-4o-mini"),
        ("tts", "cartesia", None),
    }
    carried = Decimal(str(carrier["seconds"]))
    heard = Decimal(str(round(stt_seconds, 3)))
    expected = {
        ("carrier", "twilio", None): (
            carried / 60, "0.0130", _amount(carried * Decimal("0.013") / 60)
        ),
        ("stt", "deepgram", None): (heard / 60, "0.0059", _amount(heard * Decimal("0.0059") / 60)),
        ("llm_input", "openai", "gpt-4o-mini"): (
            Decimal(prompt), "0.00000015", _amount(prompt * Decimal("0.15") / 1_000_000)
        ),
        ("llm_output", "openai", "gpt-4o-mini"): (
            Decimal(completion), "6E-7", _amount(completion * Decimal("0.60") / 1_000_000)
        ),
        ("tts", "cartesia", None): (
            Decimal(characters), "0.000065", _amount(characters * Decimal("0.065") / 1000)
        ),
    }  # fmt: skip
    for key, (quantity, unit_price, amount) in expected.items():
        item = items[key]
        assert Decimal(item["quantity"]) == _amount(quantity), key
        assert Decimal(item["unit_price"]) == Decimal(unit_price), key
        assert Decimal(item["amount"]) == amount, key
        assert item["unit"] == {"carrier": "minute", "stt": "minute", "tts": "character"}.get(
            key[0], "token"
        )
    assert Decimal(cost["total"]) == sum(e[2] for e in expected.values()) > 0


async def test_the_calls_page_sums_its_calls_costs(
    priced_gateway: GatewayProcess, deepgram_fake: FakeServer, cartesia_fake: FakeServer
) -> None:
    gateway = priced_gateway
    deepgram_fake.reset()
    cartesia_fake.reset()
    deepgram_fake.control(utterances=["Bye.", "Bye."])
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        first, one = await _call(gateway, http, [])
        second, two = await _call(gateway, http, [])
        headers = {"x-api-key": gateway.api_key}
        page = (await http.get("/calls", params={"limit": 500}, headers=headers)).json()
        newest = (await http.get("/calls", params={"limit": 1}, headers=headers)).json()

    totals = {c["id"]: Decimal(c["cost"]["total"]) for c in page["items"]}
    assert totals[first] == Decimal(one["cost"]["total"]) > 0
    assert totals[second] == Decimal(two["cost"]["total"]) > 0
    assert page["currency"] == "EUR" and page["next_cursor"] is None
    assert Decimal(page["total_cost"]) == sum(totals.values())
    [only] = newest["items"]
    assert only["id"] == second and Decimal(newest["total_cost"]) == totals[second]
