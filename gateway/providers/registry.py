"""Chooses the providers a call uses from settings (the local ones need no keys).

Each role (STT, LLM, TTS) is "auto" (the cloud provider when its key is set), a named
cloud provider, or "local". A cloud provider named without its key falls back to the
local one with a log line, never a crash. The local engines also stand by as fallbacks:
the STT for a call whose cloud STT cannot be opened, the TTS for the apology when the
cloud TTS fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.errors import ConfigError, ProviderError
from gateway.providers.base import LLM, STT, TTS, Providers
from gateway.providers.cartesia_tts import CartesiaTTS
from gateway.providers.deepgram_stt import DeepgramSTT
from gateway.providers.domain_lm import default_dict_file, default_lm_file
from gateway.providers.local_agent import LocalScriptedAgent
from gateway.providers.local_stt import PocketSphinxSTT
from gateway.providers.local_tts import EspeakTTS
from gateway.providers.openai_llm import HttpTool, OpenAIChatLLM
from gateway.settings import Settings

log = logging.getLogger(__name__)

_BUILT_IN_TOOLS = frozenset({"end_call", "send_dtmf", "transfer_call"})


def _wants_cloud(choice: str, cloud: str, key_set: bool, key_name: str) -> bool:
    if choice == "local":
        return False
    if key_set:
        return True
    if choice == cloud:
        log.warning("%s is selected but %s is not set: using the local provider", cloud, key_name)
    else:
        log.info("%s is not set: the local provider serves this role", key_name)
    return False


def build_llm(settings: Settings) -> LLM:
    """OpenAI (or a compatible server) when chosen and keyed, else the local agent."""
    key = settings.openai_api_key
    if not _wants_cloud(settings.llm_provider, "openai", key is not None, "OPENAI_API_KEY"):
        return LocalScriptedAgent(greeting=settings.assistant_greeting)
    assert key is not None
    tools = [HttpTool(**spec.model_dump()) for spec in settings.assistant_http_tools]
    clashes = _BUILT_IN_TOOLS & {tool.name for tool in tools}
    if clashes:
        raise ConfigError(f"assistant tools may not reuse built-in names: {sorted(clashes)}")
    log.info(
        "agent: OpenAI-compatible chat model",
        extra={"model": settings.openai_model, "base_url": settings.openai_base_url},
    )
    return OpenAIChatLLM(
        api_key=key.get_secret_value(),
        base_url=settings.openai_base_url,
        model=settings.openai_model,
        system_prompt=settings.assistant_system_prompt,
        greeting=settings.assistant_greeting,
        http_tools=tools,
        transfer_targets=settings.assistant_transfer_targets,
    )


def _local_stt(settings: Settings, *, prewarm: int) -> PocketSphinxSTT:
    return PocketSphinxSTT(
        lm_path=default_lm_file(),
        dict_path=default_dict_file(),
        prewarm=prewarm,
        max_utterance_s=settings.local_stt_max_utterance_s,
    )


def _local_tts(settings: Settings) -> EspeakTTS | None:
    try:
        return EspeakTTS(voice=settings.tts_voice, words_per_minute=settings.tts_words_per_minute)
    except ProviderError as exc:
        log.warning("no local TTS: %s", exc)
        return None


def build_default_providers(
    settings: Settings, *, on_stt_reconnect: Callable[[], None] | None = None
) -> Providers:
    """The default assistant's providers, each with its local fallback."""
    key = settings.deepgram_api_key
    stt: STT
    fallback_stt: STT | None
    if _wants_cloud(settings.stt_provider, "deepgram", key is not None, "DEEPGRAM_API_KEY"):
        assert key is not None
        stt = DeepgramSTT(
            api_key=key.get_secret_value(),
            base_url=settings.deepgram_base_url,
            model=settings.deepgram_model,
            language=settings.deepgram_language,
            chunk_ms=settings.deepgram_chunk_ms,
            quiet_chunk_ms=settings.deepgram_quiet_chunk_ms,
            on_reconnect=on_stt_reconnect,
        )
        fallback_stt = _local_stt(settings, prewarm=0)
        log.info("STT: Deepgram", extra={"model": settings.deepgram_model})
    else:
        stt = _local_stt(settings, prewarm=settings.stt_prewarm)
        fallback_stt = None
    key = settings.cartesia_api_key
    local_tts = _local_tts(settings)
    tts: TTS
    if _wants_cloud(settings.tts_provider, "cartesia", key is not None, "CARTESIA_API_KEY"):
        assert key is not None
        tts = CartesiaTTS(
            api_key=key.get_secret_value(),
            base_url=settings.cartesia_base_url,
            model=settings.cartesia_model,
            voice_id=settings.cartesia_voice,
            language=settings.cartesia_language,
        )
        log.info("TTS: Cartesia", extra={"model": settings.cartesia_model})
    elif local_tts is not None:
        tts = local_tts
        local_tts = None
    else:
        raise ConfigError("no TTS: install espeak-ng or set CARTESIA_API_KEY")
    return Providers(
        stt=stt,
        llm=build_llm(settings),
        tts=tts,
        fallback_stt=fallback_stt,
        fallback_tts=local_tts,
    )
