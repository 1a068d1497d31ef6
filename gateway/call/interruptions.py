"""Caller speech over the agent. The agent pauses at the first sound that may be speech;
the reply is cancelled only when the caller says a word that is not an acknowledgement
("uh-huh", "yeah", "okay"; no words at all, a cough or a click, count as none) or speaks
longer than a bound. Otherwise the agent plays on from where it paused."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable

from gateway.call.agent import AgentTurns
from gateway.call.turn_taking import CallerSound, CallerStarted, SoundGone, TurnTaking
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

_WORD = re.compile(r"[\w']+")
# A hold with no caller sound for this long ends (no words came to decide it).
HOLD_LIMIT_MS = 1500.0


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.casefold().replace("-", " ")))


class InterruptionPolicy:
    """Judges what the caller said while the agent was speaking."""

    def __init__(self, backchannels: Iterable[str], *, min_speech_ms: int) -> None:
        phrases = {_words(phrase) for phrase in backchannels}
        self._phrases = {phrase for phrase in phrases if phrase}
        self._prefixes = {p[:n] for p in self._phrases for n in range(1, len(p))}
        self._longest = max((len(phrase) for phrase in self._phrases), default=0)
        self.min_speech_ms = min_speech_ms

    def interrupts(self, text: str, *, final: bool = True) -> bool:
        """True if `text` holds a word that is not part of an acknowledgement. Words still
        being heard (`final=False`) may end in the first words of one ("I" of "I see")."""
        words = _words(text)
        i = 0
        while i < len(words):
            for size in range(min(self._longest, len(words) - i), 0, -1):
                if words[i : i + size] in self._phrases:
                    i += size
                    break
            else:
                return final or words[i:] not in self._prefixes
        return False


class CallerOverlap:
    """Pauses, interrupts or resumes the agent as the caller makes sounds over it."""

    def __init__(
        self,
        *,
        agent: AgentTurns,
        turns: TurnTaking,
        policy: InterruptionPolicy,
        metrics: GatewayMetrics | None,
    ) -> None:
        self._agent = agent
        self._turns = turns
        self._policy = policy
        self._metrics = metrics
        self._tentative = False  # paused on a sound not yet known as speech

    def _over_agent(self) -> bool:
        return self._agent.speaking and not self._agent.ending

    async def on_step(self, step: CallerSound | SoundGone | CallerStarted) -> None:
        """The VAD's view of the caller changed."""
        if isinstance(step, CallerSound):
            # Pausing is undone at no cost: fall silent before the VAD is sure.
            if self._over_agent() and not self._agent.held:
                await self._agent.hold()
                self._tentative = True
        elif isinstance(step, SoundGone):
            if self._tentative and self._agent.held and not self._turns.caller_speaking:
                await self._agent.resume()
            self._tentative = False
        else:
            self._tentative = False
            if self._over_agent():
                log.info("the caller speaks over the agent: the agent pauses")
                await self._agent.hold()

    async def after_frame(self) -> None:
        """Long speech over the agent interrupts it; a hold that no words came to decide ends."""
        if not self._agent.held:
            return
        if self._turns.speech_ms >= self._policy.min_speech_ms:
            log.info("interruption: the caller kept speaking over the agent")
            await self._interrupt()
        elif (
            not self._turns.caller_speaking
            and not self._turns.hearing
            and self._turns.silence_ms >= HOLD_LIMIT_MS
        ):
            log.info("no words came over the agent: it goes on")
            await self._resume()

    async def on_interim(self, text: str) -> None:
        """Words heard before the utterance ends: a faster decision."""
        if not text or not self._over_agent() or not self._turns.caller_speaking:
            return
        if not self._agent.held:
            await self._agent.hold()
        if self._policy.interrupts(text, final=False):
            log.info("interruption on interim words", extra={"text": text})
            await self._interrupt()
        else:
            self._turns.hurry()  # an acknowledgement so far: its first pause ends it

    async def acknowledged(self, words: Callable[[], Awaitable[str | None]]) -> bool:
        """At a pause in speech over the agent: True if the words so far are only an
        acknowledgement (the utterance ends now, and the agent goes on sooner); a sentence
        with a comma in it ("Wait, what about Sundays?") is judged like any turn."""
        if not self._agent.held:
            return False
        text = await words()
        return text is not None and not self._policy.interrupts(text)

    async def on_final(self, text: str) -> bool:
        """The utterance over the agent ended with `text`. True: it was no turn (an
        acknowledgement or no words) and the agent plays on; False: it is the caller's
        turn (the agent, if it was paused, is interrupted)."""
        if not self._agent.held:
            return False
        if self._policy.interrupts(text):
            log.info("interruption", extra={"text": text})
            await self._interrupt()
            return False
        log.info("not an interruption: the agent goes on", extra={"text": text})
        if not self._turns.caller_speaking:  # else the caller's next utterance decides
            await self._resume()
        return True

    async def _interrupt(self) -> None:
        """The caller's speech is a turn of its own: the reply is cancelled, and the caller's
        pauses are judged again."""
        if self._metrics is not None:
            self._metrics.agent_interruptions_total += 1
        await self._agent.interrupt()
        self._turns.hurry(False)

    async def _resume(self) -> None:
        if self._metrics is not None:
            self._metrics.agent_resumes_total += 1
        await self._agent.resume()
