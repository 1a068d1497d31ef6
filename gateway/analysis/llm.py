"""The model a post-call analysis asks: any OpenAI-compatible chat endpoint, one
non-streaming request in JSON mode (`response_format: json_object`) per attempt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from gateway.errors import ProviderError
from gateway.providers.base import ChatMessage
from gateway.providers.catalog import settings_for
from gateway.settings import Settings
from storage import AssistantConfig


@dataclass(frozen=True, slots=True)
class LLMAnswer:
    text: str
    prompt_tokens: int
    completion_tokens: int


class AnalysisLLM(Protocol):
    """One chat completion; `ProviderError` when the model cannot be reached or refuses."""

    async def complete(self, *, model: str, messages: Sequence[ChatMessage]) -> LLMAnswer: ...
    async def aclose(self) -> None: ...


class OpenAIAnalysisLLM:
    """`AnalysisLLM` on `chat.completions` (not streamed; JSON mode)."""

    name = "openai"

    def __init__(self, *, api_key: str, base_url: str | None, timeout_s: float) -> None:
        self._client = AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(self, *, model: str, messages: Sequence[ChatMessage]) -> LLMAnswer:
        wire = [{"role": m.role, "content": m.content} for m in messages]
        try:
            completion = await self._client.chat.completions.create(
                model=model,
                messages=cast(list[ChatCompletionMessageParam], wire),
                response_format={"type": "json_object"},
            )
        except openai.APIStatusError as exc:
            raise ProviderError(
                f"the model answered HTTP {exc.status_code}",
                provider=self.name,
                status=exc.status_code,
            ) from exc
        except openai.APITimeoutError as exc:
            raise ProviderError("the model did not answer in time", provider=self.name) from exc
        except openai.APIConnectionError as exc:
            raise ProviderError("the model could not be reached", provider=self.name) from exc
        except openai.APIError as exc:  # e.g. an answer that is no chat completion
            raise ProviderError(
                f"the model's answer was unusable: {exc}", provider=self.name
            ) from exc
        text = completion.choices[0].message.content if completion.choices else None
        usage = completion.usage
        return LLMAnswer(
            text=text or "",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )


def analysis_model(settings: Settings, assistant: AssistantConfig) -> str | None:
    """The chat model that analyses the assistant's calls, or None: no LLM is configured
    for it (no OpenAI-compatible key, or its LLM is the local agent)."""
    chosen = settings_for(settings, assistant)
    if chosen.openai_api_key is None or chosen.llm_provider == "local":
        return None
    plan = assistant.analysis
    return plan.model if plan is not None and plan.model else chosen.openai_model


def analysis_llm(settings: Settings) -> OpenAIAnalysisLLM | None:
    """The analysis client of the gateway's OpenAI-compatible endpoint, if a key is set."""
    if settings.openai_api_key is None:
        return None
    return OpenAIAnalysisLLM(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        timeout_s=settings.analysis_timeout_s,
    )
