"""Chooses the providers a call uses from settings (the local ones need no keys)."""

from __future__ import annotations

from gateway.providers.domain_lm import default_dict_file, default_lm_file
from gateway.providers.local_agent import LocalScriptedAgent
from gateway.providers.local_stt import PocketSphinxSTT
from gateway.providers.local_tts import EspeakTTS
from gateway.session import Providers
from gateway.settings import Settings


def build_default_providers(settings: Settings) -> Providers:
    """The embedded defaults: offline STT, espeak-ng TTS and the local scripted agent."""
    return Providers(
        stt=PocketSphinxSTT(
            lm_path=default_lm_file(),
            dict_path=default_dict_file(),
            prewarm=settings.stt_prewarm,
        ),
        llm=LocalScriptedAgent(greeting=settings.assistant_greeting),
        tts=EspeakTTS(voice=settings.tts_voice, words_per_minute=settings.tts_words_per_minute),
    )
