"""What the routes share: settings, the store, providers and the Twilio helpers, built once."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.livekit_sip import LiveKitSip
from gateway.metrics import GatewayMetrics
from gateway.persona import Persona, PersonaLLM
from gateway.providers.catalog import ProviderCatalog
from gateway.recording import RecordingBucket
from gateway.session import Providers, SessionConfig
from gateway.settings import Settings
from gateway.twilio_rest import TwilioCalls
from storage import (
    AccountRepository,
    AssistantRepository,
    CallRecord,
    CallStore,
    SipRepository,
    WebhookRepository,
)
from telephony.twilio import TwilioSignatureValidator
from webhooks.outbox import WebhookOutbox
from webhooks.ssrf import SsrfGuard

if TYPE_CHECKING:
    from gateway.livekit_calls import LiveKitCalls


@dataclass(frozen=True, slots=True)
class GatewayContext:
    settings: Settings
    store: CallStore
    providers: Providers
    twilio_validator: TwilioSignatureValidator
    stream_token_secret: bytes
    session_config: SessionConfig
    metrics: GatewayMetrics
    accounts: AccountRepository
    assistants: AssistantRepository
    sip: SipRepository
    catalog: ProviderCatalog
    twilio_calls: TwilioCalls | None = None
    livekit: LiveKitSip | None = None
    livekit_calls: LiveKitCalls | None = None
    webhooks: WebhookRepository | None = None
    outbox: WebhookOutbox | None = None
    ssrf_guard: SsrfGuard | None = None
    recordings: RecordingBucket | None = None  # None: S3_BUCKET unset, nothing is recorded


DEFAULT_MAX_DURATION_S = 4 * 3600  # calls of the default assistant


@dataclass(frozen=True, slots=True)
class CallPlan:
    """How a call runs, from its assistant (the same for every transport)."""

    providers: Providers  # speaking the call's persona
    max_duration_s: float
    recording: bool  # the assistant's choice; calls without an assistant are recorded


async def call_plan(ctx: GatewayContext, call: CallRecord) -> CallPlan:
    """The plan of `call`, from one read of its assistant."""
    assistant = await ctx.assistants.get_any(call.assistant_id) if call.assistant_id else None
    config = assistant.config if assistant else None
    providers = ctx.catalog.for_assistant(config)
    if call.system_prompt is not None:
        persona = Persona(system_prompt=call.system_prompt, greeting=call.greeting or "")
        providers = dataclasses.replace(providers, llm=PersonaLLM(providers.llm, persona))
    return CallPlan(
        providers=providers,
        max_duration_s=float(config.max_duration_s if config else DEFAULT_MAX_DURATION_S),
        recording=config.recording if config else True,
    )


def stream_token_secret(settings: Settings) -> bytes:
    """The key of per-call stream tokens: explicit, or derived from the Twilio auth token."""
    if settings.stream_token_secret is not None:
        return settings.stream_token_secret.get_secret_value().encode()
    assert settings.twilio_auth_token is not None
    token = settings.twilio_auth_token.get_secret_value().encode()
    return hashlib.sha256(b"voice-gateway stream token|" + token).digest()
