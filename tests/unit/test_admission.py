"""Admission control without a server: the bound on live calls with its held places, the
event-loop lag judged on an injected clock (no timing: the clock is a counter), the
pending-stream slots, the overflow TwiML setting and the refusal counters."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import pytest
from pydantic import ValidationError

from gateway.call.admission import Admission, LoopLagMonitor, StreamSlots
from gateway.call.lifecycle import CallLifecycle, LiveCalls
from gateway.call.writes import WriteBacklog
from gateway.errors import GatewayFull
from gateway.metrics import GatewayMetrics
from gateway.settings import Settings


class _Stop(Exception):
    """Ends a monitor's run once its scripted delays are spent."""


def _scripted_loop(
    delays_ms: list[float],
) -> tuple[Callable[[], float], Callable[[float], Awaitable[None]]]:
    """A clock and a sleep: each sleep advances the clock by what was asked plus the next
    scripted delay (how late the loop woke); after the last one the run stops."""
    now = [1000.0]
    pending = list(delays_ms)

    def clock() -> float:
        return now[0]

    async def sleep(seconds: float) -> None:
        if not pending:
            raise _Stop
        now[0] += seconds + pending.pop(0) / 1000.0

    return clock, sleep


async def _run(monitor: LoopLagMonitor) -> None:
    with pytest.raises(_Stop):
        await monitor.run()


def _admission(
    live: LiveCalls, *, max_live: int = 2, lag: LoopLagMonitor | None = None
) -> Admission:
    return Admission(
        live=live,
        max_live_calls=max_live,
        lag=lag or LoopLagMonitor(),
        max_loop_lag_ms=50.0,
        metrics=GatewayMetrics(),
    )


async def test_lag_is_the_quantile_of_the_window_on_an_injected_clock() -> None:
    seen: list[float] = []
    clock, sleep = _scripted_loop([1.0] * 36 + [200.0] * 4)
    monitor = LoopLagMonitor(window=40, quantile=0.9, clock=clock, sleep=sleep, on_lag=seen.append)
    await _run(monitor)
    # 4 late wakes of 40 are above the 90th percentile's rank: the loop is not judged late.
    assert monitor.lag_ms == pytest.approx(1.0)
    assert len(seen) == 40

    clock, sleep = _scripted_loop([1.0] * 35 + [200.0] * 5)
    monitor = LoopLagMonitor(window=40, quantile=0.9, clock=clock, sleep=sleep)
    await _run(monitor)
    assert monitor.lag_ms == pytest.approx(200.0)  # 5 of 40: a loop that stays late


async def test_a_lone_pause_does_not_refuse_but_a_late_loop_does_and_recovers() -> None:
    live = LiveCalls("gw-test")
    clock, sleep = _scripted_loop([0.5] * 10 + [900.0])  # one long pause (a model load)
    monitor = LoopLagMonitor(window=40, clock=clock, sleep=sleep)
    admission = _admission(live, max_live=10, lag=monitor)
    await _run(monitor)
    assert admission.refusal() is None

    for _ in range(10):  # the loop stays late: a quarter of the window over the bound
        monitor.observe(80.0)
    refused = admission.refusal()
    assert refused is not None and refused.cause == "loop-lag"
    assert refused.lag_ms == pytest.approx(80.0) and refused.max_lag_ms == 50.0
    assert admission.admit("CA1", hold_s=10) is not None
    assert live.occupancy() == 0  # a refused call holds no place

    for _ in range(40):  # the calls it has are on time again: it admits
        monitor.observe(2.0)
    assert admission.refusal() is None


def test_a_fresh_monitor_reports_no_lag_and_bad_parameters_are_refused() -> None:
    assert LoopLagMonitor().lag_ms == 0.0
    monitor = LoopLagMonitor(window=10, quantile=0.5)
    monitor.observe(30.0)  # one sample of ten: the nine missing count as an idle loop
    assert monitor.lag_ms == 0.0
    monitor.observe(-5.0)  # woke early (a coarse clock): no negative lag
    assert monitor.lag_ms == 0.0
    with pytest.raises(ValueError):
        LoopLagMonitor(quantile=0)
    with pytest.raises(ValueError):
        LoopLagMonitor(window=0)


