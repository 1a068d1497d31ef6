"""One call's conversation: the caller's turns, the agent's replies, interruptions, idle
callers, keypad entries and call actions.

The session is transport-agnostic: the call's lifecycle pushes caller `AudioFrame`s and
events (`on_audio`, `on_mark`, `on_dtmf`) and the session talks back through a
`CallTransport`. It never sees Twilio JSON or LiveKit objects, never knows which providers
it drives, and does not end calls itself: when the agent hangs up, transfers or fails for
good, it asks the lifecycle (`on_end`), which then closes it.

It orchestrates its parts: `TurnTaking` (when the caller speaks and when their turn ends),
`AgentTurns` (the agent's speech, what the caller heard of it, pausing it while the
caller speaks over it), `CallTranscript` (the turns, in order), `IdleCaller` and
`KeypadEntry`.

Caller speech over the agent pauses it at once; it is an interruption (the reply is
cancelled) only when the caller says a word that is not an acknowledgement or speaks
longer than `interruption_min_speech_ms`. Otherwise the agent plays on from where it paused.

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
from collections.abc import Awaitable, Callable, Coroutine

from audio.frames import AudioFrame
from gateway.call.agent import AgentTurns
from gateway.call.config import SessionConfig
from gateway.call.idle import IdleCaller
from gateway.call.interruptions import CallerOverlap, InterruptionPolicy
from gateway.call.keypad import KeypadEntry, keypad_text
from gateway.call.latency import TurnLatency
from gateway.call.plan import TurnPlan
from gateway.call.transcript import CallTranscript, TurnWrites
from gateway.call.transport import CallTransport
from gateway.call.turn_judge import TurnJudge
from gateway.call.turn_taking import (
    CallerSound,
    CallerStarted,
    EndOfTurn,
    JudgeTurn,
    PushAudio,
    SoundGone,
    TurnStep,
    TurnTaking,
)
from gateway.call.usage import UsageMeter
from gateway.call.voicemail import VOICEMAIL, CalleeVerdict, VoicemailGate
from gateway.errors import ProviderError
from gateway.metrics import GatewayMetrics
from gateway.providers.base import HangUp, Providers, STTStream
from storage import CallStatus, CallStore, CallUsage, TurnRecord, TurnTakingConfig

log = logging.getLogger(__name__)


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
        turn_plan: TurnPlan | None = None,
        on_end: Callable[[str, CallStatus], None],
        clock: Callable[[], float] = time.monotonic,
        metrics: GatewayMetrics | None = None,
        on_turn: Callable[[TurnRecord, bool], Awaitable[object]] | None = None,
        screen: VoicemailGate | None = None,
    ) -> None:
        self.call_id = call_id
        # An outbound call screened for a machine: the callee's sound and words go to the
        # gate (not to the agent) until it decides; a machine's go nowhere after that.
        self._screen = screen
        self._unanswered = 0  # utterances begun before the greeting: not answered
        self._on_end = on_end
        self._providers = providers
        self._clock = clock
        self._metrics = metrics
        config = config or SessionConfig()
        plan = turn_plan or TurnPlan.default(config.turn)
        turn = plan.config
        self._goodbye_timeout_s = config.goodbye_timeout_s
        self._started_at = clock()  # the origin of the transcript's times
        self._meter = UsageMeter()
        self._judge = TurnJudge(turn, config.models, english=plan.english, metrics=metrics)
        vad = config.models.vad if turn.vad == "silero" else None
        self._turns = TurnTaking(
            providers.stt,
            rate=transport.sample_rate,
            min_speech_ms=turn.min_speech_ms,
            end_of_turn=_end_of_turn(turn, judged=self._judge.judges),
            preroll_ms=config.preroll_ms,
            clock=clock,
            started_at=self._started_at,
            vad=vad(transport.sample_rate) if vad is not None else None,
        )
        self._transcript = CallTranscript(
            call_id=call_id,
            store=store,
            writes=writes,
            clock=clock,
            started_at=self._started_at,
            metrics=metrics,
            on_turn=on_turn,
        )
        self._agent = AgentTurns(
            call_id=call_id,
            providers=providers,
            transport=transport,
            transcript=self._transcript,
            config=config,
            clock=clock,
            metrics=metrics,
            on_done=self._await_caller,
            on_end=on_end,
            meter=self._meter,
        )
        self._overlap = CallerOverlap(
            agent=self._agent,
            turns=self._turns,
            policy=InterruptionPolicy(
                turn.backchannel_words, min_speech_ms=turn.interruption_min_speech_ms
            ),
            metrics=metrics,
        )
        self._answering = asyncio.Lock()  # one caller turn at a time is stored and answered
        self._owed = False  # a caller turn is stored but not answered yet
        self._idle = IdleCaller(
            timeout_s=turn.idle_timeout_s,
            max_prompts=turn.idle_max_prompts,
            on_idle=self._caller_idle,
        )
        self._reprompt, self._idle_goodbye = plan.reprompt, plan.goodbye
        self._keypad = KeypadEntry(max_digits=turn.keypad_max_digits)
        self._keypad_timeout_s = turn.keypad_timeout_s
        self._keypad_timer: asyncio.TimerHandle | None = None
        self._stt_stream: STTStream | None = None
        self._stt_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # turn judgements, keypad entries
        self._judged: tuple[int, bool] | None = None  # the pause judged last, and its sound
        self._closed = False

    # ----------------------------------------------------------------- driver API

    async def start(self, *, greet: bool = True) -> None:
        """Open the STT stream and let the agent greet first (`greet=False`: not yet; the
        call is screened and `greet()` or `leave_message()` follows)."""
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
        if greet:
            self._agent.reply()

    def greet(self) -> None:
        """The screened callee is a person: the agent greets now (what they said before is
        not answered: the greeting is)."""
        if self._closed:
            return
        self._unanswered = self._turns.utterances_open
        self._agent.reply()

    def leave_message(self, text: str) -> None:
        """A machine's greeting ended: say `text`, then the call ends (`voicemail`)."""
        if not self._closed:
            self._agent.say(text, then=HangUp(reason=VOICEMAIL))

    async def on_audio(self, frame: AudioFrame) -> None:
        """Take one frame of caller audio at the transport's rate."""
        if self._closed:
            return
        screen = self._screen
        if screen is not None and screen.screening:
            screen.on_audio(frame)
            if screen.decision is CalleeVerdict.MACHINE:
                return  # a machine: nothing it plays interrupts the message
        await self._carry_out(self._turns.feed(frame))
        await self._overlap.after_frame()

    @property
    def caller_quiet(self) -> bool:
        """The VAD hears nothing and no utterance is under way (`TurnTaking.caller_quiet`)."""
        return self._turns.caller_quiet

    def on_mark(self, name: str) -> None:
        """A mark came back: the audio before it has been played to the caller."""
        self._agent.on_mark(name)

    async def on_dtmf(self, digit: str) -> None:
        """A keypad digit: gathered into an entry that reaches the agent as a caller turn."""
        log.info("dtmf received", extra={"digit": digit})
        if self._closed:
            return
        self._idle.caller_active()
        if self._keypad_timer is not None:
            self._keypad_timer.cancel()
            self._keypad_timer = None
        entry = self._keypad.press(digit)
        if entry is not None:
            await self._keypad_entry(entry)
        elif self._keypad.pending:
            loop = asyncio.get_running_loop()
            self._keypad_timer = loop.call_later(self._keypad_timeout_s, self._keypad_paused)
        else:  # not a key of ours: the caller is as idle as before
            self._await_caller()

    def end_politely(self, goodbye: str, reason: str) -> None:
        """The gateway must end the call (e.g. its database is away): the agent stops, says
        `goodbye` (bounded; skipped if it cannot), then the lifecycle ends the call as
        failed with `reason`."""
        if self._closed:
            return
        self._idle.stop()
        self._agent.end_politely(goodbye, reason, timeout_s=self._goodbye_timeout_s)

    @property
    def usage(self) -> CallUsage:
        """What the call used of its STT, LLM and TTS so far (the carrier is the lifecycle's)."""
        return self._meter.usage()

    async def close(self) -> None:
        """The call ends: stop the agent, queue its unfinished turn (cut to what the caller
        heard) with the call's writes (the lifecycle drains them before the final write),
        close the providers' streams."""
        if self._closed:
            return
        self._closed = True
        self._idle.stop()
        if self._keypad_timer is not None:
            self._keypad_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._agent.close()
        if self._stt_task is not None:
            self._stt_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stt_task
        if self._stt_stream is not None:
            await self._stt_stream.aclose()

    # ---------------------------------------------------------------- the caller

    async def _carry_out(self, steps: list[TurnStep]) -> None:
        for step in steps:
            if isinstance(step, PushAudio):
                if self._stt_stream is not None:
                    await self._stt_stream.push(step.frame, quiet=step.quiet)
                    frame = step.frame
                    self._meter.stt_audio(self._turns.stt_name, frame.samples, frame.rate)
            elif isinstance(step, CallerSound | SoundGone | CallerStarted):
                if isinstance(step, CallerStarted):
                    self._idle.caller_active()
                await self._overlap.on_step(step)
            elif isinstance(step, JudgeTurn):
                self._beside(self._judge_turn(step), "judge-turn")
            elif self._stt_stream is not None:  # the utterance ended: its transcript is owed
                await self._stt_stream.end_utterance()

    async def _judge_turn(self, step: JudgeTurn) -> None:
        """Judge a pause and hand its wait to turn-taking (the longest wait if none)."""
        if await self._overlap.acknowledged(self._stt_words):
            await self._carry_out(self._turns.verdict(step.pause, 0.0))
            return
        verdict = await self._judge.judge(step.audio, self._words_so_far)
        if verdict is not None and not self._closed:
            self._judged = (step.pause, verdict[0])
            await self._carry_out(self._turns.verdict(step.pause, verdict[1]))

    async def _more_words(self, text: str) -> None:
        """Words that came during a judged pause may change its wait."""
        if self._judged is not None and self._turns.caller_speaking and self._reads_words():
            pause, sounds = self._judged
            wait_ms = self._judge.wait_ms(sounds, text)
            log.debug("turn judged again", extra={"words": text, "wait_ms": wait_ms})
            await self._carry_out(self._turns.verdict(pause, wait_ms))

    def _reads_words(self) -> bool:
        """True if the judge reads the words of this call's recogniser."""
        live = self._stt_stream is not None and self._stt_stream.live_words
        return self._judge.reads_words(live)

    async def _words_so_far(self) -> str | None:
        """The words so far, if the judge reads them."""
        return await self._stt_words() if self._reads_words() else None

    async def _stt_words(self) -> str | None:
        """What the STT heard of the paused turn (None: it could not say)."""
        if self._stt_stream is None:
            return None
        try:
            return await self._stt_stream.words_so_far()
        except ProviderError as exc:
            log.warning("the words so far are unknown: %s", exc)
            return None

    async def _consume_transcripts(self) -> None:
        assert self._stt_stream is not None
        async for transcript in self._stt_stream.transcripts():
            text = transcript.text.strip()
            if self._screen is not None and self._screened(text, final=transcript.is_final):
                continue
            if not transcript.is_final:
                await self._overlap.on_interim(text)
                await self._more_words(text)
                continue
            self._judged = None
            utterance = self._turns.take_utterance()
            latency = TurnLatency(speech_ended_at=utterance.ended_at, clock=self._clock)
            latency.mark("stt_final")
            if await self._overlap.on_final(text):
                self._idle.caller_turn()  # an acknowledgement: the caller is there
                self._await_caller()
            elif text:
                await self._caller_turn(text, utterance.start_ms, utterance.end_ms, latency)
            elif self._owed and not self._turns.caller_speaking and not self._agent.speaking:
                await self._caller_turn(None, 0.0, 0.0, latency)  # answer what was said before
            else:
                log.info("utterance with no words ignored")
                self._await_caller()

    def _screened(self, text: str, *, final: bool) -> bool:
        """True if the callee's words are no turn: heard while the call is screened (they
        go to the gate), or said before the agent greeted (the greeting answers them)."""
        screen = self._screen
        assert screen is not None
        if screen.screening:
            screen.on_transcript(text, final)
        elif not final or self._unanswered == 0:
            return False
        if final:
            self._turns.take_utterance()
            self._unanswered = max(0, self._unanswered - 1)
            log.info("callee words before the greeting not answered", extra={"words": text})
        return True

    async def _caller_turn(
        self, text: str | None, start_ms: float, end_ms: float, latency: TurnLatency | None
    ) -> None:
        """Store the caller's turn (None: one stored before) and have the agent answer it,
        unless the caller goes on talking (then the next utterance is answered) or the call
        is ending. The agent's turn under way is stored first, cut to what was heard."""
        async with self._answering:
            self._idle.caller_turn()
            answer = not self._agent.ending and not self._turns.caller_speaking
            if answer:
                await self._agent.cancel()
            if text is not None:
                self._transcript.add_caller_turn(text, start_ms=start_ms, end_ms=end_ms)
            self._owed = not answer and not self._agent.ending
            if answer:
                self._agent.reply(latency)

    def _beside(self, work: Coroutine[None, None, None], name: str) -> None:
        """Run `work` beside the call (held until done; cancelled at close)."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _keypad_paused(self) -> None:
        self._keypad_timer = None
        entry = self._keypad.flush()
        if entry and not self._closed:
            self._beside(self._keypad_entry(entry), "keypad")

    async def _keypad_entry(self, entry: str) -> None:
        """A finished keypad entry is the caller's turn: the agent answers it."""
        if self._metrics is not None:
            self._metrics.keypad_entries_total += 1
        now_ms = (self._clock() - self._started_at) * 1000.0
        await self._caller_turn(keypad_text(entry), now_ms, now_ms, None)

    # ------------------------------------------------------------- idle caller

    def _waiting(self) -> bool:
        """True when the call waits on the caller: nobody speaks and the call goes on."""
        agent = self._agent
        return not (self._closed or agent.speaking or agent.ending or self._turns.caller_speaking)

    def _await_caller(self) -> None:
        """The agent's turn was played to its end (or the caller's sound was no turn): the
        idle timer runs until the caller speaks."""
        if self._waiting():
            self._idle.agent_finished()

    def _caller_idle(self, prompts: int) -> None:
        """The caller said nothing for the idle timeout: reprompt, or say goodbye and end."""
        if not self._waiting():
            return
        self._idle.prompted()
        if self._metrics is not None:
            self._metrics.caller_idle_prompts_total += 1
        if prompts <= self._idle.max_prompts:
            log.info("the caller is silent: reprompt", extra={"prompts": prompts})
            self._agent.say(self._reprompt)
        else:
            log.info("the caller stayed silent: the agent hangs up")
            self._agent.say(self._idle_goodbye, then=HangUp(reason="caller-idle"))


def _end_of_turn(turn: TurnTakingConfig, *, judged: bool) -> EndOfTurn:
    """The end-of-turn rule of `turn` (a fixed silence when no turn model is loaded)."""
    if not judged:
        return EndOfTurn(pause_ms=turn.silence_ms)
    longest = max(turn.complete_wait_ms, turn.unsure_wait_ms, turn.incomplete_wait_ms)
    return EndOfTurn(pause_ms=turn.pause_ms, judged=True, max_wait_ms=longest)
