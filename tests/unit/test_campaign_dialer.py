"""The dialer's decisions, and whole campaigns run on a `FakeClock` with in-process doubles
of the campaign store, the calls and the carrier: a day-long campaign (windows closing and
reopening, backoffs of hours) runs in well under a second of real time."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.campaigns.clock import FakeClock
from gateway.campaigns.dialer import CampaignDialer, DialerConfig
from gateway.campaigns.outcomes import after_attempt, call_outcome
from gateway.campaigns.schedule import inside
from gateway.errors import GatewayFull
from storage import (
    AttemptRecord,
    CallNotFound,
    CallRecord,
    CallStatus,
    CampaignRecord,
    CampaignState,
    ContactRecord,
    ContactStatus,
    Direction,
    Outcome,
    RetryPolicy,
    Schedule,
    StorageError,
)
from webhooks.campaign_events import CampaignRef, ContactDone

NY = ZoneInfo("America/New_York")
MONDAY_8 = datetime(2026, 6, 1, 8, 0, tzinfo=NY)  # a Monday, before the window opens
ORG = "org1"


def _call(
    status: CallStatus,
    *,
    ended: bool = True,
    end_reason: str | None = None,
    answered_by: str | None = None,
) -> CallRecord:
    at = datetime(2026, 6, 1, tzinfo=UTC)
    return CallRecord(
        id="c1",
        org_id=ORG,
        transport="twilio",
        call_sid="CA1",
        stream_sid=None,
        from_number="+15550000001",
        to_number="+15550000002",
        direction=Direction.OUTBOUND,
        assistant_id="a1",
        metadata={},
        status=status,
        started_at=at,
        ended_at=at if ended else None,
        duration_s=None,
        end_reason=end_reason,
        answered_by=answered_by,
    )


def test_call_outcomes() -> None:
    assert call_outcome(_call(CallStatus.RINGING, ended=False)) is None
    assert call_outcome(_call(CallStatus.BUSY)) is Outcome.BUSY
    assert call_outcome(_call(CallStatus.NO_ANSWER)) is Outcome.NO_ANSWER
    assert call_outcome(_call(CallStatus.FAILED)) is Outcome.FAILED
    assert call_outcome(_call(CallStatus.CANCELED)) is Outcome.CANCELED
    assert call_outcome(_call(CallStatus.COMPLETED)) is Outcome.COMPLETED
    voicemail = _call(CallStatus.COMPLETED, end_reason="voicemail")
    assert call_outcome(voicemail) is Outcome.VOICEMAIL
    machine = _call(CallStatus.COMPLETED, answered_by="machine_end_beep")
    assert call_outcome(machine) is Outcome.VOICEMAIL
    assert call_outcome(_call(CallStatus.COMPLETED, answered_by="fax")) is Outcome.VOICEMAIL
    assert call_outcome(_call(CallStatus.COMPLETED, answered_by="human")) is Outcome.COMPLETED


def test_retry_decisions() -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    policy = RetryPolicy(on=(Outcome.BUSY, Outcome.NO_ANSWER), max_attempts=3, backoff_s=3600)
    contact = ContactRecord(
        campaign_id="k", n=1, to_number="+1555", metadata={}, time_zone=None, attempts=1
    )
    again = after_attempt(contact, Outcome.BUSY, policy, now=now)
    assert again.status is ContactStatus.PENDING
    assert again.next_at == now + timedelta(hours=1) and again.outcome is Outcome.BUSY
    done = after_attempt(contact, Outcome.COMPLETED, policy, now=now)
    assert done.status is ContactStatus.DONE and done.next_at is None
    assert after_attempt(contact, Outcome.FAILED, policy, now=now).status is ContactStatus.DONE
    last = dataclasses.replace(contact, attempts=3)
    assert after_attempt(last, Outcome.BUSY, policy, now=now).status is ContactStatus.DONE


# -- in-process doubles


@dataclass
class MemoryCampaigns:
    """The dialer's side of the campaign store, in memory (claims are unique like inserts)."""

    campaigns: dict[str, CampaignRecord] = field(default_factory=dict)
    data: dict[str, list[ContactRecord]] = field(default_factory=dict)
    states: dict[tuple[str, int], ContactRecord] = field(default_factory=dict)
    terms: dict[tuple[str, int], str] = field(default_factory=dict)
    attempts: dict[tuple[str, int, int], AttemptRecord] = field(default_factory=dict)
    completed: list[str] = field(default_factory=list)
    released: set[tuple[str, int]] = field(default_factory=set)

    def add(self, campaign: CampaignRecord, contacts: list[ContactRecord]) -> None:
        self.campaigns[campaign.id] = dataclasses.replace(campaign, contact_count=len(contacts))
        self.data[campaign.id] = contacts

    def set_state(self, campaign_id: str, state: CampaignState) -> None:
        self.campaigns[campaign_id] = dataclasses.replace(self.campaigns[campaign_id], state=state)

    async def active(self) -> list[CampaignRecord]:
        return [c for c in self.campaigns.values() if c.state == CampaignState.ACTIVE]

    async def get_any(self, campaign_id: str) -> CampaignRecord | None:
        return self.campaigns.get(campaign_id)

    def _merged(self, campaign_id: str) -> list[ContactRecord]:
        return [self.states.get((campaign_id, c.n), c) for c in self.data[campaign_id]]

    async def all_contacts(self, campaign_id: str) -> list[ContactRecord]:
        return self._merged(campaign_id)

    async def contacts(
        self,
        campaign_id: str,
        *,
        status: ContactStatus | None = None,
        after_n: int = 0,
        limit: int = 100,
    ) -> list[ContactRecord]:
        return [c for c in self._merged(campaign_id) if c.n > after_n][:limit]

    async def contacts_missing(
        self, campaign_id: str, have: Collection[int]
    ) -> list[ContactRecord]:
        return sorted((c for c in self._merged(campaign_id) if c.n not in have), key=lambda c: c.n)

    def commit(self, campaign_id: str, contacts: list[ContactRecord]) -> None:
        """An upload committed (its numbers may come before others already committed)."""
        self.data[campaign_id] = [*self.data[campaign_id], *contacts]
        self.campaigns[campaign_id] = dataclasses.replace(
            self.campaigns[campaign_id], contact_count=len(self.data[campaign_id])
        )

    async def save_contact(self, contact: ContactRecord) -> None:
        self.states[(contact.campaign_id, contact.n)] = contact

    async def current_term(self, campaign_id: str) -> tuple[int, str | None]:
        terms = [t for (c, t) in self.terms if c == campaign_id]
        if not terms:
            return 0, None
        if (campaign_id, max(terms)) in self.released:
            return max(terms), None
        return max(terms), self.terms[(campaign_id, max(terms))]

    async def release_term(self, campaign_id: str, term: int) -> None:
        self.released.add((campaign_id, term))

    async def claim_term(
        self, campaign_id: str, term: int, *, gateway_id: str, at: datetime
    ) -> bool:
        if (campaign_id, term) in self.terms:
            return False
        self.terms[(campaign_id, term)] = gateway_id
        return True

    async def claim_attempt(
        self, campaign_id: str, n: int, attempt: int, *, gateway_id: str, at: datetime
    ) -> bool:
        if (campaign_id, n, attempt) in self.attempts:
            return False
        self.attempts[(campaign_id, n, attempt)] = AttemptRecord(
            campaign_id=campaign_id,
            n=n,
            attempt=attempt,
            gateway_id=gateway_id,
            claimed_at=at,
            call_id=None,
        )
        return True

    async def set_attempt_call(self, campaign_id: str, n: int, attempt: int, call_id: str) -> None:
        key = (campaign_id, n, attempt)
        self.attempts[key] = dataclasses.replace(self.attempts[key], call_id=call_id)

    async def release_attempt(self, campaign_id: str, n: int, attempt: int) -> None:
        del self.attempts[(campaign_id, n, attempt)]

    async def attempt(self, campaign_id: str, n: int, attempt: int) -> AttemptRecord | None:
        return self.attempts.get((campaign_id, n, attempt))

    async def mark_completed(self, campaign_id: str, *, at: datetime) -> None:
        if self.campaigns[campaign_id].state == CampaignState.ACTIVE:
            self.set_state(campaign_id, CampaignState.COMPLETED)
            self.completed.append(campaign_id)


