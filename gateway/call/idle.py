"""A caller who goes silent: after `timeout_s` of silence following the agent's turn the
session is told (`on_idle` with the number of this idle spell; `prompted()` counts it once
the agent said something), so that it reprompts or, after `max_prompts` reprompts, says
goodbye and hangs up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class IdleCaller:
    """The idle timer of one call (0 s: callers are never prompted)."""

    def __init__(self, *, timeout_s: float, max_prompts: int, on_idle: Callable[[int], None]):
        self.max_prompts = max_prompts
        self._timeout_s = timeout_s
        self._on_idle = on_idle
        self._prompts = 0
        self._timer: asyncio.TimerHandle | None = None

    def agent_finished(self) -> None:
        """The agent's turn was played: the caller's silence counts from now."""
        self._cancel()
        if self._timeout_s > 0:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._timeout_s, self._fire)

    def caller_active(self) -> None:
        """The caller makes a sound (speech, a key): not idle, for now."""
        self._cancel()

    def caller_turn(self) -> None:
        """The caller took a turn: the count of reprompts starts again."""
        self._cancel()
        self._prompts = 0

    def prompted(self) -> None:
        """The agent said a reprompt (or the goodbye) for an idle spell."""
        self._prompts += 1

    def stop(self) -> None:
        """The call ends: no more prompts."""
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._on_idle(self._prompts + 1)