def test_admitted_calls_hold_their_place_until_taken_released_or_expired() -> None:
    live = LiveCalls("gw-test")
    admission = _admission(live, max_live=2)
    assert admission.admit("CA-one", hold_s=10) is None
    assert admission.admit("CA-two", hold_s=10) is None
    refused = admission.admit("CA-three", hold_s=10)  # no await between check and hold
    assert refused is not None
    assert (refused.cause, refused.live, refused.max_live) == ("live-calls", 2, 2)

    admission.release("CA-one")  # its stream never came (a hang-up TwiML)
    assert admission.admit("CA-three", hold_s=10) is None
    assert live.occupancy() == 2

    # A hold runs out (its stream went to another worker): the place is free again.
    assert live.occupancy(now=time.monotonic() + 11) == 0


@dataclass
class _Record:
    id: str
    transport: str
    call_sid: str = ""


@dataclass
class _Served:
    """What `LiveCalls` reads of a call it serves: its record."""

    call: _Record


def _served(call_id: str, transport: str) -> CallLifecycle:
    return cast(CallLifecycle, _Served(_Record(call_id, transport)))


def test_a_room_call_holds_the_room_weight_of_places() -> None:
    live = LiveCalls("gw-test", room_weight=4)
    admission = _admission(live, max_live=10)
    assert admission.room_weight == 4
    # Two rooms on their way hold 8 places of 10: a third room does not fit, Twilio calls do.
    assert admission.admit("room-a", hold_s=10, weight=4) is None
    assert admission.admit("room-b", hold_s=10, weight=4) is None
    refused = admission.admit("room-c", hold_s=10, weight=4)
    assert refused is not None
    assert (refused.cause, refused.live, refused.weight) == ("live-calls", 8, 4)
    assert refused.log_fields()["call_weight"] == 4
    assert admission.admit("CA-one", hold_s=10) is None
    assert admission.admit("CA-two", hold_s=10) is None
    assert admission.admit("CA-three", hold_s=10) is not None  # 10 places of 10
    assert live.occupancy(now=time.monotonic() + 11) == 0  # the holds ran out

    # Served calls weigh by their transport: a SIP or web room 4 places, a Twilio call 1.
    calls = [_served("c1", "livekit"), _served("c2", "web"), _served("c3", "twilio")]
    for call in calls:
        live.add(call)
    assert (live.occupancy(), live.count()) == (9, 3)
    live.add(calls[0])  # the same call taken again: counted once
    assert live.occupancy() == 9
    live.discard(calls[1])
    assert (live.occupancy(), live.count()) == (5, 2)
    live.discard(calls[1])  # gone already
    assert live.occupancy() == 5
    room = _served("c3", "livekit")  # another lifecycle under c3's id: its weight replaces
    live.add(room)
    assert live.occupancy() == 8
    live.discard(calls[2])  # no longer the one served under c3
    assert live.occupancy() == 8
    live.discard(room)
    assert (live.occupancy(), live.count()) == (4, 1)
    assert admission.refusal(weight=6) is None  # 4 + 6 places of 10: an exact fit
    assert admission.refusal(weight=7) is not None


def test_one_room_always_fits_an_empty_process() -> None:
    live = LiveCalls("gw-test", room_weight=4)
    admission = _admission(live, max_live=2)  # fewer places than a room weighs
    assert admission.admit("room-a", hold_s=10, weight=4) is None
    refused = admission.admit("CA-one", hold_s=10)
    assert refused is not None and refused.live == 4
    assert Settings().livekit_call_weight == 4
    with pytest.raises(ValidationError):
        Settings(livekit_call_weight=0)