@dataclass
class Dialled:
    call_id: str
    number: str
    n: int
    attempt: int
    gateway: str
    at: datetime
    ends_at: datetime
    status: CallStatus
    answered_by: str | None = None


class Carrier:
    """Calls and the callees: each number's script says how each attempt ends; a call
    lasts `seconds` on the fake clock. Also the `CallReader` the dialer polls."""

    def __init__(
        self,
        clock: FakeClock,
        scripts: Mapping[str, list[CallStatus | str]],
        *,
        seconds: float = 300,
    ) -> None:
        self._clock = clock
        self._scripts = scripts
        self._seconds = seconds
        self._ids = itertools.count(1)
        self.dialled: list[Dialled] = []
        self.calls: dict[str, CallRecord] = {}

    def placer(self, gateway: str) -> Placer:
        return Placer(self, gateway)

    async def place(
        self,
        campaign: CampaignRecord,
        contact: ContactRecord,
        gateway: str,
        on_stored: Callable[[str], Awaitable[None]],
    ) -> None:
        call_id = f"call{next(self._ids)}"
        now = self._clock.now()
        self.calls[call_id] = _call(CallStatus.QUEUED, ended=False).model_copy(
            update={"id": call_id, "to_number": contact.to_number}
        )
        await on_stored(call_id)
        # Answered at once (a call left ringing past `unanswered_s` is judged lost).
        self.calls[call_id] = self.calls[call_id].model_copy(
            update={"status": CallStatus.IN_PROGRESS}
        )
        script = self._scripts.get(contact.to_number, [CallStatus.COMPLETED])
        step = script[min(len(self.numbered(contact.to_number)), len(script) - 1)]
        answered_by = None
        status = step if isinstance(step, CallStatus) else CallStatus.COMPLETED
        if step == "machine":
            answered_by = "machine_end_beep"
        self.dialled.append(
            Dialled(
                call_id=call_id,
                number=contact.to_number,
                n=contact.n,
                attempt=contact.attempts,
                gateway=gateway,
                at=now,
                ends_at=now + timedelta(seconds=self._seconds),
                status=status,
                answered_by=answered_by,
            )
        )

    def numbered(self, number: str) -> list[Dialled]:
        return [d for d in self.dialled if d.number == number]

    def live(self, at: datetime) -> int:
        return sum(1 for d in self.dialled if d.at <= at < d.ends_at)

    def settle(self) -> None:
        """Finish the calls whose time is up."""
        now = self._clock.now()
        for d in self.dialled:
            call = self.calls[d.call_id]
            if call.ended_at is None and now >= d.ends_at:
                self.calls[d.call_id] = call.model_copy(
                    update={"status": d.status, "ended_at": now, "answered_by": d.answered_by}
                )

    async def get_call(self, call_id: str, *, with_turns: bool = True) -> CallRecord:
        if call_id not in self.calls:
            raise CallNotFound(call_id)
        return self.calls[call_id]

    async def live_call_ids(self, org_id: str | None) -> frozenset[str]:
        return frozenset(i for i, c in self.calls.items() if c.ended_at is None)

    async def finish_call(
        self, call_id: str, *, status: CallStatus, end_reason: str, ended_at: datetime
    ) -> CallRecord:
        call = self.calls[call_id]
        if call.ended_at is None:
            call = call.model_copy(
                update={"status": status, "end_reason": end_reason, "ended_at": ended_at}
            )
            self.calls[call_id] = call
        return call


