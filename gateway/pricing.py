"""What a call costs: the operator's price table and the pricing of a call's usage.

The price table comes from the settings (`PRICES_JSON`, or `PRICES_FILE`, a path to the
same JSON; `Settings.price_table()` reads it once at start-up and refuses a bad one).
It says, in one currency:

    {
      "currency": "USD",
      "carrier_per_minute": {"twilio": 0.01, "livekit": 0.005, "web": 0},
      "stt_per_minute":     {"deepgram": 0.008, "local": 0},
      "llm_per_1m_tokens":  {"my-model": {"input": 0.2, "output": 0.8},
                             "default":  {"input": 1.0, "output": 4.0}},
      "tts_per_1k_chars":   {"cartesia": 0.05, "local": 0}
    }

`web` prices a browser's web call (`POST /web-calls`): no phone carrier, only the LiveKit
room, so 0 in the examples; set it to your LiveKit room-minute price if you pay one.
Carrier and STT minutes are priced per second counted (no rounding up to whole minutes);
LLM tokens per million, keyed by the model asked for (`default` prices any other model);
TTS characters per thousand. `local` names the gateway's own engines (PocketSphinx for
STT, espeak-ng for TTS). A provider or model the table does not price (and no `default`
row) is priced 0, with a warning in the log. Unknown keys, negative prices and a
currency that is not three capital letters are refused at start-up (`ConfigError`).

`EXAMPLE_PRICES`, used when neither variable is set, holds EXAMPLE figures of the shape
above (the figures above are those examples too): placeholders to replace with your own
contracts' prices, not anyone's quoted prices.

Amounts are `Decimal`, computed exactly from the counted quantities and rounded half-up
to 6 decimal places (`AMOUNT_PLACES`) per item; the total is the sum of the rounded items,
so it always equals what the items add up to.
"""

from __future__ import annotations

import logging
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from storage import CallCost, CallUsage, CostItem, CostKind

log = logging.getLogger(__name__)

AMOUNT_PLACES = Decimal("0.000001")  # amounts and minutes: 6 decimal places
DEFAULT_MODEL = "default"

# The engines the table's `local` row prices (the names usage records them under).
LOCAL_ENGINES = {"stt_per_minute": "pocketsphinx", "tts_per_1k_chars": "espeak-ng"}
_KNOWN_PROVIDERS = {
    "carrier_per_minute": {"twilio", "livekit", "web"},
    "stt_per_minute": {"deepgram", "pocketsphinx", "local"},
    "tts_per_1k_chars": {"cartesia", "espeak-ng", "local"},
}

Price = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class LlmPrice(BaseModel):
    """A model's price per million tokens, prompt (`input`) and completion (`output`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: Price
    output: Price


class PriceTable(BaseModel):
    """The operator's prices (see the module docstring); every section may be left out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    carrier_per_minute: dict[str, Price] = Field(default_factory=dict)
    stt_per_minute: dict[str, Price] = Field(default_factory=dict)
    llm_per_1m_tokens: dict[str, LlmPrice] = Field(default_factory=dict)
    tts_per_1k_chars: dict[str, Price] = Field(default_factory=dict)

    @field_validator("carrier_per_minute", "stt_per_minute", "tts_per_1k_chars")
    @classmethod
    def _known_providers(cls, prices: dict[str, Decimal], info: Any) -> dict[str, Decimal]:
        known = _KNOWN_PROVIDERS[info.field_name]
        unknown = sorted(set(prices) - known)
        if unknown:
            raise ValueError(f"unknown provider {unknown[0]!r} (known: {', '.join(sorted(known))})")
        local = LOCAL_ENGINES.get(info.field_name)
        if local is not None and "local" in prices:
            prices = dict(prices)
            prices.setdefault(local, prices["local"])
            del prices["local"]
        return prices

    def llm_price(self, model: str | None) -> LlmPrice | None:
        """The price of `model`, else the `default` row, else None."""
        if model is not None and model in self.llm_per_1m_tokens:
            return self.llm_per_1m_tokens[model]
        return self.llm_per_1m_tokens.get(DEFAULT_MODEL)


