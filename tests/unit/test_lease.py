"""Leases on a virtual clock: when a sweeper judges another gateway's calls lost, and when
a gateway renews its own lease. In-process doubles of the gateway's own stores; the real
database is in tests/integration/test_two_gateways.py."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from gateway.call.lease import LOST_REASON, GatewayLease, LostCallSweeper, OwnEnding
from gateway.call.lifecycle import LiveCalls
from gateway.metrics import GatewayMetrics
from gateway.pricing import PriceTable
from storage import (
    CallCost,
    CallRecord,
    CallStatus,
    CallUsage,
    Direction,
    LlmUsage,
    StorageError,
)

ME, OTHER = "gw-me", "gw-other"
LEASE_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _call(call_id: str, served_by: str | None) -> CallRecord:
    return CallRecord(
        id=call_id, org_id=None, transport="twilio", call_sid="CA" + call_id, stream_sid=None,
        from_number="+15550001111", to_number="+15550002222", direction=Direction.INBOUND,
        assistant_id=None, metadata={}, status=CallStatus.IN_PROGRESS,
        started_at=datetime.now(UTC), ended_at=None, duration_s=None, end_reason=None,
        served_by=served_by,
    )  # fmt: skip


@dataclass
class Store:
    """Open calls and the gateways' beats; `down` makes every read fail."""

    calls: dict[str, CallRecord] = field(default_factory=dict)
    beats_now: dict[str, datetime] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    carrier_ends: dict[str, tuple[CallStatus, str]] = field(default_factory=dict)
    down: bool = False

    async def carrier_end(self, call_id: str) -> tuple[CallStatus, str] | None:
        return self.carrier_ends.get(call_id)

    async def served_calls(self) -> list[CallRecord]:
        if self.down:
            raise StorageError("database away")
        return [c for c in self.calls.values() if c.ended_at is None and c.served_by]

    async def beats(self, gateway_ids: Collection[str]) -> dict[str, datetime]:
        if self.down:
            raise StorageError("database away")
        return {g: b for g, b in self.beats_now.items() if g in gateway_ids}

    async def finish_call(
        self,
        call_id: str,
        *,
        status: CallStatus,
        end_reason: str,
        ended_at: datetime,
        usage: CallUsage | None = None,
        cost: CallCost | None = None,
        with_turns: bool = False,
    ) -> CallRecord:
        if self.down:
            raise StorageError("database away")
        call = self.calls[call_id]
        if call.ended_at is None:
            call = call.model_copy(
                update={
                    "status": status,
                    "end_reason": end_reason,
                    "ended_at": ended_at,
                    "usage": usage,
                    "cost": cost,
                }
            )
            self.calls[call_id] = call
            self.finished.append(call_id)
        return call

    def beat(self, gateway_id: str) -> None:
        """A new beat of `gateway_id` (each one differs from the one before)."""
        last = self.beats_now.get(gateway_id, datetime(2026, 1, 1, tzinfo=UTC))
        self.beats_now[gateway_id] = datetime.fromtimestamp(last.timestamp() + 1, UTC)


def _sweeper(store: Store, clock: Clock, serving: set[str], lost: list[str]) -> LostCallSweeper:
    async def on_lost(call: CallRecord) -> None:
        lost.append(call.id)

    return LostCallSweeper(
        store=store,  # type: ignore[arg-type]
        leases=store,  # type: ignore[arg-type]
        gateway_id=ME,
        serving=serving.__contains__,
        lease_s=LEASE_S,
        metrics=GatewayMetrics(),
        on_lost=on_lost,
        clock=clock,
    )


async def test_a_gateway_that_keeps_beating_keeps_its_calls() -> None:
    store, clock, lost = Store(), Clock(), []
    store.calls["c1"] = _call("c1", OTHER)
    sweeper = _sweeper(store, clock, set(), lost)
    for _ in range(30):  # ten leases, a beat and a sweep every third of one
        store.beat(OTHER)
        assert await sweeper.sweep() == []
        clock.now += LEASE_S / 3
    assert store.finished == [] and lost == []