@dataclass
class Placer:
    carrier: Carrier
    gateway: str

    async def place(
        self,
        campaign: CampaignRecord,
        contact: ContactRecord,
        *,
        on_stored: Callable[[str], Awaitable[None]],
    ) -> None:
        await self.carrier.place(campaign, contact, self.gateway, on_stored)


@dataclass
class EventSink:
    done: list[ContactDone] = field(default_factory=list)
    completed_events: list[tuple[str, dict[str, int]]] = field(default_factory=list)

    async def contact_done(self, campaign: CampaignRef, contact: ContactDone) -> None:
        self.done.append(contact)

    async def completed(
        self,
        campaign: CampaignRef,
        *,
        state: str,
        total: int,
        by_status: Mapping[str, int],
        by_outcome: Mapping[str, int],
    ) -> None:
        self.completed_events.append((state, dict(by_outcome)))


@dataclass
class Beats:
    alive: dict[str, datetime] = field(default_factory=dict)

    async def beats(self, gateway_ids: Collection[str]) -> dict[str, datetime]:
        return {g: self.alive[g] for g in gateway_ids if g in self.alive}


@dataclass
class Room:
    carrier: Carrier
    clock: FakeClock
    cap: int | None = None

    async def outbound_room(self, org_id: str | None) -> int | None:
        if self.cap is None:
            return None
        live = sum(1 for c in self.carrier.calls.values() if c.ended_at is None)
        return self.cap - live


