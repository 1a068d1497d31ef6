"""The call's transcript as it happens: each turn handed to the call's writes when it is
said, in order, the conversation so far for the agent, and each answer's latency into the
metrics.

Nothing here waits for the database: a turn is queued on the call's `TurnWrites` (which
stores the call's writes one after another, retrying while the database is away), so
neither the agent's reply nor the caller's audio ever waits on a write.

Order of calls: `add_caller_turn()` for each final transcript; `agent_turn_begins()` when a
reply starts, `add_agent_turn()` when it ends (finished or cut).

Each turn is stored once, when it is final (an interrupted agent turn is stored cut to what
the caller heard), and `on_turn` (the call's `call.turn` event) is queued right behind its
write, on the same queue: published in order, after the turn is stored, never waited for.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from gateway.call.latency import TurnLatency
from gateway.metrics import GatewayMetrics
from gateway.providers.base import ChatMessage
from storage import CallStore, Speaker, TurnRecord, new_turn_id

log = logging.getLogger(__name__)


class TurnWrites(Protocol):
    """Where the call's writes queue (`gateway.call.writes.CallWrites`)."""

    def submit(
        self,
        what: str,
        write: Callable[[], Awaitable[object]],
        *,
        detail: Mapping[str, object] | None = None,
    ) -> None: ...


class CallTranscript:
    """The turns of one call, stored in order, and the history the agent answers to."""

    def __init__(
        self,
        *,
        call_id: str,
        store: CallStore,
        writes: TurnWrites,
        clock: Callable[[], float],
        started_at: float,
        metrics: GatewayMetrics | None = None,
        on_turn: Callable[[TurnRecord, bool], Awaitable[object]] | None = None,
    ) -> None:
        self._call_id = call_id
        self._on_turn = on_turn
        self._store = store
        self._writes = writes
        self._clock = clock
        self._started_at = started_at
        self._metrics = metrics
        self._history: list[ChatMessage] = []
        self._agent_start_ms = 0.0
        self._latency: TurnLatency | None = None

    @property
    def history(self) -> Sequence[ChatMessage]:
        """The conversation so far (live: it grows as turns are added)."""
        return self._history

    def _now_ms(self) -> float:
        return (self._clock() - self._started_at) * 1000.0

    def add_caller_turn(self, text: str, *, start_ms: float, end_ms: float) -> None:
        """Store what the caller said (queued behind the turns before it)."""
        log.info("caller said", extra={"text": text})
        self._store_turn("caller", text, start_ms=start_ms, end_ms=end_ms)
        self._history.append(ChatMessage(role="user", content=text))

    def agent_turn_begins(self, latency: TurnLatency | None) -> None:
        """An agent reply starts now; `latency` (None for the greeting) is stored with it."""
        self._agent_start_ms = self._now_ms()
        self._latency = latency

    def add_agent_turn(self, text: str, *, interrupted: bool) -> None:
        """Store the agent turn begun last: `text` is what the caller heard of it."""
        latency, self._latency = self._latency, None
        if not text and not interrupted:
            return
        latency_ms = latency.as_ms() if latency is not None else None
        if latency_ms and self._metrics is not None:
            self._metrics.observe_turn(latency_ms)
        self._store_turn(
            "agent",
            text,
            start_ms=self._agent_start_ms,
            end_ms=self._now_ms(),
            interrupted=interrupted,
            latency=latency_ms,
        )
        if text:
            self._history.append(ChatMessage(role="assistant", content=text))
        log.info("agent said", extra={"text": text, "interrupted": interrupted})

    def _store_turn(
        self,
        speaker: Speaker,
        text: str,
        *,
        start_ms: float,
        end_ms: float,
        interrupted: bool = False,
        latency: Mapping[str, float] | None = None,
    ) -> None:
        add = functools.partial(
            self._store.add_turn,
            self._call_id,
            speaker=speaker,
            text=text,
            start_ms=start_ms,
            end_ms=end_ms,
            interrupted=interrupted,
            latency=latency,
            turn_id=new_turn_id(),  # one id for every attempt: a retry stores it once
        )
        stored: list[TurnRecord] = []  # the turn as stored, for its event
        attempts = 0

        async def write() -> None:
            nonlocal attempts
            attempts += 1
            stored[:] = [await add(first_attempt=attempts == 1)]

        detail = {"speaker": speaker, "text": text, "start_ms": round(start_ms, 1)}
        self._writes.submit(f"{speaker} turn", write, detail=detail)
        on_turn = self._on_turn
        if on_turn is not None:
            published = 0

            async def publish() -> None:
                nonlocal published
                if stored:  # nothing to report of a turn whose write failed for good
                    published += 1  # a retry looks for what an earlier attempt stored
                    await on_turn(stored[0], published == 1)

            # Logged as unwritten by name only: the turn's own line carries what was said.
            self._writes.submit(f"{speaker} turn event", publish)
