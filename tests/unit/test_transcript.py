"""The call transcript with an in-memory store: a caller turn's insert runs beside what
comes next and the next write waits for it; agent turns carry their latency."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime

import pytest

from gateway.call.latency import TurnLatency
from gateway.call.transcript import CallTranscript
from gateway.metrics import GatewayMetrics
from gateway.providers.base import ChatMessage
from storage import Speaker, TurnRecord


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _SlowStore:
    """Stores turns; a caller turn's insert waits until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.turns: list[tuple[Speaker, str, float, float, bool]] = []
        self.latencies: list[Mapping[str, float] | None] = []
        self.fail = False

    async def add_turn(
        self,
        call_id: str,
        *,
        speaker: Speaker,
        text: str,
        start_ms: float,
        end_ms: float,
        interrupted: bool = False,
        latency: Mapping[str, float] | None = None,
    ) -> TurnRecord:
        if speaker == "caller":
            await self.release.wait()
            if self.fail:
                raise ConnectionError("database gone")
        self.turns.append((speaker, text, start_ms, end_ms, interrupted))
        self.latencies.append(latency)
        n = len(self.turns)
        return TurnRecord(
            id="t", call_id=call_id, index=n, speaker=speaker, text=text, start_ms=start_ms,
            end_ms=end_ms, interrupted=interrupted, created_at=datetime.now(),
        )  # fmt: skip


async def _settle() -> None:
    """Let every task that can run, run (a write held by the store stays held)."""
    for _ in range(20):
        await asyncio.sleep(0)


def _transcript(store: _SlowStore, clock: _Clock, metrics: GatewayMetrics) -> CallTranscript:
    return CallTranscript(
        call_id="call-1",
        store=store,  # type: ignore[arg-type]
        clock=clock,
        started_at=clock.now,
        metrics=metrics,
    )


async def test_the_agent_turn_waits_for_the_caller_turn_before_it() -> None:
    clock, store, metrics = _Clock(), _SlowStore(), GatewayMetrics()
    transcript = _transcript(store, clock, metrics)
    await transcript.add_caller_turn("what are your hours", start_ms=500.0, end_ms=1500.0)
    # The insert goes on beside the reply; the agent's history has the turn already.
    assert store.turns == []
    assert transcript.history == [ChatMessage("user", "what are your hours")]
    clock.now = 102.0
    latency = TurnLatency(speech_ended_at=101.9, clock=clock)
    latency.mark("stt_final")
    transcript.agent_turn_begins(latency)
    clock.now = 104.0
    agent = asyncio.create_task(transcript.add_agent_turn("We open at nine.", interrupted=False))
    await _settle()
    assert store.turns == [] and not agent.done()
    store.release.set()
    await agent
    assert store.turns == [
        ("caller", "what are your hours", 500.0, 1500.0, False),
        ("agent", "We open at nine.", 2000.0, 4000.0, False),
    ]
    assert store.latencies[1] == {"stt_final": 100.0}
    stt_final = metrics.turn_latency["stt_final"]
    assert (stt_final.n, stt_final.total) == (1, 100.0)
    assert transcript.history[-1] == ChatMessage("assistant", "We open at nine.")


async def test_a_second_caller_turn_waits_for_the_first() -> None:
    clock, store = _Clock(), _SlowStore()
    transcript = _transcript(store, clock, GatewayMetrics())
    await transcript.add_caller_turn("one", start_ms=0.0, end_ms=1.0)
    second = asyncio.create_task(transcript.add_caller_turn("two", start_ms=2.0, end_ms=3.0))
    await _settle()
    assert not second.done()
    store.release.set()
    await second
    await transcript.written()
    assert [text for _, text, *_ in store.turns] == ["one", "two"]


async def test_agent_turns_cut_to_nothing() -> None:
    clock, store = _Clock(), _SlowStore()
    transcript = _transcript(store, clock, GatewayMetrics())
    transcript.agent_turn_begins(None)
    await transcript.add_agent_turn("", interrupted=False)  # nothing said: nothing stored
    transcript.agent_turn_begins(None)
    await transcript.add_agent_turn("", interrupted=True)  # cut before a word was heard
    assert store.turns == [("agent", "", 0.0, 0.0, True)]
    assert store.latencies == [None]
    assert transcript.history == []


async def test_a_failed_caller_insert_is_raised_by_the_next_wait() -> None:
    store = _SlowStore()
    store.fail = True
    store.release.set()
    transcript = _transcript(store, _Clock(), GatewayMetrics())
    await transcript.add_caller_turn("hello", start_ms=0.0, end_ms=1.0)
    with pytest.raises(ConnectionError):
        await transcript.written()
    await transcript.written()  # reported once