async def test_a_silent_gateway_loses_its_calls_a_whole_lease_after_the_last_beat_seen() -> None:
    store, clock, lost = Store(), Clock(), []
    store.calls["c1"] = _call("c1", OTHER)
    store.calls["c2"] = _call("c2", OTHER)
    store.beat(OTHER)
    sweeper = _sweeper(store, clock, set(), lost)
    assert await sweeper.sweep() == []  # first sight of the beat: the lease starts now
    clock.now += LEASE_S - 0.001
    assert await sweeper.sweep() == []
    clock.now += 0.001
    finished = await sweeper.sweep()
    assert sorted(c.id for c in finished) == ["c1", "c2"]
    assert {c.end_reason for c in finished} == {LOST_REASON}
    assert {c.status for c in finished} == {CallStatus.FAILED}
    assert sorted(lost) == ["c1", "c2"]  # the carrier cleans up after each (rooms closed)
    assert await sweeper.sweep() == []  # finished once


@dataclass
class _ReadTogether(Store):
    """A store whose readers of the open calls wait for each other (`together`)."""

    together: asyncio.Barrier | None = None

    async def served_calls(self) -> list[CallRecord]:
        calls = await super().served_calls()
        if self.together is not None:
            await self.together.wait()
        return calls


async def test_of_two_sweepers_finishing_one_lost_call_only_the_one_that_wrote_counts_it() -> None:
    """`serve --workers N` runs a sweeper per worker: when two finish the same lost call in
    one round, the store keeps the first finish and only its sweeper reports the call (the
    log line, the metric, the carrier's clean-up)."""
    store, clock = _ReadTogether(), Clock()
    store.calls["c1"] = _call("c1", OTHER)
    store.beat(OTHER)
    walls = iter(
        [
            datetime(2026, 12, 1, 9, 0, 0, 1234, tzinfo=UTC),
            datetime(2026, 12, 1, 9, 0, 1, tzinfo=UTC),
        ]
    )
    lost: list[str] = []
    metrics = [GatewayMetrics(), GatewayMetrics()]

    async def on_lost(call: CallRecord) -> None:
        lost.append(call.id)

    sweepers = [
        LostCallSweeper(
            store=store,  # type: ignore[arg-type]
            leases=store,  # type: ignore[arg-type]
            gateway_id=me,
            serving=set[str]().__contains__,
            lease_s=LEASE_S,
            metrics=m,
            on_lost=on_lost,
            clock=clock,
            wall_clock=lambda: next(walls),
        )
        for me, m in (("gw-a", metrics[0]), ("gw-b", metrics[1]))
    ]
    for sweeper in sweepers:
        assert await sweeper.sweep() == []
    clock.now += LEASE_S
    store.together = asyncio.Barrier(2)  # both read the open calls before either finishes
    results = await asyncio.gather(*(sweeper.sweep() for sweeper in sweepers))
    assert sorted(len(r) for r in results) == [0, 1]
    [[won]] = [r for r in results if r]
    assert won.id == "c1" and won.ended_at is not None
    assert won.ended_at.microsecond % 1000 == 0  # as the store keeps it
    assert lost == ["c1"] and store.finished == ["c1"]
    assert sorted(m.calls_lost_total for m in metrics) == [0, 1]


SWEPT_AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # the sweeper's wall clock


def _costing_sweeper(store: Store, clock: Clock, prices: PriceTable) -> LostCallSweeper:
    return LostCallSweeper(
        store=store,  # type: ignore[arg-type]
        leases=store,  # type: ignore[arg-type]
        gateway_id=ME,
        serving=set[str]().__contains__,
        lease_s=LEASE_S,
        metrics=GatewayMetrics(),
        on_lost=lambda call: asyncio.sleep(0),
        clock=clock,
        wall_clock=lambda: SWEPT_AT,
        prices=prices,
    )


