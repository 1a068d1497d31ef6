"""One call: turn-taking, the agent's replies, barge-in and the transcript.

The session is transport-agnostic: its driver pushes caller `AudioFrame`s and events
(`on_audio`, `on_mark`, `on_dtmf`, `end`) and it talks back through a `CallTransport`.
It never sees Twilio JSON or LiveKit objects, and never knows which providers it drives.

Order of calls: `start()` once (opens STT, greets), then any number of `on_audio()` /
`on_mark()` / `on_dtmf()`, then `end()` (idempotent; the agent may also end the call, in
which case `ended` is set and the transport has been asked to hang up).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from audio.frames import PCM16, AudioFrame
from audio.resample import StreamResampler
from audio.vad import Endpointer, SpeechEnded, SpeechStarted
from gateway.errors import ProviderError
from gateway.latency import TurnLatency
from gateway.playback import PlaybackTracker
from gateway.providers.base import LLM, STT, TTS, ChatMessage, HangUp, STTStream, TextDelta
from gateway.sentences import SentenceChunker
from gateway.transport import CallTransport
from storage import CallStatus, CallStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    silence_ms: int = 600
    min_speech_ms: int = 120
    # Audio kept from before the VAD confirmed speech, so the first syllable reaches STT.
    preroll_ms: int = 300
    apology: str = "Sorry, I am having trouble right now. Could you say that again?"


@dataclass(frozen=True, slots=True)
class Providers:
    stt: STT
    llm: LLM
    tts: TTS


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.call_id = call_id
        self._transport = transport
        self._providers = providers
        self._store = store
        self._config = config or SessionConfig()
        self._clock = clock
        self._started_at = clock()
        rate = transport.sample_rate
        self._in_resampler = StreamResampler(rate, providers.stt.sample_rate)
        self._out_resampler = StreamResampler(providers.tts.sample_rate, rate)
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
        self._end_lock = asyncio.Lock()
        self.ended = asyncio.Event()
        self.end_reason: str | None = None

    # ----------------------------------------------------------------- driver API

    async def start(self) -> None:
        """Open the STT stream and let the agent greet first."""
        self._stt_stream = await self._providers.stt.open_stream(call_id=self.call_id)
        self._stt_task = asyncio.create_task(self._consume_transcripts(), name="stt")
        self._start_reply()

    async def on_audio(self, frame: AudioFrame) -> None:
        """Take one frame of caller audio at the transport's rate."""
        if self.ended.is_set():
            return
        stt_frame = AudioFrame(
            self._in_resampler.process(frame.pcm), self._providers.stt.sample_rate
        )
        was_active = self._utterance_active
        events = self._endpointer.feed(frame.pcm)
        for event in events:
            if isinstance(event, SpeechStarted):
                await self._on_speech_started(event.at_ms)
        if self._utterance_active or was_active:
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

    async def end(self, *, reason: str, status: CallStatus = CallStatus.COMPLETED) -> None:
        """End the call: stop the agent, store the unfinished agent turn, finalise the call."""
        async with self._end_lock:
            if self.ended.is_set():
                return
            self.end_reason = reason
            self.ended.set()
            current = asyncio.current_task()
            if self._reply_task is not None and self._reply_task is not current:
                await self._cancel_reply(store_heard=True)
            if self._stt_task is not None:
                self._stt_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._stt_task
            if self._stt_stream is not None:
                await self._stt_stream.aclose()
            await self._store.finish_call(
                self.call_id, status=status, end_reason=reason, ended_at=datetime.now(UTC)
            )
            log.info("call ended", extra={"reason": reason, "status": str(status)})

    # ------------------------------------------------------------- turn-taking

    def _now_ms(self) -> float:
        return (self._clock() - self._started_at) * 1000.0

    async def _push_stt(self, frame: AudioFrame) -> None:
        if self._stt_stream is not None:
            await self._stt_stream.push(frame)

    async def _on_speech_started(self, at_ms: float) -> None:
        self._utterance_active = True
        self._utterance_start_ms = at_ms
        for frame in self._preroll:
            await self._push_stt(frame)
        self._preroll.clear()
        if self._reply_task is not None or self._playback.playing:
            await self._barge_in()

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
            await self._store.add_turn(
                self.call_id, speaker="caller", text=text, start_ms=start_ms, end_ms=end_ms
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

    async def _generate(self) -> HangUp | None:
        """Stream one reply from the agent into speech; return its hang-up, if any."""
        hang_up: HangUp | None = None
        chunker = SentenceChunker()
        async for event in self._providers.llm.respond(self._history, call_id=self.call_id):
            if isinstance(event, TextDelta):
                self._mark("llm_first_token")
                for sentence in chunker.push(event.text):
                    await self._speak(sentence)
            elif isinstance(event, HangUp):
                hang_up = event
        for sentence in chunker.flush():
            await self._speak(sentence)
        return hang_up

    async def _generate_or_apologise(self) -> HangUp | None:
        """A failed agent is retried once if nothing was said yet, then the caller hears an
        apology instead of silence; the call goes on."""
        for attempt in (1, 2):
            try:
                return await self._generate()
            except ProviderError as exc:
                log.warning(
                    "agent failed: %s", exc, extra={"provider": exc.provider, "attempt": attempt}
                )
                if attempt == 2 or not exc.retryable or self._playback.full_text():
                    break
        await self._speak(self._config.apology)
        return None

    async def _reply(self) -> None:
        try:
            hang_up = await self._generate_or_apologise()
            await self._playback.wait_all_played()
        except asyncio.CancelledError:
            raise
        except Exception:  # the reply task ends here: log with the call id, end the call
            log.exception("agent reply failed")
            self._reply_task = None
            await self.end(reason="agent-error", status=CallStatus.FAILED)
            await self._transport.hang_up()
            return
        self._reply_task = None
        await self._store_agent_turn(self._playback.full_text(), interrupted=False)
        if hang_up is not None:
            await self.end(reason=hang_up.reason)
            await self._transport.hang_up()

    async def _speak(self, sentence: str) -> None:
        mark = self._playback.begin_segment(sentence)
        async for chunk in self._providers.tts.synthesize(sentence, call_id=self.call_id):
            self._mark("tts_first_byte")
            await self._play(self._out_resampler.process(chunk))
        # The resampler holds a few ms of the sentence's tail: emit it, never drop it.
        await self._play(self._out_resampler.flush())
        self._playback.close_segment()
        await self._transport.mark(mark)

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
        # Whatever the resampler still holds belongs to the cleared reply.
        self._out_resampler.flush()
        if store_heard and full:
            await self._store_agent_turn(heard, interrupted=heard != full)
        else:
            self._playback.reset()

    async def _store_agent_turn(self, text: str, *, interrupted: bool) -> None:
        self._playback.reset()
        latency, self._latency = self._latency, None
        if not text and not interrupted:
            return
        await self._store.add_turn(
            self.call_id,
            speaker="agent",
            text=text,
            start_ms=self._agent_turn_start_ms,
            end_ms=self._now_ms(),
            interrupted=interrupted,
            latency=latency.as_ms() if latency is not None else None,
        )
        if text:
            self._history.append(ChatMessage(role="assistant", content=text))
        log.info("agent said", extra={"text": text, "interrupted": interrupted})
