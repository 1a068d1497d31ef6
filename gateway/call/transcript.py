"""The call's transcript as it happens: each turn written when it is said, in order, the
conversation so far for the agent, and each answer's latency into the metrics.

A caller turn's insert runs beside the agent's reply (a database round trip is not on the
path to the agent's first word); the next write waits for it, so turns keep their order.

Order of calls: `add_caller_turn()` for each final transcript; `agent_turn_begins()` when a
reply starts, `add_agent_turn()` when it ends (finished or cut); `written()` before the
call's final write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from gateway.call.latency import TurnLatency
from gateway.metrics import GatewayMetrics
from gateway.providers.base import ChatMessage
from storage import CallStore

log = logging.getLogger(__name__)


class CallTranscript:
    """The turns of one call, stored in order, and the history the agent answers to."""

    def __init__(
        self,
        *,
        call_id: str,
        store: CallStore,
        clock: Callable[[], float],
        started_at: float,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._call_id = call_id
        self._store = store
        self._clock = clock
        self._started_at = started_at
        self._metrics = metrics
        self._history: list[ChatMessage] = []
        self._caller_write: asyncio.Task[object] | None = None
        self._agent_start_ms = 0.0
        self._latency: TurnLatency | None = None

    @property
    def history(self) -> Sequence[ChatMessage]:
        """The conversation so far (live: it grows as turns are added)."""
        return self._history

    def _now_ms(self) -> float:
        return (self._clock() - self._started_at) * 1000.0

    async def add_caller_turn(self, text: str, *, start_ms: float, end_ms: float) -> None:
        """Store what the caller said; the insert goes on beside whatever comes next."""
        log.info("caller said", extra={"text": text})
        await self.written()
        self._caller_write = asyncio.create_task(
            self._store.add_turn(
                self._call_id, speaker="caller", text=text, start_ms=start_ms, end_ms=end_ms
            ),
            name="store-caller-turn",
        )
        self._history.append(ChatMessage(role="user", content=text))

    def agent_turn_begins(self, latency: TurnLatency | None) -> None:
        """An agent reply starts now; `latency` (None for the greeting) is stored with it."""
        self._agent_start_ms = self._now_ms()
        self._latency = latency

    async def add_agent_turn(self, text: str, *, interrupted: bool) -> None:
        """Store the agent turn begun last: `text` is what the caller heard of it."""
        latency, self._latency = self._latency, None
        if not text and not interrupted:
            return
        latency_ms = latency.as_ms() if latency is not None else None
        if latency_ms and self._metrics is not None:
            self._metrics.observe_turn(latency_ms)
        await self.written()
        await self._store.add_turn(
            self._call_id,
            speaker="agent",
            text=text,
            start_ms=self._agent_start_ms,
            end_ms=self._now_ms(),
            interrupted=interrupted,
            latency=latency_ms,
        )
        if text:
            self._history.append(ChatMessage(role="assistant", content=text))
        log.info("agent said", extra={"text": text, "interrupted": interrupted})

    async def written(self) -> None:
        """Wait for the caller turn still being written (its failure is raised here)."""
        write, self._caller_write = self._caller_write, None
        if write is not None:
            await write