async def test_a_lost_call_is_costed_from_its_carrier_minutes() -> None:
    """What its gateway counted died with it: the carrier's minutes from when the call was
    answered (as its lifecycle counts them, not from the start: ringing is not billed) to
    the sweep are priced at the table in force."""
    store, clock = Store(), Clock()
    store.calls["c1"] = _call("c1", OTHER).model_copy(
        update={
            "started_at": SWEPT_AT - timedelta(seconds=120),  # rang for 30 s
            "answered_at": SWEPT_AT - timedelta(seconds=90),
        }
    )
    prices = PriceTable(currency="EUR", carrier_per_minute={"twilio": Decimal("0.02")})
    sweeper = _costing_sweeper(store, clock, prices)
    assert await sweeper.sweep() == []
    clock.now += LEASE_S
    [finished] = await sweeper.sweep()
    assert finished.usage is not None and finished.cost is not None
    assert finished.ended_at == SWEPT_AT
    [carrier] = finished.usage.carrier
    assert (carrier.provider, carrier.seconds) == ("twilio", 90.0)
    assert not (finished.usage.stt or finished.usage.llm or finished.usage.tts)
    [item] = finished.cost.items
    seconds = Decimal(str(carrier.seconds))
    assert (item.kind, item.unit, item.unit_price) == ("carrier", "minute", Decimal("0.02"))
    assert item.amount == (seconds * Decimal("0.02") / 60).quantize(Decimal("0.000001"))
    assert finished.cost.total == item.amount and finished.cost.currency == "EUR"


async def test_lost_calls_without_an_answer_time_are_costed_as_they_were_carried() -> None:
    """In progress without an answer time: answered before that was stored (from its start).
    Never answered (still ringing): the carrier carried nothing."""
    store, clock = Store(), Clock()
    started = SWEPT_AT - timedelta(seconds=75)
    store.calls["old"] = _call("old", OTHER).model_copy(update={"started_at": started})
    store.calls["ringing"] = _call("ringing", OTHER).model_copy(
        update={"started_at": started, "status": CallStatus.RINGING}
    )
    sweeper = _costing_sweeper(store, clock, PriceTable())
    assert await sweeper.sweep() == []
    clock.now += LEASE_S
    finished = {c.id: c for c in await sweeper.sweep()}
    carried = {
        call_id: [c.seconds for c in call.usage.carrier] if call.usage else None
        for call_id, call in finished.items()
    }
    assert carried == {"old": [75.0], "ringing": [0.0]}


async def test_a_lost_call_the_carrier_said_had_ended_is_finished_as_the_carrier_said() -> None:
    store, clock, lost = Store(), Clock(), []
    store.calls["c1"] = _call("c1", OTHER)
    # Twilio's `completed` reached another gateway while OTHER served the call, then OTHER died.
    store.carrier_ends["c1"] = (CallStatus.COMPLETED, "twilio-completed")
    sweeper = _sweeper(store, clock, set(), lost)
    assert await sweeper.sweep() == []
    clock.now += LEASE_S
    [finished] = await sweeper.sweep()
    assert (finished.status, finished.end_reason) == (CallStatus.COMPLETED, "twilio-completed")
    assert lost == ["c1"]


def _own_sweeper(store: Store, clock: Clock, live: LiveCalls) -> LostCallSweeper:
    return LostCallSweeper(
        store=store,  # type: ignore[arg-type]
        leases=store,  # type: ignore[arg-type]
        gateway_id=ME,
        serving=live.serving,
        lease_s=LEASE_S,
        metrics=GatewayMetrics(),
        on_lost=lambda call: asyncio.sleep(0),
        unfinished=live,
        clock=clock,
    )


async def test_a_call_that_ended_here_but_was_not_stored_is_finished_as_it_ended() -> None:
    store, clock, live = Store(), Clock(), LiveCalls(ME)
    store.calls["mine"] = _call("mine", ME)  # ended here; its final write failed
    ended_at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    live.left_unfinished("mine", OwnEnding(CallStatus.FAILED, "storage-unavailable", ended_at))
    [finished] = await _own_sweeper(store, clock, live).sweep()
    assert (finished.status, finished.end_reason) == (CallStatus.FAILED, "storage-unavailable")
    assert finished.ended_at == ended_at
    assert live.unfinished() == {}


