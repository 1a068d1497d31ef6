"""Caller lookup against a real database, in-process: whatever fails on the way (the
client library refusing a URL, the store refusing the looked-up values) leaves the call to
the assistant's defaults, counted, instead of failing the inbound call."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.call.lookup import CallerLookup, LookupAnswer, LookupRequest
from gateway.call.records import CallInputLimits
from gateway.errors import LookupFailed
from gateway.metrics import GatewayMetrics
from storage import AssistantConfig, Database
from webhooks.ssrf import SsrfGuard

_LIMITS = CallInputLimits(metadata_max_bytes=16_384, metadata_max_keys=64, prompt_max_chars=20_000)


@pytest.fixture
async def lookup(database: Database) -> AsyncIterator[CallerLookup]:
    client = CallerLookup(
        database=database, guard=SsrfGuard(["127.0.0.1"]), metrics=GatewayMetrics(), timeout_s=5
    )
    try:
        yield client
    finally:
        await client.aclose()


def _request() -> LookupRequest:
    return LookupRequest("+15550007777", "+15550001234", "twilio", "CA" + "1" * 32, None)


async def test_a_url_the_client_library_refuses_is_an_error_outcome(
    database: Database, lookup: CallerLookup
) -> None:
    """The guard accepts it (urlsplit does), httpx refuses it (`InvalidURL`, no HTTPError)."""
    org = await database.accounts.ensure_organization("acme")
    with pytest.raises(LookupFailed) as failed:
        await lookup.ask("http://127.0.0.1:9/\x00", _request(), org_id=org.id)
    assert failed.value.outcome == "error"
    assert "InvalidURL" in str(failed.value)


class _Unchecked(CallerLookup):
    """A lookup whose answer skipped `LookupAnswer.parse` (as a future field might): what
    the store refuses must still leave the defaults."""

    def __init__(self, answer: LookupAnswer, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._answer = answer

    async def ask(self, url: str, request: LookupRequest, *, org_id: str) -> LookupAnswer:
        return self._answer


async def test_values_the_store_refuses_leave_the_defaults(database: Database) -> None:
    org = await database.accounts.ensure_organization("acme")
    assistant = await database.assistants.create(
        org.id,
        AssistantConfig(
            name="Shop",
            system_prompt="Help.",
            greeting="Hello, this is the shop.",
            inbound_lookup_url="http://127.0.0.1:9/crm",
        ),
    )
    metrics = GatewayMetrics()
    lookup = _Unchecked(
        LookupAnswer(metadata={"customer.name": "Dana"}),
        database=database,
        guard=SsrfGuard(["127.0.0.1"]),
        metrics=metrics,
    )
    try:
        call = await lookup.open_inbound(
            assistant=assistant, transport="twilio", from_number="+15550007777",
            to_number="+15550001234", call_sid="CA" + "2" * 32, limits=_LIMITS,
        )  # fmt: skip
    finally:
        await lookup.aclose()
    assert call.metadata == {} and call.greeting == "Hello, this is the shop."
    assert (await database.calls.get_call(call.id)).assistant_id == assistant.id
    assert 'voice_gateway_inbound_lookups_total{outcome="invalid"} 1' in metrics.render()
