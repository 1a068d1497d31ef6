"""What a call transport offers the call session: paced agent audio, marks, pause, clear,
transfer."""

from __future__ import annotations

from typing import Protocol

from audio.frames import PCM16


class CallTransport(Protocol):
    """The session's view of a call leg (Twilio Media Stream, LiveKit room, ...).

    Inbound audio and events are pushed into the session by the carrier (through the call's
    lifecycle); this interface is the other direction. Hanging up is the lifecycle's.
    """

    sample_rate: int  # the rate of caller frames in and agent audio out

    async def play(self, pcm: PCM16) -> None:
        """Queue agent audio for paced playout (may wait while too much is queued)."""
        ...

    async def mark(self, name: str) -> None:
        """Queue a marker after the audio queued so far; the session hears it back once played."""
        ...

    async def clear(self) -> None:
        """Drop all agent audio not yet played (an interruption); ends a pause."""
        ...

    async def pause(self) -> None:
        """Stop playing agent audio at once, keeping what is queued (the caller may only be
        saying "uh-huh")."""
        ...

    async def resume(self) -> None:
        """Play on from where `pause()` stopped."""
        ...

    async def transfer(self, to: str) -> None:
        """Hand the caller to `to` (a number or SIP URI); the gateway's leg then ends.

        Raises `TransferError` if the transport cannot transfer."""
        ...