async def test_a_call_that_ended_here_before_its_lease_was_stored_is_finished_by_id() -> None:
    """The database went away between the stream's claim and the lease write, and stayed
    away past the outage bound: the call never named this gateway, so no sweep by lease
    finds it. It is finished by `_id`, as it ended, once the database is back, and
    forgotten then (not before)."""
    store, clock, live = Store(), Clock(), LiveCalls(ME)
    store.calls["mine"] = _call("mine", None)
    ended_at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    used = CallUsage(
        llm=(LlmUsage(provider="openai", model="m", prompt_tokens=5, completion_tokens=2),)
    ).with_carrier("twilio", 61.5)
    ending = OwnEnding(CallStatus.FAILED, "storage-unavailable", ended_at, used)
    live.left_unfinished("mine", ending)
    sweeper = _own_sweeper(store, clock, live)
    store.down = True
    with pytest.raises(StorageError):
        await sweeper.sweep()
    assert live.unfinished() == {"mine": ending}  # kept until it is stored
    store.down = False
    [finished] = await sweeper.sweep()
    assert (finished.id, finished.status, finished.end_reason) == (
        "mine",
        CallStatus.FAILED,
        "storage-unavailable",
    )
    assert finished.ended_at == ended_at and finished.usage == used
    assert finished.cost is not None  # priced when the sweeper stored it
    assert {item.kind for item in finished.cost.items} == {"carrier", "llm_input", "llm_output"}
    assert live.unfinished() == {}
    assert await sweeper.sweep() == [] and store.finished == ["mine"]


async def test_a_call_that_ended_here_and_was_finished_meanwhile_is_only_forgotten() -> None:
    store, clock, live = Store(), Clock(), LiveCalls(ME)
    store.calls["mine"] = _call("mine", None)
    now = datetime.now(UTC)
    await store.finish_call(
        "mine", status=CallStatus.COMPLETED, end_reason="twilio-completed", ended_at=now
    )
    live.left_unfinished(
        "mine", OwnEnding(CallStatus.FAILED, "storage-unavailable", datetime.now(UTC))
    )
    assert await _own_sweeper(store, clock, live).sweep() == []
    assert store.calls["mine"].end_reason == "twilio-completed"
    assert live.unfinished() == {}


async def test_a_gateway_with_no_heartbeat_is_judged_over_a_lease_too() -> None:
    store, clock, lost = Store(), Clock(), []
    store.calls["c1"] = _call("c1", OTHER)  # its gateway stopped cleanly, or never beat
    sweeper = _sweeper(store, clock, set(), lost)
    assert await sweeper.sweep() == []
    clock.now += LEASE_S
    assert [c.id for c in await sweeper.sweep()] == ["c1"]


async def test_a_sweeper_never_finishes_a_call_its_own_process_serves() -> None:
    store, clock, lost = Store(), Clock(), []
    store.calls["mine"] = _call("mine", ME)
    store.calls["orphan"] = _call("orphan", ME)  # ours, but its final write failed
    sweeper = _sweeper(store, clock, {"mine"}, lost)
    for _ in range(10):
        finished = await sweeper.sweep()
        clock.now += LEASE_S
        if finished:
            assert [c.id for c in finished] == ["orphan"]
    assert store.finished == ["orphan"]


async def test_time_the_database_was_away_is_no_evidence() -> None:
    store, clock, lost = Store(), Clock(), []
    store.calls["c1"] = _call("c1", OTHER)
    store.beat(OTHER)
    sweeper = _sweeper(store, clock, set(), lost)
    await sweeper.sweep()
    store.down = True  # nobody can read or beat for two leases
    clock.now += 2 * LEASE_S
    with pytest.raises(StorageError):
        await sweeper.sweep()
    store.down = False
    assert await sweeper.sweep() == []  # back: the other gateway is judged afresh
    store.beat(OTHER)  # ... and it beats again
    clock.now += LEASE_S / 3
    assert await sweeper.sweep() == []
    assert store.finished == []


class Writer:
    gateway_id = ME

    def __init__(self) -> None:
        self.beats = 0

    def beat(self, *, at: datetime, lease_s: float) -> None:
        self.beats += 1

    def remove(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_lease_is_renewed_only_while_the_event_loop_turns() -> None:
    clock, writer = Clock(), Writer()
    lease = GatewayLease(writer, lease_s=LEASE_S, clock=clock)
    assert lease.beat_if_alive() and writer.beats == 1
    clock.now += LEASE_S / 2  # the loop last ticked half a lease ago: still alive, busy
    assert lease.beat_if_alive() and writer.beats == 2
    clock.now += 0.1  # stuck: its calls must become lost rather than be held forever
    assert not lease.beat_if_alive() and writer.beats == 2
