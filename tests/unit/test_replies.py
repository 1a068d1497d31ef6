"""The reply generator with doubles of the LLM, the TTS and the transport: a reply is spoken
sentence by sentence with its latency marked and tokens counted; a silent LLM or TTS ends an
attempt in time; a failed agent is retried once, then apologises through the fallback voice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from gateway.call.latency import TurnLatency
from gateway.call.playback import PlaybackTracker
from gateway.call.replies import ReplyGenerator
from gateway.errors import ProviderError
from gateway.metrics import GatewayMetrics
from gateway.providers.base import (
    ChatMessage,
    HangUp,
    LLMEvent,
    Providers,
    SpeechEvent,
    STTStream,
    TextDelta,
    Usage,
)
from gateway.providers.sentence_speech import SentenceConnection
from storage import LlmUsage, TtsUsage

RATE = 8000
APOLOGY = "Sorry, say that again?"
HISTORY = [ChatMessage("user", "what are your hours")]


class _Transport:
    """Takes the agent's audio and marks as they come (nothing paces or plays them)."""

    sample_rate = RATE

    def __init__(self) -> None:
        self.samples = 0
        self.marks: list[str] = []
        self.playing = asyncio.Event()

    async def play(self, pcm: npt.NDArray[np.int16]) -> None:
        self.samples += int(pcm.shape[0])
        self.playing.set()

    async def mark(self, name: str) -> None:
        self.marks.append(name)

    async def clear(self) -> None:
        raise AssertionError("the reply generator never clears")

    async def transfer(self, to: str) -> None:
        raise AssertionError("the reply generator never transfers")


class _ScriptedLLM:
    """Streams `events` for every reply, or fails with `error` first."""

    name = "llm"

    def __init__(self, events: list[LLMEvent], *, error: ProviderError | None = None) -> None:
        self._events = events
        self._error = error
        self.calls = 0

    async def respond(
        self, history: Sequence[ChatMessage], *, call_id: str
    ) -> AsyncIterator[LLMEvent]:
        self.calls += 1
        if self._error is not None:
            raise self._error
        for event in self._events:
            await asyncio.sleep(0)
            yield event


class _SilentLLM:
    """Accepts the request and never says a word."""

    name = "silent-llm"

    def __init__(self) -> None:
        self.calls = 0

    async def respond(
        self, history: Sequence[ChatMessage], *, call_id: str
    ) -> AsyncIterator[LLMEvent]:
        self.calls += 1
        await asyncio.Event().wait()
        yield TextDelta("never")


class _ToneTTS:
    """100 ms of tone per word at 8 kHz, in 20 ms chunks."""

    def __init__(self, name: str = "tone") -> None:
        self.name = name
        self.texts: list[str] = []

    def output_rate(self, transport_rate: int) -> int:
        return RATE

    async def open(self, *, call_id: str, sample_rate: int) -> SentenceConnection:
        return SentenceConnection(self._synthesize)

    async def _synthesize(self, text: str) -> AsyncIterator[npt.NDArray[np.int16]]:
        self.texts.append(text)
        tone = np.full(800 * len(text.split()), 1000, dtype=np.int16)
        for i in range(0, len(tone), 160):
            await asyncio.sleep(0)
            yield tone[i : i + 160]


class _SilentSpeech:
    """A TTS turn that takes text and never yields audio until cancelled."""

    def __init__(self) -> None:
        self._cancelled = asyncio.Event()

    async def say(self, text: str) -> None:
        pass

    async def finish(self) -> None:
        pass

    async def audio(self) -> AsyncIterator[SpeechEvent]:
        await self._cancelled.wait()
        return
        yield

    async def cancel(self) -> None:
        self._cancelled.set()


class _SilentTTS:
    name = "silent-tts"

    def __init__(self) -> None:
        self.turns = 0
        self.closed = 0

    def output_rate(self, transport_rate: int) -> int:
        return RATE

    async def open(self, *, call_id: str, sample_rate: int) -> _SilentTTS:
        return self

    def turn(self) -> _SilentSpeech:
        self.turns += 1
        return _SilentSpeech()

    async def aclose(self) -> None:
        self.closed += 1


class _NoSTT:
    name = "none"
    continuous = False

    def input_rate(self, transport_rate: int) -> int:
        return transport_rate

    async def open_stream(self, *, call_id: str, sample_rate: int) -> STTStream:
        raise NotImplementedError


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.001  # every look at the clock is a little later
        return self.now


