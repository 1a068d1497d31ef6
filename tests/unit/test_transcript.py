"""The call transcript and its write queue with an in-memory store that can hang, fail and
come back: turns are handed over without waiting, stored in the order they were said,
retried while the store is away, and given up (the call told, the unwritten logged) past
the outage bound; the process's write backlog (what admission judges) ages with the
oldest write waiting and empties as writes are stored or given up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

import pytest

from gateway.call.latency import TurnLatency
from gateway.call.transcript import CallTranscript
from gateway.call.writes import CallWrites, WriteBacklog, WritePolicy
from gateway.metrics import GatewayMetrics
from gateway.providers.base import ChatMessage
from storage import Speaker, StorageError, TurnRecord


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Store:
    """Stores turns; `hang` holds every write, `down` fails it; each turn id is kept once."""

    def __init__(self) -> None:
        self.hang = asyncio.Event()
        self.hang.set()  # set: writes go through
        self.down = False
        self.attempts = 0
        self.tried: list[tuple[str | None, bool]] = []  # (turn id, first attempt) each try
        self.attempted = asyncio.Event()
        self.turns: list[tuple[Speaker, str, float, float, bool]] = []
        self.latencies: list[Mapping[str, float] | None] = []
        self._ids: set[str | None] = set()

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
        turn_id: str | None = None,
        first_attempt: bool = False,
    ) -> TurnRecord:
        self.attempts += 1
        self.tried.append((turn_id, first_attempt))
        self.attempted.set()
        await self.hang.wait()
        if self.down:
            raise StorageError("database away")
        assert turn_id is not None and turn_id not in self._ids
        self._ids.add(turn_id)
        self.turns.append((speaker, text, start_ms, end_ms, interrupted))
        self.latencies.append(latency)
        return TurnRecord(
            id=turn_id, call_id=call_id, index=len(self.turns), speaker=speaker, text=text,
            start_ms=start_ms, end_ms=end_ms, interrupted=interrupted, created_at=datetime.now(),
        )  # fmt: skip


class _Outages(list[str]):
    def __call__(self, reason: str) -> None:
        self.append(reason)


POLICY = WritePolicy(attempt_timeout_s=5.0, outage_s=30.0, max_pending=8, retry_base_s=0.001)


def _transcript(
    store: _Store,
    clock: _Clock,
    writes: CallWrites,
    metrics: GatewayMetrics | None = None,
    on_turn: Callable[[TurnRecord, bool], Awaitable[object]] | None = None,
) -> CallTranscript:
    return CallTranscript(
        call_id="call-1",
        store=store,  # type: ignore[arg-type]
        writes=writes,
        clock=clock,
        started_at=clock.now,
        metrics=metrics,
        on_turn=on_turn,
    )


def _writes(
    clock: _Clock,
    outages: _Outages,
    policy: WritePolicy = POLICY,
    backlog: WriteBacklog | None = None,
) -> CallWrites:
    writes = CallWrites(
        call_id="call-1", policy=policy, on_outage=outages, clock=clock, backlog=backlog
    )
    writes.start()
    return writes


async def _attempted(store: _Store, count: int) -> None:
    """Wait until the store has seen `count` attempts in all."""
    while store.attempts < count:
        store.attempted.clear()
        await store.attempted.wait()


async def _settle() -> None:
    """Let every task that can run, run (a write held by the store stays held)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_turns_are_handed_over_at_once_and_stored_in_order() -> None:
    clock, store, metrics, outages = _Clock(), _Store(), GatewayMetrics(), _Outages()
    writes = _writes(clock, outages)
    transcript = _transcript(store, clock, writes, metrics)
    store.hang.clear()  # the database hangs: nothing the call does waits for it
    transcript.add_caller_turn("what are your hours", start_ms=500.0, end_ms=1500.0)
    assert transcript.history == [ChatMessage("user", "what are your hours")]
    clock.now = 102.0
    latency = TurnLatency(speech_ended_at=101.9, clock=clock)
    latency.mark("stt_final")
    transcript.agent_turn_begins(latency)
    clock.now = 104.0
    transcript.add_agent_turn("We open at nine.", interrupted=False)
    transcript.add_caller_turn("thanks", start_ms=4500.0, end_ms=5000.0)
    await _settle()
    assert store.turns == []
    store.hang.set()
    assert await writes.drain()
    assert store.turns == [
        ("caller", "what are your hours", 500.0, 1500.0, False),
        ("agent", "We open at nine.", 2000.0, 4000.0, False),
        ("caller", "thanks", 4500.0, 5000.0, False),
    ]
    assert store.latencies[1] == {"stt_final": 100.0}
    stt_final = metrics.turn_latency["stt_final"]
    assert (stt_final.n, stt_final.total) == (1, 100.0)
    assert transcript.history[-1] == ChatMessage("user", "thanks")
    await writes.aclose()
    assert outages == []


