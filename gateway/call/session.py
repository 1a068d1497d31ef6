"""One call's conversation: turn-taking, the agent's replies, barge-in and the transcript.

The session is transport-agnostic: the call's lifecycle pushes caller `AudioFrame`s and
events (`on_audio`, `on_mark`, `on_dtmf`) and the session talks back through a
`CallTransport`. It never sees Twilio JSON or LiveKit objects, never knows which providers
it drives, and does not end calls itself: when the agent hangs up, transfers or fails for
good, it asks the lifecycle (`on_end`), which then closes it.

Order of calls: `start()` once (opens STT, greets), then any number of `on_audio()` /
`on_mark()` / `on_dtmf()`, then `close()` once (stops the agent and stores what was said).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from audio.dtmf import dtmf_tones
from audio.frames import PCM16, AudioFrame
from audio.resample import StreamResampler
from audio.vad import Endpointer, SpeechEnded, SpeechStarted
from gateway.call.latency import TurnLatency
from gateway.call.playback import PlaybackTracker
from gateway.call.sentences import SentenceChunker
from gateway.call.transport import CallTransport
from gateway.errors import ProviderError
from gateway.metrics import GatewayMetrics
from gateway.providers.base import (
    STT,
    TTS,
    ChatMessage,
    HangUp,
    Providers,
    SegmentDone,
    SendDtmf,
    SpeechAudio,
    SpeechStream,
    STTStream,
    TextDelta,
    TransferCall,
    TTSConnection,
    Usage,
)
from storage import CallStatus, CallStore

log = logging.getLogger(__name__)


Action = HangUp | TransferCall | SendDtmf


@dataclass(frozen=True, slots=True)
class SessionConfig:
    silence_ms: int = 600
    min_speech_ms: int = 120
    # Audio kept from before the VAD confirmed speech, so the first syllable reaches STT.
    preroll_ms: int = 300
    apology: str = "Sorry, I am having trouble right now. Could you say that again?"
    # Bounds on the agent: no first token / no audio within these ends the attempt.
    llm_first_token_timeout_s: float = 8.0
    tts_first_audio_timeout_s: float = 5.0


class _Voice:
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


class CallSession:
    """Runs one call between a caller (through a transport) and the agent (through providers)."""

    def __init__(
        self,
        *,
        call_id: str,
        transport: CallTransport,
        providers: Providers,
        store: CallStore,
        config: SessionConfig | None = None,
        on_end: Callable[[str, CallStatus], None],
        clock: Callable[[], float] = time.monotonic,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.call_id = call_id
        self._on_end = on_end
        self._transport = transport
        self._providers = providers
        self._store = store
        self._config = config or SessionConfig()
        self._clock = clock
        self._metrics = metrics
        self._started_at = clock()
        rate = transport.sample_rate
        self._use_stt(providers.stt)
        self._voice = _Voice(providers.tts, call_id=call_id, transport_rate=rate)
        self._fallback_voice = (
            _Voice(providers.fallback_tts, call_id=call_id, transport_rate=rate)
            if providers.fallback_tts is not None
            else None
        )
        self._endpointer = Endpointer(
            rate=rate,
            min_speech_ms=self._config.min_speech_ms,
            silence_ms=self._config.silence_ms,
        )
        frames_kept = max(1, self._config.preroll_ms // 20)
        self._preroll: collections.deque[AudioFrame] = collections.deque(maxlen=frames_kept)
        self._utterance_active = False
        # (start ms, end ms, wall-clock time speech ended) of utterances awaiting their text
        self._utterance_spans: collections.deque[tuple[float, float, float]] = collections.deque()
        self._utterance_start_ms = 0.0
        self._stt_stream: STTStream | None = None
        self._stt_task: asyncio.Task[None] | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._playback = PlaybackTracker(rate=rate, clock=clock)
        self._agent_turn_start_ms = 0.0
        self._latency: TurnLatency | None = None
        self._history: list[ChatMessage] = []
        self._turn_write: asyncio.Task[object] | None = None
        self._usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self._closed = False

    # ----------------------------------------------------------------- driver API

    async def start(self) -> None:
        """Open the STT stream and let the agent greet first."""
        try:
            self._stt_stream = await self._stt.open_stream(
                call_id=self.call_id, sample_rate=self._stt_rate
            )
        except ProviderError as exc:
            fallback = self._providers.fallback_stt
            if fallback is None:
                raise
            log.warning("STT unavailable, using %s: %s", fallback.name, exc)
            self._count_failure(exc.provider)
            self._use_stt(fallback)
            self._stt_stream = await fallback.open_stream(
                call_id=self.call_id, sample_rate=self._stt_rate
            )
        self._stt_task = asyncio.create_task(self._consume_transcripts(), name="stt")
        self._start_reply()

    def _use_stt(self, stt: STT) -> None:
        self._stt = stt
        self._stt_rate = stt.input_rate(self._transport.sample_rate)
        self._in_resampler = StreamResampler(self._transport.sample_rate, self._stt_rate)

    async def on_audio(self, frame: AudioFrame) -> None:
        """Take one frame of caller audio at the transport's rate."""
        if self._closed:
            return
        stt_frame = AudioFrame(self._in_resampler.process(frame.pcm), self._stt_rate)
        was_active = self._utterance_active
        events = self._endpointer.feed(frame.pcm)
        for event in events:
            if isinstance(event, SpeechStarted):
                await self._on_speech_started(event.at_ms)
        if self._stt.continuous or self._utterance_active or was_active:
            await self._push_stt(stt_frame)
        else:
            self._preroll.append(stt_frame)
        for event in events:
            if isinstance(event, SpeechEnded):
                await self._on_speech_ended(event.at_ms)

    def on_mark(self, name: str) -> None:
        """A mark came back: the audio before it has been played to the caller."""
        if not self._playback.mark_played(name):
            log.debug("stale mark ignored", extra={"mark": name})

    async def on_dtmf(self, digit: str) -> None:
        log.info("dtmf received", extra={"digit": digit})

    @property
    def usage(self) -> dict[str, int] | None:
        """The LLM tokens the call used so far (None: none)."""
        return dict(self._usage) if any(self._usage.values()) else None

    async def close(self) -> None:
        """The call ends: stop the agent, store its unfinished turn (cut to what the caller
        heard) and the caller turn still being written, close the providers' streams."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        if self._reply_task is not None and self._reply_task is not current:
            await self._cancel_reply(store_heard=True)
        if self._stt_task is not None:
            self._stt_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stt_task
        if self._stt_stream is not None:
            await self._stt_stream.aclose()
        for voice in (self._voice, self._fallback_voice):
            if voice is not None:
                with contextlib.suppress(Exception):
                    await voice.aclose()
        try:
            await self._stored_turns()
        except Exception:
            log.exception("storing the last caller turn failed")

    # ------------------------------------------------------------- turn-taking

    def _now_ms(self) -> float:
        return (self._clock() - self._started_at) * 1000.0

    async def _push_stt(self, frame: AudioFrame) -> None:
        if self._stt_stream is not None:
            await self._stt_stream.push(frame)

    async def _on_speech_started(self, at_ms: float) -> None:
        self._utterance_active = True
        self._utterance_start_ms = at_ms
        if not self._stt.continuous:
            for frame in self._preroll:
                await self._push_stt(frame)
        self._preroll.clear()
        if self._agent_speaking():
            await self._barge_in()

    def _agent_speaking(self) -> bool:
        return self._reply_task is not None or self._playback.playing

    async def _on_speech_ended(self, at_ms: float) -> None:
        self._utterance_active = False
        ended_at = self._clock() - (self._endpointer.position_ms - at_ms) / 1000.0
        self._utterance_spans.append((self._utterance_start_ms, at_ms, ended_at))
        if self._stt_stream is not None:
            await self._stt_stream.end_utterance()

    async def _consume_transcripts(self) -> None:
        assert self._stt_stream is not None
        async for transcript in self._stt_stream.transcripts():
            if not transcript.is_final:
                # Words heard before the VAD is sure: a faster barge-in.
                if transcript.text.strip() and self._agent_speaking():
                    log.info("barge-in on interim transcript")
                    await self._barge_in()
                continue
            start_ms, end_ms, ended_at = (
                self._utterance_spans.popleft()
                if self._utterance_spans
                else (0.0, self._now_ms(), self._clock())
            )
            latency = TurnLatency(speech_ended_at=ended_at, clock=self._clock)
            latency.mark("stt_final")
            text = transcript.text.strip()
            if not text:
                log.info("utterance with no words ignored")
                continue
            log.info("caller said", extra={"text": text})
            # The insert runs beside the reply: a database round trip is not on the path
            # to the agent's first word. Turns stay in order (see `_stored_turns`).
            await self._stored_turns()
            self._turn_write = asyncio.create_task(
                self._store.add_turn(
                    self.call_id, speaker="caller", text=text, start_ms=start_ms, end_ms=end_ms
                ),
                name="store-caller-turn",
            )
            self._history.append(ChatMessage(role="user", content=text))
            if self._utterance_active:
                continue  # the caller already goes on talking; answer after that utterance
            if self._reply_task is not None:
                await self._cancel_reply(store_heard=True)
            self._start_reply(latency)

    # ------------------------------------------------------------ agent replies

    def _start_reply(self, latency: TurnLatency | None = None) -> None:
        self._agent_turn_start_ms = self._now_ms()
        self._latency = latency
        self._reply_task = asyncio.create_task(self._reply(), name="reply")

    def _mark(self, stage: str) -> None:
        if self._latency is not None:
            self._latency.mark(stage)

    async def _generate(self, voice: _Voice) -> list[Action]:
        """Stream one reply from the agent into speech; return the call actions it asked for.

        The LLM's sentences go to the TTS as soon as each is complete while a second task
        plays the audio that comes back, so the first words play before the LLM is done.
        """
        actions: list[Action] = []
        speech = await voice.turn()
        texts: list[str] = []
        player = asyncio.create_task(self._play_speech(speech, voice, texts), name="player")
        completed = False
        try:
            chunker = SentenceChunker()
            events = aiter(self._providers.llm.respond(self._history, call_id=self.call_id))
            timeout: float | None = self._config.llm_first_token_timeout_s
            while True:
                try:
                    async with asyncio.timeout(timeout):
                        event = await anext(events)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    raise ProviderError(
                        "no answer from the agent in time", provider=self._providers.llm.name
                    ) from exc
                if player.done():
                    player.result()  # the TTS failed: stop asking the LLM
                if isinstance(event, Usage):
                    self._usage["prompt_tokens"] += event.prompt_tokens
                    self._usage["completion_tokens"] += event.completion_tokens
                elif isinstance(event, TextDelta):
                    self._mark("llm_first_token")
                    timeout = None
                    for sentence in chunker.push(event.text):
                        texts.append(sentence)
                        await speech.say(sentence)
                else:
                    actions.append(event)
            for sentence in chunker.flush():
                texts.append(sentence)
                await speech.say(sentence)
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

    async def _play_speech(self, speech: SpeechStream, voice: _Voice, texts: list[str]) -> None:
        """Play the turn's audio in order, one playback segment (and mark) per sentence."""
        opened = -1
        mark = ""
        segment_open = False
        events = aiter(speech.audio())
        try:
            while True:
                # Bounded: a TTS that goes quiet mid-turn must not leave the caller in silence.
                try:
                    async with asyncio.timeout(self._config.tts_first_audio_timeout_s):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise ProviderError(
                        "no audio from TTS in time", provider=voice.tts.name
                    ) from exc
                if event.segment > opened:
                    opened = event.segment
                    text = texts[opened] if opened < len(texts) else ""
                    mark = self._playback.begin_segment(text)
                    segment_open = True
                if isinstance(event, SpeechAudio):
                    self._mark("tts_first_byte")
                    await self._play(voice.resampler.process(event.pcm))
                elif isinstance(event, SegmentDone):
                    # The resampler holds a few ms of the sentence's tail: never drop it.
                    await self._play(voice.resampler.flush())
                    self._playback.close_segment()
                    segment_open = False
                    await self._transport.mark(mark)
        except ProviderError:
            if segment_open:  # what was sent still plays: its mark must come back
                self._playback.close_segment()
                await self._transport.mark(mark)
            raise

    async def _generate_or_apologise(self) -> list[Action]:
        """A failed agent (LLM or TTS) is retried once if nothing was said yet, then the
        caller hears an apology instead of silence; the call goes on."""
        tts_failed = False
        for attempt in (1, 2):
            try:
                return await self._generate(self._voice)
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
        await self._apologise(prefer_fallback=tts_failed)
        return []

    async def _apologise(self, *, prefer_fallback: bool) -> None:
        """Speak the apology: through the fallback (local) TTS first if the main TTS failed."""
        voices = [self._voice, self._fallback_voice]
        if prefer_fallback:
            voices.reverse()
        failure: ProviderError | None = None
        for voice in voices:
            if voice is None:
                continue
            try:
                await self._speak_text(self._config.apology, voice)
                return
            except ProviderError as exc:
                log.warning("apology failed: %s", exc, extra={"provider": exc.provider})
                self._count_failure(exc.provider)
                failure = exc
        assert failure is not None
        raise failure

    async def _speak_text(self, text: str, voice: _Voice) -> None:
        speech = await voice.turn()
        await speech.say(text)
        await speech.finish()
        try:
            await self._play_speech(speech, voice, [text])
        finally:
            await speech.cancel()

    def _count_failure(self, provider: str) -> None:
        if self._metrics is not None:
            self._metrics.provider_failed(provider)

    async def _reply(self) -> None:
        try:
            actions = await self._generate_or_apologise()
            await self._playback.wait_all_played()
        except asyncio.CancelledError:
            raise
        except Exception:  # the reply task ends here: log with the call id, end the call
            log.exception("agent reply failed")
            self._reply_task = None
            self._on_end("agent-error", CallStatus.FAILED)
            return
        self._reply_task = None
        await self._store_agent_turn(self._playback.full_text(), interrupted=False)
        for action in actions:
            if isinstance(action, SendDtmf):
                await self._send_dtmf(action.digits)
            elif isinstance(action, TransferCall):
                log.info("agent transfers the call", extra={"to": action.to})
                try:
                    await self._transport.transfer(action.to)
                except Exception:
                    log.exception("transfer failed; the call goes on")
                    continue
                self._on_end("transferred", CallStatus.COMPLETED)  # the call goes on to the <Dial>
                return
            else:
                self._on_end(action.reason, CallStatus.COMPLETED)
                return

    async def _send_dtmf(self, digits: str) -> None:
        """Play `digits` as in-band DTMF tones (they cross any G.711 leg) and wait for them."""
        log.info("agent sends DTMF", extra={"digits": digits})
        mark = self._playback.begin_segment("")
        await self._play(dtmf_tones(digits, self._transport.sample_rate))
        self._playback.close_segment()
        await self._transport.mark(mark)
        await self._playback.wait_all_played()
        self._playback.reset()

    async def _play(self, pcm: PCM16) -> None:
        if pcm.shape[0]:
            self._playback.add_audio(int(pcm.shape[0]))
            await self._transport.play(pcm)
            self._mark("first_frame_out")

    async def _barge_in(self) -> None:
        log.info("barge-in: caller spoke over the agent")
        # What was heard is fixed now; marks that a clear returns do not count as played.
        heard = self._playback.heard_text()
        await self._transport.clear()
        await self._cancel_reply(store_heard=True, heard=heard)

    async def _cancel_reply(self, *, store_heard: bool, heard: str | None = None) -> None:
        task, self._reply_task = self._reply_task, None
        if heard is None:
            heard = self._playback.heard_text()
        full = self._playback.full_text()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Whatever the resamplers still hold belongs to the cleared reply.
        self._voice.resampler.flush()
        if self._fallback_voice is not None:
            self._fallback_voice.resampler.flush()
        if store_heard and full:
            await self._store_agent_turn(heard, interrupted=heard != full)
        else:
            self._playback.reset()

    async def _stored_turns(self) -> None:
        """Wait for the caller turn still being written, so turns keep their order."""
        write, self._turn_write = self._turn_write, None
        if write is not None:
            await write

    async def _store_agent_turn(self, text: str, *, interrupted: bool) -> None:
        self._playback.reset()
        latency, self._latency = self._latency, None
        if not text and not interrupted:
            return
        latency_ms = latency.as_ms() if latency is not None else None
        if latency_ms and self._metrics is not None:
            self._metrics.observe_turn(latency_ms)
        await self._stored_turns()
        await self._store.add_turn(
            self.call_id,
            speaker="agent",
            text=text,
            start_ms=self._agent_turn_start_ms,
            end_ms=self._now_ms(),
            interrupted=interrupted,
            latency=latency_ms,
        )
        if text:
            self._history.append(ChatMessage(role="assistant", content=text))
        log.info("agent said", extra={"text": text, "interrupted": interrupted})
