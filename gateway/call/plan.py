"""How a call runs, from one read of its assistant: providers speaking the call's persona,
its turn-taking, the maximum duration, and whether it is recorded (the same for every
carrier)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gateway.call.persona import Persona, PersonaLLM, fill
from gateway.errors import MissingPlaceholders
from gateway.providers.base import Providers
from gateway.providers.catalog import ProviderCatalog
from storage import AssistantRepository, CallRecord, Direction, TurnTakingConfig, VoicemailPlan

DEFAULT_MAX_DURATION_S = 4 * 3600  # calls of the default assistant


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """The call's turn-taking, with its reprompt and idle goodbye filled for the call."""

    config: TurnTakingConfig
    reprompt: str
    goodbye: str
    english: bool = True  # the words-so-far check reads English only

    @classmethod
    def default(cls, config: TurnTakingConfig) -> TurnPlan:
        """The plan of a call without an assistant (its lines have no placeholders)."""
        return cls(config=config, reprompt=config.idle_reprompt, goodbye=config.idle_goodbye)

    @classmethod
    def for_call(cls, config: TurnTakingConfig, call: CallRecord, *, language: str) -> TurnPlan:
        """Fill the idle lines from the call's values (checked when the call was opened; a
        name missing since is left as written rather than failing the call)."""
        values = call_values(call)

        def filled(template: str) -> str:
            try:
                return fill(template, values)
            except MissingPlaceholders:
                return template

        return cls(
            config=config,
            reprompt=filled(config.idle_reprompt),
            goodbye=filled(config.idle_goodbye),
            english=language.split("-")[0] == "en",
        )


@dataclass(frozen=True, slots=True)
class CallPlan:
    providers: Providers  # speaking the call's persona
    turns: TurnPlan | None  # None: the process's default turn-taking
    max_duration_s: float
    recording: bool  # the assistant's choice; calls without an assistant are recorded
    # Outbound calls of an assistant with a voicemail plan: its message filled for the call.
    voicemail: VoicemailPlan | None = None


def call_values(call: CallRecord) -> dict[str, str]:
    """What a call's `{{placeholders}}` are filled from: its numbers and its metadata."""
    return {"from_number": call.from_number, "to_number": call.to_number, **call.metadata}


def voicemail_plan(plan: VoicemailPlan | None, call: CallRecord) -> VoicemailPlan | None:
    """The assistant's voicemail plan for `call` (outbound calls only), its message filled
    (checked when the call was placed; a name missing since is left as written)."""
    if plan is None or call.direction is not Direction.OUTBOUND:
        return None
    try:
        message = fill(plan.message, call_values(call))
    except MissingPlaceholders:
        message = plan.message
    return plan.model_copy(update={"message": message})


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
        turns=(
            TurnPlan.for_call(config.turn_taking, call, language=config.language)
            if config
            else None
        ),
        max_duration_s=float(config.max_duration_s if config else DEFAULT_MAX_DURATION_S),
        recording=config.recording if config else True,
        voicemail=voicemail_plan(config.voicemail if config else None, call),
    )
