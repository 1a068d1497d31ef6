"""How a call runs, from one read of its assistant: providers speaking the call's persona,
the maximum duration, and whether it is recorded (the same for every carrier)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gateway.call.persona import Persona, PersonaLLM
from gateway.providers.base import Providers
from gateway.providers.catalog import ProviderCatalog
from storage import AssistantRepository, CallRecord

DEFAULT_MAX_DURATION_S = 4 * 3600  # calls of the default assistant


@dataclass(frozen=True, slots=True)
class CallPlan:
    providers: Providers  # speaking the call's persona
    max_duration_s: float
    recording: bool  # the assistant's choice; calls without an assistant are recorded


async def plan_call(
    call: CallRecord, *, assistants: AssistantRepository, catalog: ProviderCatalog
) -> CallPlan:
    """The plan of `call`, from one read of its assistant."""
    assistant = await assistants.get_any(call.assistant_id) if call.assistant_id else None
    config = assistant.config if assistant else None
    providers = catalog.for_assistant(config)
    if call.system_prompt is not None:
        persona = Persona(system_prompt=call.system_prompt, greeting=call.greeting or "")
        providers = dataclasses.replace(providers, llm=PersonaLLM(providers.llm, persona))
    return CallPlan(
        providers=providers,
        max_duration_s=float(config.max_duration_s if config else DEFAULT_MAX_DURATION_S),
        recording=config.recording if config else True,
    )