# EXAMPLE figures only, to show the shape: replace them with your own prices.
EXAMPLE_PRICES = PriceTable(
    currency="USD",
    carrier_per_minute={
        "twilio": Decimal("0.0100"),
        "livekit": Decimal("0.0050"),
        "web": Decimal(0),  # a browser's call: no phone carrier
    },
    stt_per_minute={"deepgram": Decimal("0.0080"), "pocketsphinx": Decimal(0)},
    llm_per_1m_tokens={
        "gpt-4o-mini": LlmPrice(input=Decimal("0.20"), output=Decimal("0.80")),
        DEFAULT_MODEL: LlmPrice(input=Decimal("1.00"), output=Decimal("4.00")),
    },
    tts_per_1k_chars={"cartesia": Decimal("0.050"), "espeak-ng": Decimal(0)},
)


def _round(value: Decimal) -> Decimal:
    return value.quantize(AMOUNT_PLACES, rounding=ROUND_HALF_UP)


def _seconds(value: float) -> Decimal:
    return Decimal(str(value))  # counted to the millisecond: the text is exact


def _price(prices: dict[str, Decimal], provider: str, what: str, call_id: str | None) -> Decimal:
    price = prices.get(provider)
    if price is None:
        log.warning("no %s price for %r: priced 0", what, provider, extra={"call_id": call_id})
        return Decimal(0)
    return price


def _per_minute(
    kind: CostKind,
    provider: str,
    seconds_used: float,
    table: dict[str, Decimal],
    call_id: str | None,
) -> CostItem:
    """The item of `seconds_used` of `provider`, priced per minute by `table`."""
    per_minute = _price(table, provider, "STT" if kind == "stt" else kind, call_id)
    seconds = _seconds(seconds_used)
    return CostItem(
        kind=kind,
        provider=provider,
        quantity=_round(seconds / 60),
        unit="minute",
        unit_price=per_minute,
        amount=_round(seconds * per_minute / 60),
    )


def price_call(usage: CallUsage, prices: PriceTable, *, call_id: str | None = None) -> CallCost:
    """The cost of `usage` at `prices`: one item per provider (and model) and kind."""
    items: list[CostItem] = [
        _per_minute("carrier", c.provider, c.seconds, prices.carrier_per_minute, call_id)
        for c in usage.carrier
    ]
    items += [
        _per_minute("stt", s.provider, s.seconds, prices.stt_per_minute, call_id) for s in usage.stt
    ]
    for llm in usage.llm:
        price = prices.llm_price(llm.model)
        if price is None:
            log.warning(
                "no LLM price for model %r: priced 0", llm.model, extra={"call_id": call_id}
            )
            price = LlmPrice(input=Decimal(0), output=Decimal(0))
        sides: tuple[tuple[CostKind, int, Decimal], ...] = (
            ("llm_input", llm.prompt_tokens, price.input),
            ("llm_output", llm.completion_tokens, price.output),
        )
        for kind, tokens, per_million in sides:
            items.append(
                CostItem(
                    kind=kind,
                    provider=llm.provider,
                    model=llm.model,
                    quantity=Decimal(tokens),
                    unit="token",
                    unit_price=per_million / 1_000_000,
                    amount=_round(tokens * per_million / 1_000_000),
                )
            )
    for tts in usage.tts:
        per_thousand = _price(prices.tts_per_1k_chars, tts.provider, "TTS", call_id)
        items.append(
            CostItem(
                kind="tts",
                provider=tts.provider,
                quantity=Decimal(tts.characters),
                unit="character",
                unit_price=per_thousand / 1000,
                amount=_round(tts.characters * per_thousand / 1000),
            )
        )
    total = sum((item.amount for item in items), Decimal(0))
    return CallCost(items=tuple(items), total=_round(total), currency=prices.currency)
