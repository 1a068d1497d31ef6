"""One call's conversation: the caller's turns, the agent's replies, barge-in, call actions.

The session is transport-agnostic: the call's lifecycle pushes caller `AudioFrame`s and
events (`on_audio`, `on_mark`, `on_dtmf`) and the session talks back through a
`CallTransport`. It never sees Twilio JSON or LiveKit objects, never knows which providers
it drives, and does not end calls itself: when the agent hangs up, transfers or fails for
good, it asks the lifecycle (`on_end`), which then closes it.

It orchestrates its parts: `TurnTaking` (when the caller speaks, what the STT gets),
`ReplyGenerator` (the agent's speech, its bounds and apology), `PlaybackTracker` (what the
caller heard) and `CallTranscript` (the turns, in order).

Nothing here waits for the database: turns go to the call's `TurnWrites` queue.

Order of calls: `start()` once (opens STT, greets), then any number of `on_audio()` /
`on_mark()` / `on_dtmf()` (and at most one `end_politely()`), then `close()` once (stops
the agent and hands what was said to the writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from audio.dtmf import dtmf_tones
from audio.frames import AudioFrame
from gateway.call.latency import TurnLatency
from gateway.call.playback import PlaybackTracker
from gateway.call.replies import ReplyGenerator
from gateway.call.transcript import CallTranscript, TurnWrites
from gateway.call.transport import CallTransport
from gateway.call.turn_taking import CallerStarted, PushAudio, TurnTaking
from gateway.errors import ProviderError
from gateway.metrics import GatewayMetrics
from gateway.providers.base import Providers, SendDtmf, STTStream, TransferCall
from storage import CallStatus, CallStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """How the session takes turns and bounds the agent (one per process, from settings)."""

    silence_ms: int = 600
    min_speech_ms: int = 120
    # Audio kept from before the VAD confirmed speech, so the first syllable reaches STT.
    preroll_ms: int = 300
    apology: str = "Sorry, I am having trouble right now. Could you say that again?"
    # Bounds on the agent: no first token / no audio within these ends the attempt.
    llm_first_token_timeout_s: float = 8.0
    tts_first_audio_timeout_s: float = 5.0
    # A goodbye said before the call ends for the gateway's own reasons is bounded by this.
    goodbye_timeout_s: float = 15.0


class CallSession:
    """Runs one call between a caller (through a transport) and the agent (through providers)."""

    def __init__(
        self,
        *,
        call_id: str,
        transport: CallTransport,
        providers: Providers,
        store: CallStore,
        writes: TurnWrites,
        config: SessionConfig | None = None,
        on_end: Callable[[str, CallStatus], None],
        clock: Callable[[], float] = time.monotonic,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.call_id = call_id
        self._on_end = on_end
        self._transport = transport
        self._providers = providers
        self._clock = clock
        self._metrics = metrics
        config = config or SessionConfig()
        self._goodbye_timeout_s = config.goodbye_timeout_s
        started_at = clock()  # the origin of the transcript's times
        self._turns = TurnTaking(
            providers.stt,
            rate=transport.sample_rate,
            min_speech_ms=config.min_speech_ms,
            silence_ms=config.silence_ms,
            preroll_ms=config.preroll_ms,
            clock=clock,
            started_at=started_at,
        )
        self._playback = PlaybackTracker(rate=transport.sample_rate, clock=clock)
        self._replies = ReplyGenerator(
            call_id=call_id,
            providers=providers,
            transport=transport,
            playback=self._playback,
            apology=config.apology,
            llm_first_token_timeout_s=config.llm_first_token_timeout_s,
            tts_first_audio_timeout_s=config.tts_first_audio_timeout_s,
            metrics=metrics,
        )
        self._transcript = CallTranscript(
            call_id=call_id,
            store=store,
            writes=writes,
            clock=clock,
            started_at=started_at,
            metrics=metrics,
        )
        self._stt_stream: STTStream | None = None
        self._stt_task: asyncio.Task[None] | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._goodbye: asyncio.Task[None] | None = None
        self._closed = False

    # ----------------------------------------------------------------- driver API

    async def start(self) -> None:
        """Open the STT stream and let the agent greet first."""
        try:
            self._stt_stream = await self._providers.stt.open_stream(
                call_id=self.call_id, sample_rate=self._turns.stt_rate
            )
        except ProviderError as exc:
            fallback = self._providers.fallback_stt
            if fallback is None:
                raise
            log.warning("STT unavailable, using %s: %s", fallback.name, exc)
            if self._metrics is not None:
                self._metrics.provider_failed(exc.provider)
            self._turns.use_stt(fallback)
            self._stt_stream = await fallback.open_stream(
                call_id=self.call_id, sample_rate=self._turns.stt_rate
            )
        self._stt_task = asyncio.create_task(self._consume_transcripts(), name="stt")
        self._start_reply()

    async def on_audio(self, frame: AudioFrame) -> None:
        """Take one frame of caller audio at the transport's rate."""
        if self._closed:
            return
        for step in self._turns.feed(frame):
            if isinstance(step, PushAudio):
                if self._stt_stream is not None:
                    await self._stt_stream.push(step.frame)
            elif isinstance(step, CallerStarted):
                if self._agent_speaking() and self._goodbye is None:
                    await self._barge_in()
            elif self._stt_stream is not None:  # the utterance ended: its transcript is owed
                await self._stt_stream.end_utterance()

    def on_mark(self, name: str) -> None:
        """A mark came back: the audio before it has been played to the caller."""
        if not self._playback.mark_played(name):
            log.debug("stale mark ignored", extra={"mark": name})

    async def on_dtmf(self, digit: str) -> None:
        log.info("dtmf received", extra={"digit": digit})

    def end_politely(self, goodbye: str, reason: str) -> None:
        """The gateway must end the call (e.g. its database is away): the agent stops, says
        `goodbye` (bounded; skipped if it cannot), then the lifecycle ends the call as
        failed with `reason`."""
        if self._closed or self._goodbye is not None:
            return
        self._goodbye = asyncio.create_task(self._say_goodbye(goodbye, reason), name="goodbye")

    async def _say_goodbye(self, goodbye: str, reason: str) -> None:
        try:
            async with asyncio.timeout(self._goodbye_timeout_s):
                if self._reply_task is not None:
                    await self._cancel_reply()
                await self._replies.say(goodbye)
                await self._playback.wait_all_played()
        except (ProviderError, TimeoutError) as exc:
            log.warning("the goodbye was not said: %r", exc)
        self._on_end(reason, CallStatus.FAILED)

    @property
    def usage(self) -> dict[str, int] | None:
        """The LLM tokens the call used so far (None: none)."""
        return self._replies.usage

    async def close(self) -> None:
        """The call ends: stop the agent, queue its unfinished turn (cut to what the caller
        heard) with the call's writes (the lifecycle drains them before the final write),
        close the providers' streams."""
        if self._closed:
            return
        self._closed = True
        current = asyncio.current_task()
        if self._goodbye is not None and self._goodbye is not current:
            self._goodbye.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._goodbye
        if self._reply_task is not None and self._reply_task is not current:
            await self._cancel_reply()
        if self._stt_task is not None:
            self._stt_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stt_task
        if self._stt_stream is not None:
            await self._stt_stream.aclose()
        await self._replies.aclose()

    # ---------------------------------------------------------------- the caller

    def _agent_speaking(self) -> bool:
        return self._reply_task is not None or self._playback.playing

    async def _consume_transcripts(self) -> None:
        assert self._stt_stream is not None
        async for transcript in self._stt_stream.transcripts():
            if not transcript.is_final:
                # Words heard before the VAD is sure: a faster barge-in.
                if transcript.text.strip() and self._agent_speaking() and not self._goodbye:
                    log.info("barge-in on interim transcript")
                    await self._barge_in()
                continue
            utterance = self._turns.take_utterance()
            latency = TurnLatency(speech_ended_at=utterance.ended_at, clock=self._clock)
            latency.mark("stt_final")
            text = transcript.text.strip()
            if not text:
                log.info("utterance with no words ignored")
                continue
            self._transcript.add_caller_turn(
                text, start_ms=utterance.start_ms, end_ms=utterance.end_ms
            )
            if self._goodbye is not None:
                continue  # the call is ending: the agent says nothing more
            if self._turns.caller_speaking:
                continue  # the caller already goes on talking; answer after that utterance
            if self._reply_task is not None:
                await self._cancel_reply()
            self._start_reply(latency)

    async def _barge_in(self) -> None:
        log.info("barge-in: caller spoke over the agent")
        # What was heard is fixed now; marks that a clear returns do not count as played.
        heard = self._playback.heard_text()
        await self._transport.clear()
        await self._cancel_reply(heard=heard)

    # ----------------------------------------------------------------- the agent

    def _start_reply(self, latency: TurnLatency | None = None) -> None:
        self._transcript.agent_turn_begins(latency)
        self._reply_task = asyncio.create_task(self._reply(latency), name="reply")

    async def _reply(self, latency: TurnLatency | None) -> None:
        try:
            actions = await self._replies.reply(self._transcript.history, latency)
            await self._playback.wait_all_played()
        except asyncio.CancelledError:
            raise
        except Exception:  # the reply task ends here: log with the call id, end the call
            log.exception("agent reply failed")
            self._reply_task = None
            self._on_end("agent-error", CallStatus.FAILED)
            return
        self._reply_task = None
        self._store_agent_turn(self._playback.full_text(), interrupted=False)
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
        tones = dtmf_tones(digits, self._transport.sample_rate)
        if tones.shape[0]:
            self._playback.add_audio(int(tones.shape[0]))
            await self._transport.play(tones)
        self._playback.close_segment()
        await self._transport.mark(mark)
        await self._playback.wait_all_played()
        self._playback.reset()

    async def _cancel_reply(self, *, heard: str | None = None) -> None:
        """Stop the reply under way and store the agent turn cut to what was `heard`."""
        task, self._reply_task = self._reply_task, None
        if heard is None:
            heard = self._playback.heard_text()
        full = self._playback.full_text()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._replies.drop_held_audio()
        if full:
            self._store_agent_turn(heard, interrupted=heard != full)
        else:
            self._playback.reset()

    def _store_agent_turn(self, text: str, *, interrupted: bool) -> None:
        self._playback.reset()
        self._transcript.add_agent_turn(text, interrupted=interrupted)
