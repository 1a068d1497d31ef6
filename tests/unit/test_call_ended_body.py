"""The `call.ended` body carries the call's itemised usage (with the token totals old
receivers read) and its cost, decimals as strings; a call finished before usage was
itemised reads as before."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from gateway.pricing import PriceTable, price_call
from storage import CallRecord, CallStatus, CallUsage, Direction, LlmUsage, SttUsage, TtsUsage
from webhooks.events import call_ended_body


def _call(**fields: object) -> CallRecord:
    started = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    return CallRecord(
        id="c1", org_id="o", transport="twilio", call_sid="CA1", stream_sid=None,
        from_number="+15550001111", to_number="+15550002222", direction=Direction.INBOUND,
        assistant_id=None, metadata={}, status=CallStatus.COMPLETED, started_at=started,
        ended_at=started, duration_s=60.0, end_reason="agent-ended", **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def test_the_body_carries_usage_per_provider_and_the_cost() -> None:
    usage = CallUsage(
        stt=(SttUsage(provider="deepgram", seconds=30.0),),
        llm=(LlmUsage(provider="openai", model="m", prompt_tokens=100, completion_tokens=20),),
        tts=(TtsUsage(provider="cartesia", characters=200),),
    ).with_carrier("twilio", 60.0)
    prices = PriceTable.model_validate(
        {
            "currency": "USD",
            "carrier_per_minute": {"twilio": "0.01"},
            "stt_per_minute": {"deepgram": "0.006"},
            "llm_per_1m_tokens": {"default": {"input": "1", "output": "2"}},
            "tts_per_1k_chars": {"cartesia": "0.05"},
        }
    )
    cost = price_call(usage, prices)
    body = json.loads(call_ended_body(_call(usage=usage, cost=cost), delivery_id="d1"))["call"]
    assert body["usage"] == {
        "carrier": [{"provider": "twilio", "seconds": 60.0}],
        "stt": [{"provider": "deepgram", "seconds": 30.0}],
        "llm": [
            {"provider": "openai", "model": "m", "prompt_tokens": 100, "completion_tokens": 20}
        ],
        "tts": [{"provider": "cartesia", "characters": 200}],
        "prompt_tokens": 100,
        "completion_tokens": 20,
    }
    assert body["cost"]["currency"] == "USD"
    # 0.01 + 0.003 + 0.0001 + 0.00004 + 0.01
    assert body["cost"]["total"] == "0.023140"
    assert [(i["kind"], i["amount"]) for i in body["cost"]["items"]] == [
        ("carrier", "0.010000"),
        ("stt", "0.003000"),
        ("llm_input", "0.000100"),
        ("llm_output", "0.000040"),
        ("tts", "0.010000"),
    ]
    assert Decimal(body["cost"]["total"]) == sum(
        Decimal(i["amount"]) for i in body["cost"]["items"]
    )


def test_an_old_call_keeps_its_token_counts_and_has_no_cost() -> None:
    old = CallUsage.model_validate({"prompt_tokens": 7, "completion_tokens": 3})
    body = json.loads(call_ended_body(_call(usage=old), delivery_id="d1"))["call"]
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (7, 3)
    assert body["cost"] is None
    assert json.loads(call_ended_body(_call(), delivery_id="d2"))["call"]["usage"] is None
