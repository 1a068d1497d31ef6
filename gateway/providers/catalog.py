"""Providers per assistant: each assistant's choice of STT / LLM / TTS, model, voice and
language, built on first use and shared by every call of an assistant with that choice."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gateway.providers.base import Providers
from gateway.providers.registry import build_default_providers
from gateway.settings import Settings
from storage import AssistantConfig

log = logging.getLogger(__name__)

_CLOUD = {"stt_provider": "deepgram", "llm_provider": "openai", "tts_provider": "cartesia"}


def settings_for(settings: Settings, assistant: AssistantConfig) -> Settings:
    """The gateway's settings with the assistant's provider choices laid over them."""
    updates: dict[str, Any] = {}
    for role, cloud in _CLOUD.items():
        choice = getattr(assistant, role)
        if choice != "auto":
            updates[role] = cloud if choice == "cloud" else "local"
    if assistant.llm_model:
        updates["openai_model"] = assistant.llm_model
    if assistant.voice:
        updates["cartesia_voice"] = assistant.voice
        updates["tts_voice"] = assistant.voice
    if assistant.language != "en":
        updates["deepgram_language"] = assistant.language
        updates["cartesia_language"] = assistant.language.split("-")[0]
    if updates:
        updates["stt_prewarm"] = 0  # recognisers of other choices load on demand
    return settings.model_copy(update=updates) if updates else settings


def _choice_key(assistant: AssistantConfig) -> tuple[str | None, ...]:
    return (
        assistant.stt_provider,
        assistant.llm_provider,
        assistant.tts_provider,
        assistant.llm_model,
        assistant.voice,
        assistant.language,
    )


class ProviderCatalog:
    """The default providers, and those of each distinct assistant choice (built once)."""

    def __init__(
        self,
        settings: Settings,
        default: Providers,
        *,
        on_stt_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self.default = default
        self._on_stt_reconnect = on_stt_reconnect
        self._built: dict[tuple[str | None, ...], Providers] = {}

    def for_assistant(self, assistant: AssistantConfig | None) -> Providers:
        """The providers serving `assistant` (the defaults when it changes nothing)."""
        if assistant is None:
            return self.default
        custom = settings_for(self._settings, assistant)
        if custom is self._settings:
            return self.default
        key = _choice_key(assistant)
        if key not in self._built:
            log.info("providers built for an assistant's choice", extra={"choice": key})
            self._built[key] = build_default_providers(
                custom, on_stt_reconnect=self._on_stt_reconnect
            )
        return self._built[key]

    async def aclose(self) -> None:
        """Close every provider's connections (each once)."""
        seen: set[int] = set()
        for providers in (self.default, *self._built.values()):
            for provider in (
                providers.stt,
                providers.llm,
                providers.tts,
                providers.fallback_stt,
                providers.fallback_tts,
            ):
                if provider is None or id(provider) in seen:
                    continue
                seen.add(id(provider))
                close = getattr(provider, "aclose", None)
                if close is None:
                    continue
                try:
                    await close()
                except Exception:  # shutdown goes on for the other providers
                    log.exception("closing provider %s failed", provider.name)
