"""Per-turn latency: from the caller's end of speech to each step of the agent's answer."""

from __future__ import annotations

from collections.abc import Callable

STAGES = ("stt_final", "llm_first_token", "tts_first_byte", "first_frame_out")


class TurnLatency:
    """Marks the moments of one agent answer; `as_ms()` gives each one after end of speech."""

    def __init__(self, *, speech_ended_at: float, clock: Callable[[], float]) -> None:
        self._origin = speech_ended_at
        self._clock = clock
        self._marks: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        """Record `stage` now, unless it was already recorded."""
        self._marks.setdefault(stage, self._clock())

    def as_ms(self) -> dict[str, float]:
        return {k: round((t - self._origin) * 1000.0, 1) for k, t in self._marks.items()}
