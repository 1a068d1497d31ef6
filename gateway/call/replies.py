"""The agent's replies, spoken into the call: the LLM's sentences go to the TTS while its
audio plays, within bounds (a first token, then audio, in time), retried once, and an apology
instead of silence when the agent cannot answer. Barge-in and the transcript are the
session's; this module only says things, counts the tokens and the characters spoken (the
call's `UsageMeter`) and marks each reply's latency.

Order of calls: `reply()` for each agent turn, one at a time (cancelling its task stops
it; `drop_held_audio()` then discards what the resamplers still hold), `aclose()` at
hang-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

from audio.frames import PCM16
from audio.resample import StreamResampler
from gateway.call.latency import TurnLatency
from gateway.call.playback import PlaybackTracker
from gateway.call.sentences import SentenceChunker
from gateway.call.transport import CallTransport
from gateway.call.usage import UsageMeter
from gateway.errors import ProviderError
from gateway.metrics import GatewayMetrics
from gateway.providers.base import (
    TTS,
    ChatMessage,
    HangUp,
    Providers,
    SegmentDone,
    SendDtmf,
    SpeechAudio,
    SpeechStream,
    TextDelta,
    TransferCall,
    TTSConnection,
    Usage,
)

log = logging.getLogger(__name__)

E = TypeVar("E")

Action = HangUp | TransferCall | SendDtmf


class Voice:
    """One TTS of the call: its connection (opened on first use) and its output resampler."""

    def __init__(self, tts: TTS, *, call_id: str, transport_rate: int) -> None:
        self.tts = tts
        self._call_id = call_id
        self.rate = tts.output_rate(transport_rate)
        self.resampler = StreamResampler(self.rate, transport_rate)
        self._connection: TTSConnection | None = None

    async def turn(self) -> SpeechStream:
        if self._connection is None:
            self._connection = await self.tts.open(call_id=self._call_id, sample_rate=self.rate)
        return self._connection.turn()

    async def aclose(self) -> None:
        if self._connection is not None:
            await self._connection.aclose()
            self._connection = None


class ReplyGenerator:
    """Speaks the agent's replies through the transport, one playback segment per sentence."""

    def __init__(
        self,
        *,
        call_id: str,
        providers: Providers,
        transport: CallTransport,
        playback: PlaybackTracker,
        apology: str,
        llm_first_token_timeout_s: float,
        tts_first_audio_timeout_s: float,
        metrics: GatewayMetrics | None = None,
        meter: UsageMeter | None = None,
    ) -> None:
        self._call_id = call_id
        self._llm = providers.llm
        self._transport = transport
        self._playback = playback
        self._apology = apology
        self._llm_timeout_s = llm_first_token_timeout_s
        self._tts_timeout_s = tts_first_audio_timeout_s
        self._metrics = metrics
        rate = transport.sample_rate
        self._voice = Voice(providers.tts, call_id=call_id, transport_rate=rate)
        self._fallback_voice = (
            Voice(providers.fallback_tts, call_id=call_id, transport_rate=rate)
            if providers.fallback_tts is not None
            else None
        )
        self.meter = meter or UsageMeter()

    async def reply(
        self, history: Sequence[ChatMessage], latency: TurnLatency | None = None
    ) -> list[Action]:
        """Speak the agent's answer to `history`; return the call actions it asked for.

        A failed agent (LLM or TTS) is retried once if nothing was said yet, then the
        caller hears an apology instead of silence; the call goes on. Raises
        `ProviderError` only if the apology cannot be spoken either.
        """
        tts_failed = False
        for attempt in (1, 2):
            try:
                return await self._generate(self._voice, history, latency)
            except ProviderError as exc:
                log.warning(
                    "agent failed: %s", exc, extra={"provider": exc.provider, "attempt": attempt}
                )
                self._count_failure(exc.provider)
                tts_failed = exc.provider == self._voice.tts.name
                if tts_failed:
                    with contextlib.suppress(Exception):
                        await self._voice.aclose()  # a fresh connection for the next try
                if attempt == 2 or not exc.retryable or self._playback.full_text():
                    break
        await self._speak(self._apology, latency, prefer_fallback=tts_failed)
        return []

    async def say(self, text: str) -> None:
        """Speak `text` as it is (no LLM): through the main TTS, else the fallback one.
        Raises `ProviderError` if neither can."""
        await self._speak(text, None, prefer_fallback=False)

    def drop_held_audio(self) -> None:
        """Whatever the resamplers still hold belongs to a reply that was cleared."""
        self._voice.resampler.flush()
        if self._fallback_voice is not None:
            self._fallback_voice.resampler.flush()

    async def aclose(self) -> None:
        for voice in (self._voice, self._fallback_voice):
            if voice is not None:
                with contextlib.suppress(Exception):
                    await voice.aclose()

    async def _generate(
        self, voice: Voice, history: Sequence[ChatMessage], latency: TurnLatency | None
    ) -> list[Action]:
        """Stream one reply from the agent into speech.

        The LLM's sentences go to the TTS as soon as each is complete while a second task
        plays the audio that comes back, so the first words play before the LLM is done.
        """
        actions: list[Action] = []
        speech = await voice.turn()
        texts: list[str] = []
        player = asyncio.create_task(
            self._play_speech(speech, voice, texts, latency), name="player"
        )
        completed = False
        try:
            chunker = SentenceChunker()
            events = aiter(self._llm.respond(history, call_id=self._call_id))
            timeout: float | None = self._llm_timeout_s
            while (
                event := await _next_within(
                    events,
                    timeout,
                    provider=self._llm.name,
                    what="no answer from the agent in time",
                )
            ) is not None:
                if player.done():
                    player.result()  # the TTS failed: stop asking the LLM
                if isinstance(event, Usage):
                    self.meter.llm_tokens(
                        self._llm.name, event.model, event.prompt_tokens, event.completion_tokens
                    )
                elif isinstance(event, TextDelta):
                    _mark(latency, "llm_first_token")
                    timeout = None
                    for sentence in chunker.push(event.text):
                        texts.append(sentence)
                        await self._say(voice, speech, sentence)
                else:
                    actions.append(event)
            for sentence in chunker.flush():
                texts.append(sentence)
                await self._say(voice, speech, sentence)
            await speech.finish()
            await player
            completed = True
        finally:
            if not completed:
                # Barge-in or failure: stop the audio task and the synthesis itself.
                player.cancel()
                with contextlib.suppress(asyncio.CancelledError, ProviderError):
                    await player
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await speech.cancel()
        return actions

    async def _play_speech(
        self, speech: SpeechStream, voice: Voice, texts: list[str], latency: TurnLatency | None
    ) -> None:
        """Play the turn's audio in order, one playback segment (and mark) per sentence."""
        opened = -1
        mark = ""
        segment_open = False
        events = aiter(speech.audio())
        try:
            # Bounded: a TTS that goes quiet mid-turn must not leave the caller in silence.
            while (
                event := await _next_within(
                    events,
                    self._tts_timeout_s,
                    provider=voice.tts.name,
                    what="no audio from TTS in time",
                )
            ) is not None:
                if event.segment > opened:
                    opened = event.segment
                    text = texts[opened] if opened < len(texts) else ""
                    mark = self._playback.begin_segment(text)
                    segment_open = True
                if isinstance(event, SpeechAudio):
                    _mark(latency, "tts_first_byte")
                    await self._play(voice.resampler.process(event.pcm), latency)
                elif isinstance(event, SegmentDone):
                    # The resampler holds a few ms of the sentence's tail: never drop it.
                    await self._play(voice.resampler.flush(), latency)
                    self._playback.close_segment()
                    segment_open = False
                    await self._transport.mark(mark)
        except ProviderError:
            if segment_open:  # what was sent still plays: its mark must come back
                self._playback.close_segment()
                await self._transport.mark(mark)
            raise

    async def _speak(
        self, text: str, latency: TurnLatency | None, *, prefer_fallback: bool
    ) -> None:
        """Speak `text` (the apology, a goodbye): through the fallback (local) TTS first if
        the main TTS failed."""
        voices = [self._voice, self._fallback_voice]
        if prefer_fallback:
            voices.reverse()
        failure: ProviderError | None = None
        for voice in voices:
            if voice is None:
                continue
            try:
                await self._speak_text(text, voice, latency)
                return
            except ProviderError as exc:
                log.warning("speaking failed: %s", exc, extra={"provider": exc.provider})
                self._count_failure(exc.provider)
                failure = exc
        assert failure is not None
        raise failure

    async def _speak_text(self, text: str, voice: Voice, latency: TurnLatency | None) -> None:
        speech = await voice.turn()
        await self._say(voice, speech, text)
        await speech.finish()
        try:
            await self._play_speech(speech, voice, [text], latency)
        finally:
            await speech.cancel()

    async def _say(self, voice: Voice, speech: SpeechStream, text: str) -> None:
        """Hand `text` to the voice: the one place its characters are counted (as spoken,
        without the surrounding whitespace)."""
        await speech.say(text)
        self.meter.tts_text(voice.tts.name, len(text.strip()))

    async def _play(self, pcm: PCM16, latency: TurnLatency | None) -> None:
        if pcm.shape[0]:
            self._playback.add_audio(int(pcm.shape[0]))
            await self._transport.play(pcm)
            _mark(latency, "first_frame_out")

    def _count_failure(self, provider: str) -> None:
        if self._metrics is not None:
            self._metrics.provider_failed(provider)


def _mark(latency: TurnLatency | None, stage: str) -> None:
    if latency is not None:  # the greeting answers no one: it has no latency
        latency.mark(stage)


async def _next_within(
    events: AsyncIterator[E], timeout_s: float | None, *, provider: str, what: str
) -> E | None:
    """The next of `events` (None at their end); `ProviderError(what)` if it does not come
    within `timeout_s` (None: no bound)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await anext(events)
    except StopAsyncIteration:
        return None
    except TimeoutError as exc:
        raise ProviderError(what, provider=provider) from exc