def _generator(
    llm: object, tts: object, *, fallback_tts: object = None
) -> tuple[ReplyGenerator, _Transport, PlaybackTracker, GatewayMetrics]:
    transport, metrics = _Transport(), GatewayMetrics()
    playback = PlaybackTracker(rate=RATE, clock=_Clock())
    providers = Providers(_NoSTT(), llm, tts, fallback_tts=fallback_tts)  # type: ignore[arg-type]
    generator = ReplyGenerator(
        call_id="call-1",
        providers=providers,
        transport=transport,
        playback=playback,
        apology=APOLOGY,
        llm_first_token_timeout_s=0.05,
        tts_first_audio_timeout_s=0.05,
        metrics=metrics,
    )
    return generator, transport, playback, metrics


async def test_a_reply_is_spoken_sentence_by_sentence_and_its_actions_returned() -> None:
    llm = _ScriptedLLM(
        [
            TextDelta("We are open from nine. "),
            TextDelta("Goodbye!"),
            Usage(prompt_tokens=12, completion_tokens=7, model="m-1"),
            HangUp("agent-ended"),
        ]
    )
    tts = _ToneTTS()
    generator, transport, playback, _ = _generator(llm, tts)
    clock = _Clock()
    latency = TurnLatency(speech_ended_at=clock.now, clock=clock)
    latency.mark("stt_final")
    actions = await generator.reply(HISTORY, latency)
    await generator.aclose()
    assert actions == [HangUp("agent-ended")]
    assert tts.texts == ["We are open from nine.", "Goodbye!"]
    assert transport.samples == 800 * 6
    assert transport.marks == ["seg-1", "seg-2"]  # one segment, one mark per sentence
    assert playback.full_text() == "We are open from nine. Goodbye!"
    assert list(latency.as_ms()) == [
        "stt_final",
        "llm_first_token",
        "tts_first_byte",
        "first_frame_out",
    ]
    used = generator.meter.usage()  # the tokens per model, the characters as spoken
    assert used.llm == (
        LlmUsage(provider="llm", model="m-1", prompt_tokens=12, completion_tokens=7),
    )
    assert used.tts == (
        TtsUsage(provider="tone", characters=len("We are open from nine.Goodbye!")),
    )


async def test_an_llm_with_no_first_token_is_retried_once_then_apologises() -> None:
    llm, tts = _SilentLLM(), _ToneTTS()
    generator, transport, playback, metrics = _generator(llm, tts)
    assert await generator.reply(HISTORY) == []
    await generator.aclose()
    assert llm.calls == 2
    assert metrics.provider_failures == {"silent-llm": 2}
    assert tts.texts == [APOLOGY]  # the main voice is fine: it apologises
    assert playback.full_text() == APOLOGY
    assert transport.marks == ["seg-1"]
    used = generator.meter.usage()
    assert used.llm == () and used.tts == (TtsUsage(provider="tone", characters=len(APOLOGY)),)


async def test_a_final_llm_error_is_not_retried() -> None:
    llm = _ScriptedLLM([], error=ProviderError("bad request", provider="llm", status=400))
    generator, _, playback, metrics = _generator(llm, _ToneTTS())
    assert await generator.reply(HISTORY) == []
    await generator.aclose()
    assert llm.calls == 1
    assert metrics.provider_failures == {"llm": 1}
    assert playback.full_text() == APOLOGY


async def test_a_silent_tts_gives_way_to_the_fallback_voice() -> None:
    llm = _ScriptedLLM([TextDelta("We are open from nine.")])
    silent, fallback = _SilentTTS(), _ToneTTS("fallback")
    generator, _, playback, metrics = _generator(llm, silent, fallback_tts=fallback)
    assert await generator.reply(HISTORY) == []
    await generator.aclose()
    # Nothing was heard, so the TTS gets a second try on a fresh connection; then the
    # apology goes to the voice that did not fail.
    assert silent.turns == 2 and silent.closed == 2
    assert metrics.provider_failures == {"silent-tts": 2}
    assert fallback.texts == [APOLOGY]
    assert playback.full_text() == APOLOGY


async def test_an_apology_no_voice_can_speak_is_raised() -> None:
    generator, _, _, metrics = _generator(_SilentLLM(), _SilentTTS())
    with pytest.raises(ProviderError, match="no audio from TTS in time"):
        await generator.reply(HISTORY)
    await generator.aclose()
    assert metrics.provider_failures == {"silent-llm": 2, "silent-tts": 1}


async def test_cancelling_a_reply_stops_it_at_once() -> None:
    llm = _ScriptedLLM([TextDelta("One two three four five six seven eight nine ten.")])
    generator, transport, _, _ = _generator(llm, _ToneTTS())
    reply = asyncio.create_task(generator.reply(HISTORY))
    await transport.playing.wait()
    reply.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reply
    generator.drop_held_audio()
    await generator.aclose()
    assert 0 < transport.samples < 8000
    assert transport.marks == []
