"""Caller lookup values without I/O: the request body the gateway sends, how an answer is
read (and what is refused), and the outcome counter at /metrics."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from gateway.call.lookup import LOOKUP_EVENT, LookupAnswer, LookupRequest
from gateway.errors import LookupFailed
from gateway.metrics import LOOKUP_OUTCOMES, GatewayMetrics


def test_the_request_names_the_call() -> None:
    request = LookupRequest(
        from_number="+15550001111",
        to_number="+15550002222",
        transport="twilio",
        call_sid="CA123",
        assistant_id="a1",
    )
    body = json.loads(request.serialize(now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)))
    assert body == {
        "event": LOOKUP_EVENT,
        "id": request.id,
        "created_at": "2026-01-02T03:04:05+00:00",
        "call": {
            "from_number": "+15550001111",
            "to_number": "+15550002222",
            "transport": "twilio",
            "call_sid": "CA123",
            "assistant_id": "a1",
        },
    }
    assert request.id.startswith("lkp_")
    assert LookupRequest("a", "b", "livekit", "", None).id != request.id


@pytest.mark.parametrize(
    ("raw", "metadata", "assistant_id"),
    [
        (b"", {}, None),  # a 204: nothing changes
        (b"{}", {}, None),
        (b'{"metadata": {"name": "Dana"}}', {"name": "Dana"}, None),
        (b'{"metadata": null, "assistant_id": "abc"}', {}, "abc"),
        (b'{"assistant_id": null, "extra": [1, 2]}', {}, None),  # other keys are ignored
        ('{"metadata": {"name": "Zoë"}}'.encode(), {"name": "Zoë"}, None),
        (
            b'{"metadata": {"_ref": "7", "first-name": "Dana"}}',
            {"_ref": "7", "first-name": "Dana"},
            None,
        ),
    ],
)
def test_answers_that_are_read(
    raw: bytes, metadata: dict[str, str], assistant_id: str | None
) -> None:
    answer = LookupAnswer.parse(raw)
    assert dict(answer.metadata) == metadata
    assert answer.assistant_id == assistant_id


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"<html>hi</html>",
        b"[1, 2]",
        b'"a string"',
        b'{"metadata": ["name", "Dana"]}',
        b'{"metadata": {"age": 42}}',
        b'{"metadata": {"nested": {"a": "b"}}}',
        b'{"assistant_id": 7}',
        b'{"assistant_id": ""}',
        b"[" * 100_000,  # nesting past the parser's bound
        b"\xff\xfe",
        # Keys a stored document cannot hold, or that no {{placeholder}} could name:
        b'{"metadata": {"customer.name": "Dana"}}',
        b'{"metadata": {"$x": "1"}}',
        b'{"metadata": {"name": "Dana", "$where": "1"}}',
        b'{"metadata": {"": "1"}}',
        b'{"metadata": {"a b": "1"}}',
        b'{"metadata": {"1st": "1"}}',
        b'{"metadata": {"name": "\\ud800"}}',  # a lone surrogate: not text UTF-8 can hold
    ],
)
def test_answers_that_are_refused(raw: bytes) -> None:
    with pytest.raises(LookupFailed) as failed:
        LookupAnswer.parse(raw)
    assert failed.value.outcome == "invalid"


def test_outcomes_are_counted_at_metrics() -> None:
    metrics = GatewayMetrics()
    metrics.inbound_lookup("ok")
    metrics.inbound_lookup("timeout")
    metrics.inbound_lookup("timeout")
    text = metrics.render()
    assert "# TYPE voice_gateway_inbound_lookups_total counter" in text
    assert 'voice_gateway_inbound_lookups_total{outcome="ok"} 1' in text
    assert 'voice_gateway_inbound_lookups_total{outcome="timeout"} 2' in text
    for outcome in LOOKUP_OUTCOMES:  # every outcome is exported, 0 until it happens
        assert f'voice_gateway_inbound_lookups_total{{outcome="{outcome}"}}' in text