@dataclass
class NoBlocks:
    blocked_numbers: set[str] = field(default_factory=set)

    async def blocked(self, org_id: str, number: str) -> bool:
        return number in self.blocked_numbers


def _campaign(**changes: object) -> CampaignRecord:
    at = datetime(2026, 5, 1, tzinfo=UTC)
    base = CampaignRecord(
        id="camp1",
        org_id=ORG,
        name="reminders",
        assistant_id="a1",
        call_service="twilio",
        from_number="+15550000001",
        trunk_id=None,
        schedule=Schedule(
            time_zone="America/New_York",
            days=("mon", "tue", "wed", "thu", "fri"),
            hours=("09:00", "17:00"),
        ),
        max_concurrency=3,
        calls_per_second=1.0,
        retry=RetryPolicy(on=(Outcome.BUSY, Outcome.NO_ANSWER), max_attempts=3, backoff_s=7200),
        state=CampaignState.ACTIVE,
        created_at=at,
        updated_at=at,
        completed_at=None,
        contact_count=0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _contacts(numbers: list[str], zones: Mapping[str, str] | None = None) -> list[ContactRecord]:
    zones = zones or {}
    return [
        ContactRecord(
            campaign_id="camp1",
            n=i,
            to_number=number,
            metadata={"name": f"person {i}"},
            time_zone=zones.get(number),
        )
        for i, number in enumerate(numbers, start=1)
    ]


@dataclass
class World:
    clock: FakeClock
    store: MemoryCampaigns
    carrier: Carrier
    events: EventSink
    beats: Beats
    room: Room
    dnc: NoBlocks
    dialers: dict[str, CampaignDialer] = field(default_factory=dict)

    def dialer(self, gateway: str, may_start: Callable[[], bool] = lambda: True) -> CampaignDialer:
        dialer = CampaignDialer(
            may_start=may_start,
            config=DialerConfig(
                gateway_id=gateway, lease_s=30, tick_s=1.0, list_s=1.0, attempt_stale_s=60
            ),
            campaigns=self.store,
            do_not_call=self.dnc,
            calls=self.carrier,
            heartbeats=self.beats,
            capacity=self.room,
            placer=self.carrier.placer(gateway),
            events=self.events,
            clock=self.clock,
        )
        self.dialers[gateway] = dialer
        return dialer

    async def run(
        self,
        *,
        step_s: float,
        until: Callable[[], bool],
        limit: timedelta,
        alive: Collection[str] | None = None,
        each: Callable[[], None] | None = None,
    ) -> None:
        """Tick the dialers of the `alive` gateways (they beat), finish calls, move time."""
        end = self.clock.now() + limit
        while not until():
            assert self.clock.now() < end, "the campaign did not finish in time"
            for gateway, dialer in self.dialers.items():
                if alive is None or gateway in alive:
                    self.beats.alive[gateway] = self.clock.now()
                    await dialer.tick()
            for _ in range(3):
                await asyncio.sleep(0)  # the placing tasks run
            # Dial slots within the step: time moves in small steps so each one is taken.
            for _ in range(int(step_s)):
                self.clock.advance(1.0)
                for _ in range(3):
                    await asyncio.sleep(0)
            self.carrier.settle()
            if each is not None:
                each()


def _world(scripts: Mapping[str, list[CallStatus | str]], *, cap: int | None = None) -> World:
    clock = FakeClock(MONDAY_8)
    carrier = Carrier(clock, scripts)
    return World(
        clock=clock,
        store=MemoryCampaigns(),
        carrier=carrier,
        events=EventSink(),
        beats=Beats(),
        room=Room(carrier, clock, cap),
        dnc=NoBlocks(),
    )


async def test_a_day_long_campaign_keeps_its_window_concurrency_and_retry_policy() -> None:
    numbers = [f"+1555010{i:04d}" for i in range(1, 31)]
    scripts: dict[str, list[CallStatus | str]] = {
        numbers[0]: [CallStatus.BUSY, CallStatus.BUSY, CallStatus.COMPLETED],  # third time
        numbers[1]: [CallStatus.NO_ANSWER],  # always: three attempts, then done
        numbers[2]: [CallStatus.FAILED],  # not retried
        numbers[3]: ["machine"],  # voicemail: not retried
        numbers[4]: [CallStatus.BUSY, CallStatus.COMPLETED],
    }
    w = _world(scripts)
    w.dnc.blocked_numbers.add(numbers[5])
    la = {numbers[6]: "America/Los_Angeles"}  # opens three hours later
    w.store.add(_campaign(), _contacts(numbers, la))
    w.dialer("gw-a")
    peak = 0

    def watch() -> None:
        nonlocal peak
        peak = max(peak, w.carrier.live(w.clock.now()))

    await w.run(
        step_s=60,
        until=lambda: bool(w.store.completed),
        limit=timedelta(days=3),
        each=watch,
    )
    assert w.store.completed == ["camp1"]
    assert peak <= 3
    for d in w.carrier.dialled:  # every dial inside the window, in the contact's zone
        assert inside(w.store.campaigns["camp1"].schedule, d.at, la.get(d.number))
    assert [d.attempt for d in w.carrier.numbered(numbers[0])] == [1, 2, 3]
    assert len(w.carrier.numbered(numbers[1])) == 3
    assert len(w.carrier.numbered(numbers[2])) == 1
    assert len(w.carrier.numbered(numbers[3])) == 1
    assert len(w.carrier.numbered(numbers[4])) == 2
    assert not w.carrier.numbered(numbers[5])  # on the do-not-call list
    # Backoffs of two hours between attempts of one number.
    first, second, third = (d.at for d in w.carrier.numbered(numbers[0]))
    assert second - first >= timedelta(hours=2) and third - second >= timedelta(hours=2)
    la_first = w.carrier.numbered(numbers[6])[0].at
    assert la_first >= datetime(2026, 6, 1, 9, 0, tzinfo=ZoneInfo("America/Los_Angeles"))
    outcomes = {d.to_number: d.outcome for d in w.events.done}
    assert outcomes[numbers[0]] == "completed" and outcomes[numbers[1]] == "no-answer"
    assert outcomes[numbers[2]] == "failed" and outcomes[numbers[3]] == "voicemail"
    assert outcomes[numbers[5]] == "do-not-call"
    assert len(w.events.done) == 30 and len({d.n for d in w.events.done}) == 30
    done = {d.to_number: d for d in w.events.done}
    assert done[numbers[0]].attempts == 3 and len(done[numbers[0]].call_ids) == 3
    assert w.events.completed_events == [
        ("completed", {"completed": 26, "no-answer": 1, "failed": 1, "voicemail": 1,
                       "do-not-call": 1})
    ]  # fmt: skip
    # Dial spacing: one call per second at most.
    starts = sorted(d.at for d in w.carrier.dialled)
    assert all(b - a >= timedelta(seconds=1) for a, b in itertools.pairwise(starts))


async def test_a_window_closing_holds_the_rest_until_it_reopens() -> None:
    numbers = [f"+1555020{i:04d}" for i in range(1, 31)]
    w = _world({})
    w.carrier._seconds = 3600  # hour-long calls: three at a time, so the day ends first
    w.store.add(_campaign(), _contacts(numbers))
    w.dialer("gw-a")
    await w.run(step_s=60, until=lambda: bool(w.store.completed), limit=timedelta(days=4))
    days = sorted({d.at.astimezone(NY).date() for d in w.carrier.dialled})
    assert len(days) >= 2  # held overnight
    for d in w.carrier.dialled:
        assert 9 <= d.at.astimezone(NY).hour < 17


async def test_the_organisation_cap_holds_attempts() -> None:
    numbers = [f"+1555030{i:04d}" for i in range(1, 11)]
    w = _world({}, cap=2)
    w.store.add(_campaign(max_concurrency=5), _contacts(numbers))
    w.dialer("gw-a")
    peak = 0

    def watch() -> None:
        nonlocal peak
        peak = max(peak, w.carrier.live(w.clock.now()))

    await w.run(step_s=60, until=lambda: bool(w.store.completed), limit=timedelta(days=1),
                each=watch)  # fmt: skip
    assert peak == 2


async def test_cancel_stops_new_attempts_and_lets_live_calls_finish() -> None:
    numbers = [f"+1555040{i:04d}" for i in range(1, 11)]
    w = _world({})
    w.store.add(_campaign(), _contacts(numbers))
    w.dialer("gw-a")
    w.clock.set(datetime(2026, 6, 1, 9, 0, tzinfo=NY))
    await w.run(step_s=1, until=lambda: len(w.carrier.dialled) >= 3, limit=timedelta(hours=1))
    w.store.set_state("camp1", CampaignState.CANCELLED)
    await w.run(step_s=60, until=lambda: bool(w.events.completed_events),
                limit=timedelta(hours=2))  # fmt: skip
    assert len(w.carrier.dialled) == 3
    assert all(c.ended_at is not None for c in w.carrier.calls.values())
    state, by_outcome = w.events.completed_events[0]
    assert state == "cancelled" and by_outcome == {"completed": 3}
    statuses = [c.status for c in await w.store.all_contacts("camp1")]
    assert statuses.count(ContactStatus.CANCELLED) == 7
    assert w.store.completed == []


async def test_a_dead_leader_is_taken_over_and_each_attempt_is_dialled_once() -> None:
    numbers = [f"+1555050{i:04d}" for i in range(1, 21)]
    w = _world({n: [CallStatus.BUSY, CallStatus.COMPLETED] for n in numbers[:5]})
    w.store.add(_campaign(), _contacts(numbers))
    w.dialer("gw-a")
    w.dialer("gw-b")
    w.clock.set(datetime(2026, 6, 1, 9, 0, tzinfo=NY))
    await w.run(step_s=1, until=lambda: len(w.carrier.dialled) >= 6, limit=timedelta(hours=1))
    leader = w.store.terms[("camp1", 1)]
    other = "gw-b" if leader == "gw-a" else "gw-a"
    assert w.dialers[other].leads() == []
    # The leader dies (stops ticking and beating) with calls in flight and an attempt
    # claimed whose call was never stored.
    w.store.attempts[("camp1", 19, 1)] = AttemptRecord(
        campaign_id="camp1", n=19, attempt=1, gateway_id=leader, claimed_at=w.clock.now(),
        call_id=None,
    )  # fmt: skip
    await w.run(step_s=60, until=lambda: bool(w.store.completed), limit=timedelta(days=2),
                alive={other})  # fmt: skip
    assert w.store.terms[("camp1", 2)] == other
    keys = [(d.n, d.attempt) for d in w.carrier.dialled]
    assert len(keys) == len(set(keys))  # each attempt dialled once
    assert {d.gateway for d in w.carrier.dialled} == {"gw-a", "gw-b"}
    by_number = {d.to_number: d for d in w.events.done}
    assert by_number[numbers[18]].attempts == 1  # the stale claim counted: failed, done
    assert by_number[numbers[18]].outcome == "failed"
    assert all(by_number[n].outcome == "completed" for n in numbers[:5])


@pytest.mark.parametrize("paused", [True])
async def test_paused_starts_nothing_and_resume_goes_on(paused: bool) -> None:
    numbers = [f"+1555060{i:04d}" for i in range(1, 6)]
    w = _world({})
    w.store.add(_campaign(), _contacts(numbers))
    w.dialer("gw-a")
    w.store.set_state("camp1", CampaignState.PAUSED)
    await w.run(step_s=60, until=lambda: w.clock.now() > MONDAY_8 + timedelta(hours=3),
                limit=timedelta(hours=4))  # fmt: skip
    assert w.carrier.dialled == []
    w.store.set_state("camp1", CampaignState.ACTIVE)
    await w.run(step_s=60, until=lambda: bool(w.store.completed), limit=timedelta(hours=4))
    assert len(w.carrier.dialled) == 5


async def test_a_draining_leader_steps_down_and_another_gateway_goes_on() -> None:
    numbers = [f"+1555070{i:04d}" for i in range(1, 7)]
    w = _world({})
    w.store.add(_campaign(), _contacts(numbers))
    draining = False
    w.dialer("gw-a", may_start=lambda: not draining)
    w.dialer("gw-b")
    w.clock.set(datetime(2026, 6, 1, 9, 0, tzinfo=NY))
    await w.run(step_s=1, until=lambda: len(w.carrier.dialled) >= 3, limit=timedelta(hours=1))
    assert w.store.terms[("camp1", 1)] == "gw-a"
    draining = True  # gw-a starts nothing more and gives its term up; gw-b leads
    await w.run(step_s=60, until=lambda: bool(w.store.completed), limit=timedelta(hours=2))
    assert ("camp1", 1) in w.store.released and w.store.terms[("camp1", 2)] == "gw-b"
    assert w.dialers["gw-a"].leads() == []
    keys = [(d.n, d.attempt) for d in w.carrier.dialled]
    assert sorted(keys) == [(n, 1) for n in range(1, 7)]  # each once, first attempt
    assert {d.gateway for d in w.carrier.dialled} == {"gw-a", "gw-b"}
    assert sorted(d.outcome for d in w.events.done) == ["completed"] * 6


async def test_a_campaign_cancelled_while_paused_is_settled() -> None:
    numbers = [f"+1555080{i:04d}" for i in range(1, 6)]
    w = _world({})
    w.store.add(_campaign(), _contacts(numbers))
    w.dialer("gw-a")
    w.clock.set(datetime(2026, 6, 1, 9, 0, tzinfo=NY))
    await w.run(step_s=1, until=lambda: len(w.carrier.dialled) >= 1, limit=timedelta(hours=1))
    w.store.set_state("camp1", CampaignState.PAUSED)
    await w.run(step_s=60, until=lambda: not w.dialers["gw-a"].leads(), limit=timedelta(hours=1))
    w.store.set_state("camp1", CampaignState.CANCELLED)
    await w.run(step_s=60, until=lambda: bool(w.events.completed_events),
                limit=timedelta(hours=1))  # fmt: skip
    assert w.events.completed_events[0][0] == "cancelled"
    statuses = [c.status for c in await w.store.all_contacts("camp1")]
    assert ContactStatus.PENDING not in statuses and ContactStatus.CANCELLED in statuses


async def test_an_upload_committed_after_a_later_one_is_dialled() -> None:
    numbers = [f"+1555090{i:04d}" for i in range(1, 5)]
    w = _world({})
    contacts = _contacts(numbers)
    w.store.add(_campaign(), contacts[3:])  # n 4 committed first (a small upload)
    w.dialer("gw-a")
    w.clock.set(datetime(2026, 6, 1, 9, 0, tzinfo=NY))
    await w.run(step_s=1, until=lambda: len(w.carrier.dialled) >= 1, limit=timedelta(hours=1))
    w.store.commit("camp1", contacts[:3])  # n 1..3: a bigger upload, committed later
    await w.run(step_s=60, until=lambda: bool(w.store.completed), limit=timedelta(hours=2))
    assert sorted(d.n for d in w.carrier.dialled) == [1, 2, 3, 4]
    assert len(w.events.done) == 4


@dataclass
class Refusing:
    """A placer that refuses (as this gateway's admission does) its first `refusals` calls
    before storing anything."""

    inner: Placer
    refusals: int

    async def place(
        self,
        campaign: CampaignRecord,
        contact: ContactRecord,
        *,
        on_stored: Callable[[str], Awaitable[None]],
    ) -> None:
        if self.refusals > 0:
            self.refusals -= 1
            raise GatewayFull("live-calls", retry_after_s=1)
        await self.inner.place(campaign, contact, on_stored=on_stored)


async def test_a_refusal_by_our_own_gateway_does_not_use_up_the_attempt() -> None:
    numbers = [f"+1555100{i:04d}" for i in range(1, 6)]
    w = _world({})
    w.store.add(_campaign(retry=RetryPolicy(max_attempts=1)), _contacts(numbers))
    dialer = w.dialer("gw-a")
    dialer._placer = Refusing(w.carrier.placer("gw-a"), refusals=3)
    w.clock.set(datetime(2026, 6, 1, 9, 0, tzinfo=NY))
    await w.run(step_s=60, until=lambda: bool(w.store.completed), limit=timedelta(hours=2))
    assert sorted(d.n for d in w.carrier.dialled) == [1, 2, 3, 4, 5]
    assert all(d.attempt == 1 for d in w.carrier.dialled)
    assert sorted(d.outcome for d in w.events.done) == ["completed"] * 5
    assert all(d.attempts == 1 for d in w.events.done)


async def test_no_call_is_placed_after_a_pause_read_while_it_waited_for_its_slot() -> None:
    numbers = [f"+1555110{i:04d}" for i in range(1, 4)]
    w = _world({})
    w.store.add(_campaign(), _contacts(numbers))
    dialer = w.dialer("gw-a")
    w.clock.set(datetime(2026, 6, 1, 9, 0, tzinfo=NY))
    await dialer.tick()  # starts n 1 now and n 2 at its slot, a second on
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(w.carrier.dialled) == 1
    w.store.set_state("camp1", CampaignState.PAUSED)
    await dialer.tick()  # reads the pause
    w.clock.advance(1.0)
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(w.carrier.dialled) == 1  # n 2 was not placed
    await dialer.tick()
    w.store.set_state("camp1", CampaignState.ACTIVE)
    await w.run(step_s=60, until=lambda: bool(w.store.completed), limit=timedelta(hours=2))
    assert sorted((d.n, d.attempt) for d in w.carrier.dialled) == [(1, 1), (2, 1), (3, 1)]


async def test_the_organisation_room_is_counted_again_right_before_a_start() -> None:
    numbers = [f"+1555120{i:04d}" for i in range(1, 3)]
    w = _world({}, cap=1)
    w.store.add(_campaign(max_concurrency=1), _contacts(numbers))
    dialer = w.dialer("gw-a")
    w.clock.set(datetime(2026, 6, 1, 9, 0, tzinfo=NY))
    other = _call(CallStatus.IN_PROGRESS, ended=False).model_copy(update={"id": "elsewhere"})

    class Sneaky(Room):
        """Another gateway takes the organisation's last place once this round counted."""

        async def outbound_room(self, org_id: str | None) -> int | None:
            room = await super().outbound_room(org_id)
            self.carrier.calls.setdefault("elsewhere", other)
            return room

    dialer._capacity = Sneaky(w.carrier, w.clock, 1)
    await dialer.tick()
    for _ in range(5):
        await asyncio.sleep(0)
    assert w.carrier.dialled == []  # counted again before the store: no room
    dialer._capacity = w.room
    w.carrier.calls["elsewhere"] = other.model_copy(update={"ended_at": w.clock.now()})
    await w.run(step_s=60, until=lambda: bool(w.store.completed), limit=timedelta(hours=2))
    assert sorted((d.n, d.attempt) for d in w.carrier.dialled) == [(1, 1), (2, 1)]


async def test_campaign_completed_is_published_though_the_first_try_fails() -> None:
    numbers = [f"+1555130{i:04d}" for i in range(1, 3)]
    w = _world({})
    w.store.add(_campaign(), _contacts(numbers))
    w.dialer("gw-a")
    failures = [StorageError("the events store is down")]
    publish = w.events.completed

    async def flaky(campaign: CampaignRef, **kwargs: object) -> None:
        if failures:
            raise failures.pop()
        await publish(campaign, **kwargs)  # type: ignore[arg-type]

    w.events.completed = flaky  # type: ignore[method-assign]
    w.clock.set(datetime(2026, 6, 1, 9, 0, tzinfo=NY))
    await w.run(step_s=60, until=lambda: bool(w.events.completed_events),
                limit=timedelta(hours=2))  # fmt: skip
    assert not failures and w.store.completed == ["camp1"]
    assert w.events.completed_events[0][0] == "completed"


async def test_contact_done_survives_a_failed_publish_and_a_reload() -> None:
    numbers = [f"+1555140{i:04d}" for i in range(1, 4)]
    w = _world({})
    w.store.add(_campaign(), _contacts(numbers))
    w.dialer("gw-a")
    fails = {"done": 1}
    publish = w.events.contact_done
    get_any = w.store.get_any

    async def flaky_done(campaign: CampaignRef, contact: ContactDone) -> None:
        if fails["done"]:
            fails["done"] -= 1
            fails["get"] = 1  # then the next round's read fails: the lead is reloaded
            raise StorageError("the events store is down")
        await publish(campaign, contact)

    async def flaky_get(campaign_id: str) -> CampaignRecord | None:
        if fails.get("get"):
            fails["get"] = 0
            raise StorageError("the database is down")
        return await get_any(campaign_id)

    w.events.contact_done = flaky_done  # type: ignore[method-assign]
    w.store.get_any = flaky_get  # type: ignore[method-assign]
    w.clock.set(datetime(2026, 6, 1, 9, 0, tzinfo=NY))
    await w.run(step_s=60, until=lambda: bool(w.store.completed), limit=timedelta(hours=2))
    assert fails == {"done": 0, "get": 0}
    assert sorted(d.n for d in w.events.done) == [1, 2, 3]


async def test_an_unexpected_error_in_a_round_does_not_stop_the_dialer() -> None:
    numbers = [f"+1555150{i:04d}" for i in range(1, 3)]
    w = _world({})
    w.store.add(_campaign(), _contacts(numbers))
    w.dialer("gw-a")
    get_any = w.store.get_any
    bugs = [RuntimeError("a bug")]

    async def buggy(campaign_id: str) -> CampaignRecord | None:
        if bugs:
            raise bugs.pop()
        return await get_any(campaign_id)

    w.store.get_any = buggy  # type: ignore[method-assign]
    w.clock.set(datetime(2026, 6, 1, 9, 0, tzinfo=NY))
    await w.run(step_s=60, until=lambda: bool(w.store.completed), limit=timedelta(hours=2))
    assert not bugs and len(w.events.done) == 2