def test_require_raises_gateway_full_counted_under_its_arrival() -> None:
    live = LiveCalls("gw-test")
    metrics = GatewayMetrics()
    admission = Admission(
        live=live, max_live_calls=1, lag=LoopLagMonitor(), max_loop_lag_ms=50, metrics=metrics
    )
    admission.require("req-1", hold_s=5, arrival="outbound", retry_after_s=7)
    with pytest.raises(GatewayFull) as full:
        admission.require("req-2", hold_s=5, arrival="outbound", retry_after_s=7)
    assert full.value.retry_after_s == 7 and full.value.cause == "live-calls"
    metrics.call_refused("twilio", "loop-lag")
    metrics.loop_lag(12.25)
    text = metrics.render()
    assert 'voice_gateway_calls_refused_total{arrival="outbound",cause="live-calls"} 1' in text
    assert 'voice_gateway_calls_refused_total{arrival="twilio",cause="loop-lag"} 1' in text
    assert "# TYPE voice_gateway_event_loop_lag_ms gauge" in text
    assert "voice_gateway_event_loop_lag_ms 12.2" in text


def test_a_database_behind_its_calls_writes_refuses_new_calls_until_it_catches_up() -> None:
    now = [50.0]
    backlog = WriteBacklog(lambda: now[0])
    metrics = GatewayMetrics()
    admission = Admission(
        live=LiveCalls("gw-test"),
        max_live_calls=10,
        lag=LoopLagMonitor(),
        max_loop_lag_ms=50,
        metrics=metrics,
        backlog=backlog,
        max_write_wait_ms=1000,
    )
    turn, event = object(), object()  # two calls' writes, queued
    backlog.add(turn)
    now[0] += 0.5
    backlog.add(event)
    assert admission.admit("CA-one", hold_s=5) is None  # 500 ms: within the bound
    now[0] += 0.6
    refused = admission.admit("CA-two", hold_s=5)
    assert refused is not None and refused.cause == "write-backlog"
    assert refused.write_wait_ms == pytest.approx(1100.0)
    assert refused.log_fields()["max_write_wait_ms"] == 1000
    with pytest.raises(GatewayFull) as full:
        admission.require("req", hold_s=5, arrival="web", retry_after_s=3)
    assert full.value.cause == "write-backlog"
    assert 'cause="write-backlog"} 1' in metrics.render()

    backlog.discard(turn)  # stored: the oldest still waiting is 600 ms old
    assert admission.admit("CA-three", hold_s=5) is None
    backlog.discard(event)
    assert backlog.oldest_ms() == 0.0

    unjudged = Admission(
        live=LiveCalls("gw-test"), max_live_calls=10, lag=LoopLagMonitor(), max_loop_lag_ms=50,
        backlog=backlog, max_write_wait_ms=None,
    )  # fmt: skip
    backlog.add(turn)
    now[0] += 3600
    assert unjudged.admit("CA-four", hold_s=5) is None  # MAX_WRITE_WAIT_MS=0: not judged


def test_stream_slots_bound_sockets_waiting_for_start() -> None:
    slots = StreamSlots(2)
    assert slots.open() and slots.open()
    assert not slots.open()
    slots.release()
    assert slots.open()
    for _ in range(5):
        slots.release()
    assert slots.pending == 0


def test_overflow_twiml_must_be_one_response_element() -> None:
    dial = "<Response><Dial>+15550009999</Dial></Response>"
    assert Settings(overflow_twiml=dial).overflow_twiml == dial
    assert Settings(overflow_twiml="  ").overflow_twiml is None
    with pytest.raises(ValidationError, match="not XML"):
        Settings(overflow_twiml="<Response><Dial>")
    with pytest.raises(ValidationError, match="one <Response>"):
        Settings(overflow_twiml="<Dial>+15550009999</Dial>")


async def test_the_monitor_stops_when_cancelled() -> None:
    monitor = LoopLagMonitor(interval_s=0.001)
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
