"""The price table (PRICES_JSON / PRICES_FILE: parsed, refused when wrong) and the pricing
of a call's usage, to the exact decimal; old stored usage still reads."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.call.usage import UsageMeter
from gateway.errors import ConfigError
from gateway.pricing import EXAMPLE_PRICES, PriceTable, price_call
from gateway.settings import Settings
from storage import CallCost, CallUsage, CostItem, LlmUsage, SttUsage, TtsUsage

TABLE = {
    "currency": "EUR",
    "carrier_per_minute": {"twilio": "0.0130", "livekit": 0},
    "stt_per_minute": {"deepgram": "0.0059", "local": 0},
    "llm_per_1m_tokens": {
        "gpt-4o-mini": {"input": "0.15", "output": "0.60"},
        "default": {"input": "2.50", "output": "10.00"},
    },
    "tts_per_1k_chars": {"cartesia": "0.065", "local": 0},
}


def _settings(prices_json: str | None = None, prices_file: Path | None = None) -> Settings:
    return Settings(_env_file=None, prices_json=prices_json, prices_file=prices_file)  # type: ignore[call-arg]


def test_a_table_from_prices_json_and_one_from_prices_file_read_the_same(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(TABLE))
    from_json = _settings(prices_json=json.dumps(TABLE)).price_table()
    assert from_json == _settings(prices_file=path).price_table()
    assert from_json.currency == "EUR"
    assert from_json.carrier_per_minute == {"twilio": Decimal("0.0130"), "livekit": Decimal(0)}
    # `local` names the gateway's own engines, as usage records them.
    assert from_json.stt_per_minute == {"deepgram": Decimal("0.0059"), "pocketsphinx": 0}
    assert from_json.tts_per_1k_chars == {"cartesia": Decimal("0.065"), "espeak-ng": 0}
    assert from_json.llm_price("gpt-4o-mini").input == Decimal("0.15")  # type: ignore[union-attr]
    assert from_json.llm_price("other").output == Decimal("10.00")  # type: ignore[union-attr]


def test_no_table_set_means_the_example_table() -> None:
    assert _settings().price_table() is EXAMPLE_PRICES


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"stt_per_minute": {"deepgram": -0.01}}, r"stt_per_minute\.deepgram: .*greater than"),
        ({"tts_per_1k_chars": {"eleven": 0.1}}, r"tts_per_1k_chars: .*unknown provider 'eleven'"),
        ({"carrier_per_minute": {"vonage": 0.1}}, r"carrier_per_minute: .*'vonage' \(known: "),
        ({"llm_per_minute": {}}, r"llm_per_minute: Extra inputs are not permitted"),
        ({"llm_per_1m_tokens": {"m": {"input": 1}}}, r"llm_per_1m_tokens\.m\.output: .*required"),
        (
            {"llm_per_1m_tokens": {"m": {"input": 1, "output": 1, "cache": 1}}},
            r"llm_per_1m_tokens\.m\.cache: Extra",
        ),
        ({"currency": "euro"}, r"currency: String should match"),
        ({"stt_per_minute": {"deepgram": "NaN"}}, r"stt_per_minute\.deepgram"),
    ],
)
def test_a_bad_table_is_refused_naming_the_key(table: object, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^PRICES_JSON is not a valid price table: " + message):
        _settings(prices_json=json.dumps(table)).price_table()


def test_unreadable_or_doubly_set_tables_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"PRICES_JSON is not a valid price table: .*JSON"):
        _settings(prices_json="{not json").price_table()
    with pytest.raises(ConfigError, match=r"PRICES_FILE \(.*missing.json\) cannot be read"):
        _settings(prices_file=tmp_path / "missing.json").price_table()
    with pytest.raises(ConfigError, match="not both"):
        _settings(prices_json="{}", prices_file=tmp_path / "p.json").price_table()


def test_a_call_is_priced_per_item_to_the_exact_decimal() -> None:
    prices = PriceTable.model_validate(TABLE)
    usage = CallUsage(
        stt=(SttUsage(provider="deepgram", seconds=61.24),),
        llm=(
            LlmUsage(
                provider="openai", model="gpt-4o-mini", prompt_tokens=1234, completion_tokens=321
            ),
            LlmUsage(provider="openai", model="gpt-x", prompt_tokens=10, completion_tokens=3),
        ),
        tts=(TtsUsage(provider="cartesia", characters=987),),
    ).with_carrier("twilio", 75.5)
    cost = price_call(usage, prices)
    assert cost == CallCost(
        currency="EUR",
        items=(
            # 75.5 s = 1.258333... min at 0.0130: 0.016358333... -> 0.016358
            CostItem(
                kind="carrier", provider="twilio", quantity=Decimal("1.258333"), unit="minute",
                unit_price=Decimal("0.0130"), amount=Decimal("0.016358"),
            ),
            # 61.24 s at 0.0059 a minute: 0.006021933... -> 0.006022
            CostItem(
                kind="stt", provider="deepgram", quantity=Decimal("1.020667"), unit="minute",
                unit_price=Decimal("0.0059"), amount=Decimal("0.006022"),
            ),
            # 1234 x 0.15 / 1M = 0.0001851 -> 0.000185; 321 x 0.60 / 1M = 0.0001926 -> 0.000193
            CostItem(
                kind="llm_input", provider="openai", model="gpt-4o-mini",
                quantity=Decimal(1234), unit="token", unit_price=Decimal("0.00000015"),
                amount=Decimal("0.000185"),
            ),
            CostItem(
                kind="llm_output", provider="openai", model="gpt-4o-mini",
                quantity=Decimal(321), unit="token", unit_price=Decimal("0.0000006"),
                amount=Decimal("0.000193"),
            ),
            # another model: the default row (10 x 2.50 / 1M = 0.000025; 3 x 10 / 1M = 0.00003)
            CostItem(
                kind="llm_input", provider="openai", model="gpt-x", quantity=Decimal(10),
                unit="token", unit_price=Decimal("0.0000025"), amount=Decimal("0.000025"),
            ),
            CostItem(
                kind="llm_output", provider="openai", model="gpt-x", quantity=Decimal(3),
                unit="token", unit_price=Decimal("0.00001"), amount=Decimal("0.000030"),
            ),
            # 987 characters at 0.065 per 1000: 0.064155
            CostItem(
                kind="tts", provider="cartesia", quantity=Decimal(987), unit="character",
                unit_price=Decimal("0.000065"), amount=Decimal("0.064155"),
            ),
        ),
        total=Decimal("0.086968"),
    )  # fmt: skip
    assert cost.total == sum(item.amount for item in cost.items)
    # Stored and published as decimal strings: nothing drifts through a float.
    dumped = cost.model_dump(mode="json")
    assert dumped["total"] == "0.086968" and dumped["items"][0]["amount"] == "0.016358"
    assert CallCost.model_validate(dumped) == cost


def test_what_the_table_does_not_price_costs_zero_and_local_engines_cost_zero() -> None:
    prices = PriceTable(currency="USD")  # nothing priced, no default model row
    usage = CallUsage(
        stt=(SttUsage(provider="pocketsphinx", seconds=30.0),),
        llm=(LlmUsage(provider="openai", model="m", prompt_tokens=100, completion_tokens=5),),
    ).with_carrier("livekit", 10.0)
    cost = price_call(usage, prices)
    assert [item.kind for item in cost.items] == ["carrier", "stt", "llm_input", "llm_output"]
    assert all(item.amount == 0 for item in cost.items) and cost.total == 0
    local = price_call(usage, PriceTable.model_validate(TABLE))
    assert local.items[1].amount == 0  # pocketsphinx is the table's `local`


def test_an_old_documents_usage_reads_as_tokens_of_an_unknown_model() -> None:
    old = CallUsage.model_validate({"prompt_tokens": 40, "completion_tokens": 9})
    assert old.llm == (
        LlmUsage(provider="unknown", model=None, prompt_tokens=40, completion_tokens=9),
    )
    assert not (old.carrier or old.stt or old.tts)
    # The totals old readers used are still published beside the items.
    dumped = old.model_dump(mode="json")
    assert (dumped["prompt_tokens"], dumped["completion_tokens"]) == (40, 9)
    assert CallUsage.model_validate(dumped) == old  # a new document reads back the same
    assert CallUsage.model_validate({"prompt_tokens": 0, "completion_tokens": 0}) == CallUsage()
    priced = price_call(old, PriceTable.model_validate(TABLE))
    assert [i.amount for i in priced.items] == [Decimal("0.000100"), Decimal("0.000090")]


def test_the_meter_counts_per_provider_and_model() -> None:
    meter = UsageMeter()
    for _ in range(150):  # 3 s of 20 ms frames at 8 kHz, then 1 s at 16 kHz
        meter.stt_audio("deepgram", 160, 8000)
    for _ in range(50):
        meter.stt_audio("deepgram", 320, 16000)
    meter.stt_audio("pocketsphinx", 8000, 16000)
    meter.llm_tokens("openai", "a", 10, 2)
    meter.llm_tokens("openai", "a", 5, 1)
    meter.llm_tokens("openai", "b", 1, 1)
    meter.tts_text("cartesia", 12)
    meter.tts_text("espeak-ng", 7)
    meter.tts_text("cartesia", 3)
    usage = meter.usage()
    assert usage.stt == (
        SttUsage(provider="deepgram", seconds=4.0),
        SttUsage(provider="pocketsphinx", seconds=0.5),
    )
    assert usage.llm == (
        LlmUsage(provider="openai", model="a", prompt_tokens=15, completion_tokens=3),
        LlmUsage(provider="openai", model="b", prompt_tokens=1, completion_tokens=1),
    )
    assert usage.tts == (
        TtsUsage(provider="cartesia", characters=15),
        TtsUsage(provider="espeak-ng", characters=7),
    )
    assert (usage.prompt_tokens, usage.completion_tokens) == (16, 4)
    assert usage.carrier == ()


def test_a_web_call_has_no_phone_carrier_and_its_row_is_explicit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A browser's call (transport `web`) is priced by the table's `web` carrier row: 0 in
    the examples (no warning: it is priced, not forgotten); an operator may price it."""
    usage = CallUsage().with_carrier("web", 90.0)
    [item] = price_call(usage, EXAMPLE_PRICES).items
    assert (item.kind, item.provider, item.quantity, item.amount) == (
        "carrier",
        "web",
        Decimal("1.5"),
        Decimal(0),
    )
    assert "no carrier price" not in caplog.text
    priced = PriceTable.model_validate({"carrier_per_minute": {"web": "0.004"}})
    assert price_call(usage, priced).total == Decimal("0.006")