async def test_agent_turns_cut_to_nothing() -> None:
    clock, store, outages = _Clock(), _Store(), _Outages()
    writes = _writes(clock, outages)
    transcript = _transcript(store, clock, writes)
    transcript.agent_turn_begins(None)
    transcript.add_agent_turn("", interrupted=False)  # nothing said: nothing stored
    transcript.agent_turn_begins(None)
    transcript.add_agent_turn("", interrupted=True)  # cut before a word was heard
    assert await writes.drain()
    assert store.turns == [("agent", "", 0.0, 0.0, True)]
    assert store.latencies == [None]
    assert transcript.history == []
    await writes.aclose()


async def test_writes_wait_out_an_outage_and_go_on_in_order() -> None:
    clock, store, outages = _Clock(), _Store(), _Outages()
    writes = _writes(clock, outages)
    transcript = _transcript(store, clock, writes)
    store.down = True
    for n in range(3):
        transcript.add_caller_turn(f"turn {n}", start_ms=n * 1000.0, end_ms=n * 1000.0 + 500)
    await _attempted(store, 3)  # the first turn is tried again and again
    clock.now += POLICY.outage_s - 1  # within the bound: still retrying
    await _attempted(store, store.attempts + 3)
    assert store.turns == [] and outages == []
    store.down = False
    assert await writes.drain()
    assert [text for _, text, *_ in store.turns] == ["turn 0", "turn 1", "turn 2"]
    assert outages == []
    await writes.aclose()


async def test_a_write_that_hangs_is_bounded_and_retried_once_stored() -> None:
    clock, store, outages = _Clock(), _Store(), _Outages()
    policy = WritePolicy(attempt_timeout_s=0.01, outage_s=30.0, retry_base_s=0.001)
    writes = _writes(clock, outages, policy)
    transcript = _transcript(store, clock, writes)
    store.hang.clear()
    transcript.add_caller_turn("hello", start_ms=0.0, end_ms=1.0)
    await _attempted(store, 3)  # each attempt times out, and is tried again
    store.hang.set()
    assert await writes.drain()
    assert [text for _, text, *_ in store.turns] == ["hello"]
    # One id for every attempt; only the first says no earlier one can have been stored.
    assert len({turn_id for turn_id, _ in store.tried}) == 1
    assert [first for _, first in store.tried] == [True] + [False] * (len(store.tried) - 1)
    await writes.aclose()


async def test_a_turn_event_is_published_as_new_only_on_its_first_attempt() -> None:
    """The turn's event follows the turn; its first attempt says the event is new (not
    looked up first), and a retry after a failure says it may have been stored."""
    clock, store, outages = _Clock(), _Store(), _Outages()
    policy = WritePolicy(attempt_timeout_s=1.0, outage_s=30.0, retry_base_s=0.001)
    writes = _writes(clock, outages, policy)
    published: list[tuple[str, bool]] = []

    async def on_turn(turn: TurnRecord, first_attempt: bool) -> None:
        published.append((turn.id, first_attempt))
        if len(published) == 1:
            raise StorageError("the answer was lost")

    transcript = _transcript(store, clock, writes, on_turn=on_turn)
    transcript.add_caller_turn("hello", start_ms=0.0, end_ms=1.0)
    assert await writes.drain()
    [(turn_id, _)] = store.tried
    assert published == [(turn_id, True), (turn_id, False)]
    await writes.aclose()


async def test_past_the_outage_bound_the_call_is_told_and_the_unwritten_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, store, outages = _Clock(), _Store(), _Outages()
    writes = _writes(clock, outages)
    transcript = _transcript(store, clock, writes)
    store.down = True
    transcript.add_caller_turn("first", start_ms=0.0, end_ms=1.0)
    transcript.add_caller_turn("second", start_ms=2.0, end_ms=3.0)
    await _settle()
    with caplog.at_level(logging.ERROR, logger="gateway.call.writes"):
        clock.now += POLICY.outage_s
        assert not await writes.drain()
        transcript.add_caller_turn("after", start_ms=4.0, end_ms=5.0)  # logged at once
    assert len(outages) == 1 and "30 s" in outages[0]
    unwritten = [r.unwritten["text"] for r in caplog.records if hasattr(r, "unwritten")]  # type: ignore[attr-defined]
    assert unwritten == ["first", "second", "after"]
    assert all(getattr(r, "call_id", None) == "call-1" for r in caplog.records)
    assert writes.given_up and store.turns == []
    await writes.aclose()


