"""The agent's side of a call: one agent turn at a time (a reply from the LLM, or a fixed
line such as a reprompt), paused while the caller speaks over it, interrupted or resumed,
and stored as what the caller heard of it; then its call actions (DTMF, transfer, hang-up).

Order of calls: `reply()` / `say()` start a turn (one at a time: `cancel()` the one under
way first); `hold()` then `resume()` or `interrupt()` while the caller speaks over it;
`end_politely()` at most once; `close()` once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from audio.dtmf import dtmf_tones
from gateway.call.config import SessionConfig
from gateway.call.latency import TurnLatency
from gateway.call.playback import PlaybackTracker
from gateway.call.replies import Action, ReplyGenerator
from gateway.call.transcript import CallTranscript
from gateway.call.transport import CallTransport
from gateway.call.usage import UsageMeter
from gateway.errors import ProviderError
from gateway.metrics import GatewayMetrics
from gateway.providers.base import HangUp, Providers, SendDtmf, TransferCall
from storage import CallStatus

log = logging.getLogger(__name__)


class AgentTurns:
    """Speaks the agent's turns into the call and stores what the caller heard of each."""

    def __init__(
        self,
        *,
        call_id: str,
        providers: Providers,
        transport: CallTransport,
        transcript: CallTranscript,
        config: SessionConfig,
        clock: Callable[[], float],
        metrics: GatewayMetrics | None,
        on_done: Callable[[], None],
        on_end: Callable[[str, CallStatus], None],
        meter: UsageMeter | None = None,
    ) -> None:
        self._transport = transport
        self._transcript = transcript
        self._metrics = metrics
        self._on_done = on_done  # a turn was played to its end and the call goes on
        self._on_end = on_end  # the agent ends the call (hang-up, transfer, failure)
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
            meter=meter,
        )
        self._task: asyncio.Task[None] | None = None
        self._goodbye: asyncio.Task[None] | None = None
        self.held = False  # paused while the caller speaks over the agent

    @property
    def speaking(self) -> bool:
        """True while a turn is under way or its audio is not all played."""
        return self._task is not None or self._playback.playing

    @property
    def ending(self) -> bool:
        """True once the gateway's own goodbye is under way: the agent says nothing more."""
        return self._goodbye is not None

    def on_mark(self, name: str) -> None:
        """A mark came back: the audio before it was played."""
        if not self._playback.mark_played(name):
            log.debug("stale mark ignored", extra={"mark": name})

    def reply(self, latency: TurnLatency | None = None) -> None:
        """Start the agent's answer to the conversation so far (the greeting if none)."""
        history = self._transcript.history
        self._start(lambda: self._replies.reply(history, latency), latency)

    def say(self, text: str, *, then: HangUp | None = None) -> None:
        """Start a turn that says `text` as it is (a reprompt), then does `then`."""

        async def speak() -> list[Action]:
            await self._replies.say(text)
            return [then] if then is not None else []

        self._start(speak, None)

    async def hold(self) -> None:
        """Fall silent at once, keeping the rest of the turn: the caller speaks over it."""
        if not self.held:
            self.held = True
            if self._metrics is not None:
                self._metrics.agent_pauses_total += 1
            self._playback.pause()
            await self._transport.pause()

    async def resume(self) -> None:
        """It was not an interruption: play on from where the agent paused."""
        if self.held:
            self.held = False
            self._playback.resume()
            await self._transport.resume()

    async def interrupt(self) -> None:
        """The caller interrupted: drop the rest of the turn, store what they heard of it."""
        heard = self._playback.heard_text()  # fixed now: marks a clear returns do not count
        self.held = False
        await self._transport.clear()
        await self._stop(heard)

    async def cancel(self) -> None:
        """Stop the turn under way (the caller has a new turn): store what was heard."""
        if self.held or self._playback.playing:
            await self.interrupt()
        elif self._task is not None:
            await self._stop(self._playback.heard_text())

    def end_politely(self, goodbye: str, reason: str, *, timeout_s: float) -> None:
        """Stop the agent, say `goodbye` (bounded; skipped if it cannot), then have the
        call end as failed with `reason`."""
        if self._goodbye is None:
            self._goodbye = asyncio.create_task(
                self._say_goodbye(goodbye, reason, timeout_s), name="goodbye"
            )

    async def close(self) -> None:
        """The call ends: stop everything and store the unfinished turn as heard."""
        current = asyncio.current_task()
        if self._goodbye is not None and self._goodbye is not current:
            self._goodbye.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._goodbye
        if self._task is not None and self._task is not current:
            await self._stop(self._playback.heard_text())
        await self._replies.aclose()

    # ------------------------------------------------------------------ internals

    def _start(
        self, speak: Callable[[], Awaitable[list[Action]]], latency: TurnLatency | None
    ) -> None:
        if self._task is not None and not self._task.done():
            log.warning("an agent turn started over another; the other is dropped")
            self._task.cancel()
        self._transcript.agent_turn_begins(latency)
        self._task = asyncio.create_task(self._turn(speak), name="reply")

    async def _turn(self, speak: Callable[[], Awaitable[list[Action]]]) -> None:
        try:
            actions = await speak()
            await self._playback.wait_all_played()
        except asyncio.CancelledError:
            raise
        except Exception:  # the reply task ends here: log with the call id, end the call
            log.exception("agent reply failed")
            self._task = None
            self._on_end("agent-error", CallStatus.FAILED)
            return
        self._task = None
        if self.held:  # all of it was played before the caller's sound: nothing is held
            await self.resume()
        self._store(self._playback.full_text(), interrupted=False)
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
        self._on_done()

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

    async def _stop(self, heard: str) -> None:
        """Stop the turn under way and store it cut to what was `heard`."""
        task, self._task = self._task, None
        full = self._playback.full_text()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._replies.drop_held_audio()
        if full:
            self._store(heard, interrupted=heard != full)
        else:
            self._playback.reset()

    def _store(self, text: str, *, interrupted: bool) -> None:
        self._playback.reset()
        self._transcript.add_agent_turn(text, interrupted=interrupted)

    async def _say_goodbye(self, goodbye: str, reason: str, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                if self.held:
                    await self.interrupt()
                elif self._task is not None:
                    await self.cancel()
                await self._replies.say(goodbye)
                await self._playback.wait_all_played()
        except (ProviderError, TimeoutError) as exc:
            log.warning("the goodbye was not said: %r", exc)
        self._on_end(reason, CallStatus.FAILED)
