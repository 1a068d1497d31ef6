"""The provider interfaces the call session drives: STT, LLM (the agent) and TTS.

All three stream. The session never knows which implementation it holds.

Order of calls for STT: ``open_stream()`` once per call, then ``push()`` for inbound
frames (every frame if the STT is `continuous`, else only the caller's speech),
``end_utterance()`` when the session's endpointing decides the caller finished a turn
(the stream then yields one final `Transcript` for the audio pushed so far),
``transcripts()`` is iterated by one consumer task, ``aclose()`` at hang-up.

Order of calls for TTS: ``open()`` once per call (it may connect lazily), then one
``turn()`` per agent reply: ``say()`` each sentence as soon as it is complete,
``finish()`` after the last one, while one consumer iterates ``audio()``;
``cancel()`` on barge-in. ``aclose()`` at hang-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from audio.frames import AudioFrame


@dataclass(frozen=True, slots=True)
class Transcript:
    """Recognised text. `is_final` transcripts close an utterance; interim ones may follow-up."""

    text: str
    is_final: bool


class STTStream(Protocol):
    # True: `words_so_far()` answers at once with what a streaming recogniser heard (as good
    # as its final words); False: it decodes what it holds (slower, rougher).
    live_words: bool

    async def push(self, frame: AudioFrame, *, quiet: bool = False) -> None:
        """Take a frame of the caller's audio; `quiet`: the VAD hears nothing in it and the
        caller is not mid-utterance (a recogniser may batch such audio more)."""
        ...

    async def end_utterance(self) -> None:
        """Ask for the final transcript of everything pushed since the last final one."""
        ...

    def transcripts(self) -> AsyncIterator[Transcript]: ...

    async def words_so_far(self) -> str:
        """The words of the utterance under way, before its final transcript (what a
        streaming recogniser heard so far; an offline one decodes what it holds)."""
        ...

    async def aclose(self) -> None: ...


class STT(Protocol):
    name: str
    # True: wants every inbound frame (a streaming recogniser with its own context);
    # False: only the caller's speech, as the session's VAD finds it.
    continuous: bool

    def input_rate(self, transport_rate: int) -> int:
        """The rate `push()` takes on a transport of `transport_rate` (no resampling if equal)."""
        ...

    async def open_stream(self, *, call_id: str, sample_rate: int) -> STTStream: ...


# Keypad entries reach the agent as caller turns "[keypad] 1234".
KEYPAD_PREFIX = "[keypad]"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the agent's reply text."""

    text: str


@dataclass(frozen=True, slots=True)
class HangUp:
    """The agent decided the call is over (after the text it already produced is spoken)."""

    reason: str


@dataclass(frozen=True, slots=True)
class TransferCall:
    """The agent hands the caller to `to` (E.164 number or SIP URI) after its reply."""

    to: str


@dataclass(frozen=True, slots=True)
class SendDtmf:
    """The agent presses keys (e.g. to navigate a phone menu) after its reply."""

    digits: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one model request used (the session adds them up on the call, per model)."""

    prompt_tokens: int
    completion_tokens: int
    model: str | None = None  # the model asked for (what prices are keyed by)


LLMEvent = TextDelta | HangUp | TransferCall | SendDtmf | Usage


class LLM(Protocol):
    name: str

    def respond(self, history: Sequence[ChatMessage], *, call_id: str) -> AsyncIterator[LLMEvent]:
        """Stream the agent's next reply to the conversation so far."""
        ...


@dataclass(frozen=True, slots=True)
class SpeechAudio:
    """PCM16 for the `segment`-th text given to `SpeechStream.say()` (from 0)."""

    segment: int
    pcm: npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class SegmentDone:
    """All audio of the `segment`-th text has been yielded."""

    segment: int


SpeechEvent = SpeechAudio | SegmentDone


class SpeechStream(Protocol):
    """The speech of one agent turn: text in sentence by sentence, audio out in order."""

    async def say(self, text: str) -> None: ...

    async def finish(self) -> None:
        """No more text: `audio()` ends once everything said has been synthesised."""
        ...

    def audio(self) -> AsyncIterator[SpeechEvent]: ...

    async def cancel(self) -> None:
        """Stop synthesis now (barge-in); safe to call at any point, also twice."""
        ...


class TTSConnection(Protocol):
    def turn(self) -> SpeechStream: ...

    async def aclose(self) -> None: ...


class TTS(Protocol):
    name: str

    def output_rate(self, transport_rate: int) -> int:
        """The PCM rate it yields on a transport of `transport_rate`."""
        ...

    async def open(self, *, call_id: str, sample_rate: int) -> TTSConnection: ...


@dataclass(frozen=True, slots=True)
class Providers:
    """The engines one call runs on."""

    stt: STT
    llm: LLM
    tts: TTS
    # Local engines that need no network: the fallback STT serves a call whose STT cannot
    # be opened; the fallback TTS speaks the apology when `tts` itself failed.
    fallback_stt: STT | None = None
    fallback_tts: TTS | None = None