async def test_a_full_queue_tells_the_call_once() -> None:
    clock, store, outages = _Clock(), _Store(), _Outages()
    writes = _writes(clock, outages)
    transcript = _transcript(store, clock, writes)
    store.hang.clear()
    for n in range(POLICY.max_pending + 3):
        transcript.add_caller_turn(f"turn {n}", start_ms=float(n), end_ms=float(n))
    assert len(outages) == 1 and "writes waited" in outages[0]
    assert not await writes.drain()
    store.hang.set()
    await writes.aclose()


class _Unwritten(logging.Handler):
    """The texts of the turns logged as not stored; `logged(text)` waits for one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.texts: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "unwritten"):
            self.texts.append(record.unwritten["text"])
            self._changed.set()

    async def logged(self, text: str) -> None:
        while text not in self.texts:
            self._changed.clear()
            await self._changed.wait()


async def test_a_full_queue_logs_every_write_it_drops_and_stops_the_one_in_flight() -> None:
    """The turns already queued when the queue fills are logged too, and the write in
    flight is not retried after the give-up (the call is told once, not again when it fails)."""
    clock, store, outages = _Clock(), _Store(), _Outages()
    writes = _writes(clock, outages)
    transcript = _transcript(store, clock, writes)
    unwritten = _Unwritten()
    logger = logging.getLogger("gateway.call.writes")
    logger.addHandler(unwritten)
    try:
        store.hang.clear()  # "turn 0" is in flight, held by the database
        turns = [f"turn {n}" for n in range(POLICY.max_pending + 3)]
        for n, text in enumerate(turns):
            transcript.add_caller_turn(text, start_ms=float(n), end_ms=float(n))
            if n == 0:
                await _attempted(store, 1)
        assert unwritten.texts == turns[1:]  # queued, the one that did not fit, the later ones
        store.down = True  # the attempt in flight fails, long past the outage bound
        clock.now += 2 * POLICY.outage_s
        store.hang.set()
        async with asyncio.timeout(10):
            await unwritten.logged("turn 0")
        assert store.attempts == 1 and store.turns == []
        assert len(outages) == 1 and "writes waited" in outages[0]
        assert sorted(unwritten.texts) == sorted(turns)
        await writes.aclose()
        assert sorted(unwritten.texts) == sorted(turns)  # nothing logged twice
    finally:
        logger.removeHandler(unwritten)


async def test_the_backlog_ages_with_the_oldest_write_waiting_across_calls() -> None:
    clock, store, outages = _Clock(), _Store(), _Outages()
    backlog = WriteBacklog(clock)
    first = _writes(clock, outages, backlog=backlog)
    second = CallWrites(
        call_id="call-2", policy=POLICY, on_outage=outages, clock=clock, backlog=backlog
    )
    assert (backlog.oldest_ms(), backlog.waiting) == (0.0, 0)
    store.hang.clear()  # the database hangs
    _transcript(store, clock, first).add_caller_turn("one", start_ms=0.0, end_ms=1.0)
    await _attempted(store, 1)
    clock.now += 0.4
    _transcript(store, clock, second).add_caller_turn("two", start_ms=0.0, end_ms=1.0)
    clock.now += 0.8
    assert backlog.waiting == 2
    assert backlog.oldest_ms() == pytest.approx(1200.0)  # the first call's write, in flight
    store.hang.set()
    assert await first.drain() and await second.drain()
    assert (backlog.oldest_ms(), backlog.waiting) == (0.0, 0)
    assert sorted(text for _, text, *_ in store.turns) == ["one", "two"]  # two calls: any order
    await first.aclose()
    await second.aclose()


async def test_writes_given_up_or_closed_leave_the_backlog() -> None:
    clock, store, outages = _Clock(), _Store(), _Outages()
    backlog = WriteBacklog(clock)
    full = _writes(clock, outages, backlog=backlog)
    store.hang.clear()
    transcript = _transcript(store, clock, full)
    transcript.add_caller_turn("t0", start_ms=0.0, end_ms=1.0)
    await _attempted(store, 1)  # "t0" is in flight, held by the database
    for n in range(1, POLICY.max_pending + 2):  # the queue fills: given up
        transcript.add_caller_turn(f"t{n}", start_ms=0.0, end_ms=1.0)
    assert full.given_up
    assert backlog.waiting == 1  # only the write in flight, until its attempt ends
    closed = _writes(clock, outages, backlog=backlog)
    _transcript(store, clock, closed).add_caller_turn("late", start_ms=0.0, end_ms=1.0)
    assert backlog.waiting == 2
    await closed.aclose()  # the call ended with its write unstored (logged)
    _transcript(store, clock, closed).add_caller_turn("after", start_ms=2.0, end_ms=3.0)
    await full.aclose()
    assert (backlog.oldest_ms(), backlog.waiting) == (0.0, 0)  # "after" was only logged
    store.hang.set()
