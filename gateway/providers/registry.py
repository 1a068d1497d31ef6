"""Chooses the providers a call uses from settings (the local ones need no keys)."""

from __future__ import annotations

import logging

from gateway.providers.base import LLM
from gateway.providers.domain_lm import default_dict_file, default_lm_file
from gateway.providers.local_agent import LocalScriptedAgent
from gateway.providers.local_stt import PocketSphinxSTT
from gateway.providers.local_tts import EspeakTTS
from gateway.providers.openai_llm import OpenAIChatLLM
from gateway.session import Providers
from gateway.settings import Settings

log = logging.getLogger(__name__)


def build_llm(settings: Settings) -> LLM:
    """OpenAI (or a compatible server) when OPENAI_API_KEY is set, else the local agent."""
    if settings.openai_api_key is None:
        log.info("OPENAI_API_KEY is not set: the local scripted agent answers calls")
        return LocalScriptedAgent(greeting=settings.assistant_greeting)
    log.info(
        "agent: OpenAI-compatible chat model",
        extra={"model": settings.openai_model, "base_url": settings.openai_base_url},
    )
    return OpenAIChatLLM(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        model=settings.openai_model,
        system_prompt=settings.assistant_system_prompt,
        greeting=settings.assistant_greeting,
    )


def build_default_providers(settings: Settings) -> Providers:
    """Offline STT and espeak-ng TTS; the agent from `build_llm`."""
    return Providers(
        stt=PocketSphinxSTT(
            lm_path=default_lm_file(),
            dict_path=default_dict_file(),
            prewarm=settings.stt_prewarm,
        ),
        llm=build_llm(settings),
        tts=EspeakTTS(voice=settings.tts_voice, words_per_minute=settings.tts_words_per_minute),
    )
