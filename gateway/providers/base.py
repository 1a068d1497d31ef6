"""The provider interfaces the call session drives: STT, LLM (the agent) and TTS.

All three stream. The session never knows which implementation it holds.

Order of calls for STT: ``open_stream()`` once per call, then ``push()`` for every
inbound frame, ``end_utterance()`` when the session's endpointing decides the caller
finished a turn (the stream then yields a final `Transcript` for the audio pushed so
far), ``transcripts()`` is iterated by one consumer task, ``aclose()`` at hang-up.
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
    async def push(self, frame: AudioFrame) -> None: ...

    async def end_utterance(self) -> None:
        """Ask for the final transcript of everything pushed since the last final one."""
        ...

    def transcripts(self) -> AsyncIterator[Transcript]: ...

    async def aclose(self) -> None: ...


class STT(Protocol):
    name: str
    sample_rate: int  # the rate `push()` expects

    async def open_stream(self, *, call_id: str) -> STTStream: ...


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


LLMEvent = TextDelta | HangUp


class LLM(Protocol):
    name: str

    def respond(self, history: Sequence[ChatMessage], *, call_id: str) -> AsyncIterator[LLMEvent]:
        """Stream the agent's next reply to the conversation so far."""
        ...


class TTS(Protocol):
    name: str
    sample_rate: int  # the rate of the PCM it yields

    def synthesize(self, text: str, *, call_id: str) -> AsyncIterator[npt.NDArray[np.int16]]:
        """Stream mono PCM16 chunks for `text` at `sample_rate`."""
        ...
