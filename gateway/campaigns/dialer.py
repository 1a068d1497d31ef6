"""The campaign dialer: a background task in every gateway that places the calls of the
active campaigns, one gateway (the leader) per campaign at a time, durably.

Leadership. A campaign's leader is the gateway of its highest term (`campaign_terms`,
claimed by a unique insert). A gateway that leads no term of an active campaign claims the
next one only when there is none yet, or when the holder's heartbeat is judged dead the way
the lost-call sweeper judges it (`BeatWatch`: unchanged for a whole lease on this process's
own clock). A leader that reads a higher term steps down at once. A gateway that may not
start calls (it drains, or its admission refuses) claims no term, and a leader in that
state gives the term of an active campaign up (marks it `released`, once none of its
placing tasks is still storing a call and its done contacts are published) so that a
gateway that can dial takes the campaign over at once, adopting its attempts in flight by
their claims. Alone, it takes the campaign back once it may start calls again.

Each tick (`campaign_tick_s`), for each campaign it leads, the leader:
1. re-reads the campaign: paused starts nothing; cancelled starts nothing, turns its
   pending contacts `cancelled`, and lets live calls finish normally; contacts of batches
   committed since are loaded (every committed contact it does not have: uploads may
   commit out of order, so never "after the last n");
2. polls its attempts in flight: each call by `_id`; a finished call gives the attempt's
   outcome (`outcomes.call_outcome`), and the contact is tried again after the backoff or
   is done (`outcomes.after_attempt`). A done contact's `campaign.contact_done` is
   published first and only then is the contact saved done, so a contact stored done has
   had its event; one whose event failed is still `calling` (or pending) in the store and
   a later round or leader settles it again (the event's key dedupes). An attempt this
   gateway claimed but stored no call for (refused by its own admission, drain, the
   organisation's room, configuration, or a database error before the store) is put back:
   its claim deleted, the contact pending after `refused_backoff_s`, the attempt not
   counted;
3. while the campaign is active and this gateway does not drain (nor refuses calls), starts
   attempts of the due contacts (their `next_at` passed, inside the window in their time
   zone) under `max_concurrency`, under the organisation's cap (`max_concurrent_calls` less
   `inbound_reserved_calls`, counted once per organisation per tick and decremented by each
   start), spaced `1 / calls_per_second` apart in real time (each start is scheduled at
   its slot within the coming two ticks). Before every attempt the do-not-call list is read
   (a listed number is done, outcome `do-not-call`, never dialled). An attempt is claimed
   (`campaign_attempts`, a unique insert: two gateways never dial the same attempt), the
   contact is saved `calling`, and at its slot the call is stored and dialled through the
   same path as POST /call/outbound, with the contact's metadata as the call's metadata.
   At the slot, before storing, the placing task checks again that the last round found
   the campaign active and that this gateway may start calls, and counts the
   organisation's room again (this process stores its calls one at a time, so its own
   starts never overshoot the cap; starts on other gateways, or POST /call/outbound, in
   the instant between that count and the store can: see `gateway.call.capacity`); if
   not, the attempt is put back as above;
4. once every contact is done or cancelled and nothing is in flight, publishes
   `campaign.completed` and then marks the campaign completed (if marking fails, the next
   round settles it again and the event's key dedupes); pending contacts whose window
   never opens again (e.g. `end_at` passed) count as settled: they stay pending, uncalled.

A campaign cancelled while no gateway led it (it was paused, say) is led once more by a
gateway that had listed it active (the one of its last term, or any if that one is dead),
to turn its pending contacts `cancelled` and publish `campaign.completed`.

A new leader loads the contacts once (`all_contacts`). A contact it finds `calling`, or
whose next attempt it finds already claimed, is an attempt of a previous leader: with a
call id it waits for that call's outcome (the lost-call sweeper finishes a call whose
gateway died); without one, it re-reads the claim each tick, and once it has seen no call
for `campaign_attempt_stale_s` judges the attempt not dialled: it counts as an attempt
with outcome `failed` (the call is stored before it is dialled and named in the claim
first, so no call was placed) and the retry policy decides. A call stored but still
`queued` with no carrier id after that bound (its gateway died between storing and
dialling) is finished as `failed` / `not-dialled` the same way. A dialled call neither
answered nor finished after longer than it can ring (`unanswered_s`: its carrier's status
callbacks went to a gateway that died) is finished as `failed` / `carrier-status-lost`
(an answered call holds a lease: the lost-call sweeper finishes it).

Contacts' state has one writer, the leader's tick; the placing tasks only name the call in
the attempt's claim. A database error (or any unexpected error, logged with its traceback)
in a campaign's round drops this leader's memory of it; the next tick loads it again from
the store (claims make that safe). An error outside a campaign's round is logged and the
next round goes on: the dialer task never ends but by cancellation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import heapq
import logging
import math
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from gateway.call.lease import BeatWatch
from gateway.campaigns.clock import Clock
from gateway.campaigns.outcomes import after_attempt, call_outcome
from gateway.campaigns.schedule import next_open
from gateway.errors import GatewayError
from gateway.metrics import GatewayMetrics
from storage import (
    AttemptRecord,
    CallNotFound,
    CallRecord,
    CallStatus,
    CampaignRecord,
    CampaignState,
    ContactRecord,
    ContactStatus,
    Outcome,
    StorageError,
)
from telephony.errors import TelephonyError
from webhooks.campaign_events import CampaignRef, ContactDone

log = logging.getLogger(__name__)

NOT_DIALLED = "not-dialled"  # end reason of a stored call its gateway never dialled
STATUS_LOST = "carrier-status-lost"  # a dialled call whose final status never came
_NEVER = math.inf


class CampaignStore(Protocol):
    """The dialer's side of `storage.CampaignRepository`."""

    async def active(self) -> list[CampaignRecord]: ...
    async def get_any(self, campaign_id: str) -> CampaignRecord | None: ...
    async def all_contacts(self, campaign_id: str) -> list[ContactRecord]: ...
    async def contacts_missing(
        self, campaign_id: str, have: Collection[int]
    ) -> list[ContactRecord]: ...
    async def save_contact(self, contact: ContactRecord) -> None: ...
    async def current_term(self, campaign_id: str) -> tuple[int, str | None]: ...
    async def claim_term(
        self, campaign_id: str, term: int, *, gateway_id: str, at: datetime
    ) -> bool: ...
    async def release_term(self, campaign_id: str, term: int) -> None: ...
    async def claim_attempt(
        self, campaign_id: str, n: int, attempt: int, *, gateway_id: str, at: datetime
    ) -> bool: ...
    async def set_attempt_call(
        self, campaign_id: str, n: int, attempt: int, call_id: str
    ) -> None: ...
    async def release_attempt(self, campaign_id: str, n: int, attempt: int) -> None: ...
    async def attempt(self, campaign_id: str, n: int, attempt: int) -> AttemptRecord | None: ...
    async def mark_completed(self, campaign_id: str, *, at: datetime) -> None: ...


class DoNotCallList(Protocol):
    async def blocked(self, org_id: str, number: str) -> bool: ...


class CallReader(Protocol):
    """What the dialer reads and writes of calls (`storage.CallRepository`)."""

    async def get_call(self, call_id: str, *, with_turns: bool = True) -> CallRecord: ...
    async def live_call_ids(self, org_id: str | None) -> frozenset[str]: ...
    async def finish_call(
        self, call_id: str, *, status: CallStatus, end_reason: str, ended_at: datetime
    ) -> CallRecord: ...


class Heartbeats(Protocol):
    async def beats(self, gateway_ids: Collection[str]) -> dict[str, datetime]: ...


class OutboundRoom(Protocol):
    async def outbound_room(self, org_id: str | None) -> int | None: ...


class CallPlacer(Protocol):
    """Stores and dials one attempt's call (`gateway.campaigns.placing`); `on_stored(call
    id)` is awaited once the call is stored, before it is dialled. Raises if the call could
    not be placed (a carrier refusal finishes the stored call as failed first)."""

    async def place(
        self,
        campaign: CampaignRecord,
        contact: ContactRecord,
        *,
        on_stored: Callable[[str], Awaitable[None]],
    ) -> None: ...


class CampaignEventSink(Protocol):
    """`webhooks.campaign_events.CampaignEvents`."""

    async def contact_done(self, campaign: CampaignRef, contact: ContactDone) -> object: ...
    async def completed(
        self,
        campaign: CampaignRef,
        *,
        state: str,
        total: int,
        by_status: Mapping[str, int],
        by_outcome: Mapping[str, int],
    ) -> object: ...


@dataclass(frozen=True, slots=True)
class DialerConfig:
    gateway_id: str
    lease_s: float  # a leader whose heartbeat is unchanged this long is dead
    tick_s: float = 0.5
    list_s: float = 2.0  # how often the active campaigns are listed
    attempt_stale_s: float = 60.0
    # An attempt's call still among its organisation's live calls is read again (to judge
    # it lost) only this often; one that left them is read in the round that sees it.
    recheck_s: float = 15.0
    # Longer than a dialled call can ring unanswered (the ring timeout, admission's hold
    # and `attempt_stale_s`): then its final status is judged lost.
    unanswered_s: float = 180.0
    # A contact whose call this gateway could not place (refused by its own admission,
    # drain or configuration, or a storage error before the call was stored) is put back,
    # its attempt not counted, and tried again after this long.
    refused_backoff_s: float = 5.0


@dataclass(slots=True)
class _Attempt:
    n: int
    attempt: int
    seen: float  # monotonic time this leader took it on
    call_id: str | None = None
    ours: bool = False  # placed by this process
    task: asyncio.Task[None] | None = None
    refused: bool = False  # placing ended with no call stored: put back, not counted
    dialling: bool = False  # the call is stored and named in the claim: dialling follows
    named: bool = False  # the call id is in the contact's call_ids (saved)
    read_at: float = -math.inf  # monotonic time its call was last read


@dataclass(slots=True)
class _Lead:
    """What the leader of one campaign keeps in memory."""

    campaign: CampaignRecord
    term: int
    contacts: dict[int, ContactRecord]
    due: list[tuple[float, int]] = field(default_factory=list)  # (ready at, n), pending only
    in_flight: dict[int, _Attempt] = field(default_factory=dict)
    next_dial: float = 0.0  # monotonic time of the next free dial slot
    # Done contacts held in memory until `campaign.contact_done` is published; only then
    # is the contact saved done (in the store it is still calling, or pending for a
    # do-not-call: a new leader settles it again and publishes; the event's key dedupes).
    unpublished: list[ContactRecord] = field(default_factory=list)
    stopped: bool = False  # set each round: the campaign is not active, or we may not start


def campaign_ref(campaign: CampaignRecord) -> CampaignRef:
    return CampaignRef(
        id=campaign.id,
        org_id=campaign.org_id,
        name=campaign.name,
        assistant_id=campaign.assistant_id,
        call_service=campaign.call_service,
    )


class CampaignDialer:
    """The dialer of one gateway process (see the module docstring): `run()` until
    cancelled, or `tick()` once (tests drive it with a `FakeClock`); `aclose()` at the end."""

    def __init__(
        self,
        *,
        config: DialerConfig,
        campaigns: CampaignStore,
        do_not_call: DoNotCallList,
        calls: CallReader,
        heartbeats: Heartbeats,
        capacity: OutboundRoom,
        placer: CallPlacer,
        events: CampaignEventSink,
        clock: Clock,
        may_start: Callable[[], bool] = lambda: True,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._config = config
        self._me = config.gateway_id
        self._store = campaigns
        self._dnc = do_not_call
        self._calls = calls
        self._heartbeats = heartbeats
        self._capacity = capacity
        self._placer = placer
        self._events = events
        self._clock = clock
        self._may_start = may_start  # False while the gateway drains or refuses calls
        self._watch = BeatWatch(lease_s=config.lease_s, clock=clock.monotonic)
        self._leads: dict[str, _Lead] = {}
        self._listed: dict[str, CampaignRecord] = {}
        self._settling: dict[str, CampaignRecord] = {}  # cancelled, to be settled here
        self._resting: set[str] = set()  # paused campaigns known here (not led)
        self._listed_at = -math.inf
        self._tasks: set[asyncio.Task[None]] = set()
        self._storing = asyncio.Lock()
        self._metrics = metrics or GatewayMetrics()

    def leads(self) -> list[str]:
        """The campaigns this process leads now."""
        return list(self._leads)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except StorageError as exc:
                log.warning("campaign dialer round failed: %s", exc)
            except Exception:  # a bug must not stop this gateway's dialing for good
                log.exception("campaign dialer round failed")
            await self._clock.sleep(self._config.tick_s)

    async def aclose(self) -> None:
        """Stop the placing tasks (a call being stored or dialled now is judged by the next
        leader, as a dead gateway's)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # -- a round

    async def tick(self) -> None:
        """One round over every campaign this process leads or might lead."""
        mono = self._clock.monotonic()
        if mono - self._listed_at >= self._config.list_s:
            listed = {c.id: c for c in await self._store.active()}
            known = (set(self._listed) | self._resting) - set(listed) - set(self._leads)
            self._resting -= set(listed)
            for gone in known - set(self._settling):
                # Paused: watched for a cancel. Cancelled while no one led it: led once
                # more, to settle.
                campaign = await self._store.get_any(gone)
                state = campaign.state if campaign is not None else None
                if state == CampaignState.PAUSED:
                    self._resting.add(gone)
                    continue
                self._resting.discard(gone)
                if campaign is not None and state == CampaignState.CANCELLED:
                    self._settling[gone] = campaign
            self._listed = listed | self._settling
            self._listed_at = mono
        await self._take_leads()
        rooms: dict[str, int | None] = {}  # organisation -> outbound calls it may start
        for campaign_id in list(self._leads):
            lead = self._leads[campaign_id]
            try:
                await self._lead_round(lead, rooms)
            except StorageError as exc:
                log.warning("campaign round failed: %s", exc, extra={"campaign_id": campaign_id})
                self._leads.pop(campaign_id, None)  # loaded again from the store
            except Exception:  # a bug in one campaign's round: the others go on
                log.exception("campaign round failed", extra={"campaign_id": campaign_id})
                self._leads.pop(campaign_id, None)
        self._metrics.campaign_rounds_total += 1

    async def _take_leads(self) -> None:
        """Lead each listed campaign whose leader is missing or dead (a term claimed)."""
        if not self._may_start():  # draining or refusing: leave the campaigns to others
            return
        candidates = [c for c in self._listed if c not in self._leads and c not in self._resting]
        terms: dict[str, tuple[int, str | None]] = {}
        for cid in candidates:
            terms[cid] = await self._store.current_term(cid)
        holders = {h for t, h in terms.values() if h is not None and h != self._me}
        beats = await self._heartbeats.beats(holders) if holders else {}
        dead = self._watch.expired(holders, beats)
        for cid, (term, holder) in terms.items():
            if holder == self._me:  # ours already (a campaign resumed)
                await self._load(self._listed[cid], term)
                continue
            if term > 0 and holder is not None and holder not in dead:
                self._settling.pop(cid, None)  # its live leader settles it
                continue
            won = await self._store.claim_term(
                cid, term + 1, gateway_id=self._me, at=self._clock.now()
            )
            if won:
                log.info(
                    "campaign leadership taken",
                    extra={"campaign_id": cid, "term": term + 1, "from_gateway": holder},
                )
                await self._load(self._listed[cid], term + 1)

    async def _load(self, campaign: CampaignRecord, term: int) -> None:
        contacts = await self._store.all_contacts(campaign.id)
        lead = _Lead(campaign=campaign, term=term, contacts={}, next_dial=self._clock.monotonic())
        self._add_contacts(lead, contacts)
        self._leads[campaign.id] = lead

    def _add_contacts(self, lead: _Lead, contacts: list[ContactRecord]) -> None:
        mono = self._clock.monotonic()
        for contact in contacts:
            lead.contacts[contact.n] = contact
            if contact.status == ContactStatus.PENDING:
                ready = contact.next_at.timestamp() if contact.next_at is not None else 0.0
                heapq.heappush(lead.due, (ready, contact.n))
            elif contact.status == ContactStatus.CALLING:
                # A previous leader's attempt: its call, or its claim, says how it went.
                lead.in_flight[contact.n] = _Attempt(
                    n=contact.n, attempt=contact.attempts, seen=mono
                )

    async def _lead_round(self, lead: _Lead, rooms: dict[str, int | None]) -> None:
        cid = lead.campaign.id
        term, _ = await self._store.current_term(cid)
        if term > lead.term:
            log.info("campaign leadership lost", extra={"campaign_id": cid, "term": term})
            del self._leads[cid]
            return
        campaign = await self._store.get_any(cid)
        if campaign is None:
            del self._leads[cid]
            return
        lead.campaign = campaign
        may_start = self._may_start()
        lead.stopped = campaign.state != CampaignState.ACTIVE or not may_start
        if campaign.contact_count > len(lead.contacts):
            self._add_contacts(lead, await self._store.contacts_missing(cid, lead.contacts))
        try:
            await self._poll(lead)
            if campaign.state == CampaignState.CANCELLED:
                await self._cancel_pending(lead)
            elif campaign.state == CampaignState.ACTIVE and may_start:
                await self._start_attempts(lead, rooms)
        finally:
            # One at a time: events racing for their organisation's next place cost retries.
            await self._publish_owed(lead)
        if not lead.in_flight and await self._settled(lead):
            del self._leads[cid]
        elif (
            not may_start
            and campaign.state == CampaignState.ACTIVE
            and not lead.unpublished
            and not self._placing(lead)
            and not any(a.refused for a in lead.in_flight.values())
        ):
            # Draining or refusing calls: step down so that a gateway that may start calls
            # leads (its attempts in flight are adopted there, by their claims).
            await self._store.release_term(cid, lead.term)
            log.info("campaign leadership released", extra={"campaign_id": cid})
            del self._leads[cid]
        elif campaign.state not in (CampaignState.ACTIVE, CampaignState.CANCELLED) and (
            not lead.in_flight and not lead.unpublished
        ):
            # Paused (or completed): not led until it is listed active again (then from a
            # load), watched meanwhile for a cancel.
            del self._leads[cid]
            self._resting.add(cid)

    @staticmethod
    def _placing(lead: _Lead) -> bool:
        """Whether a placing task of this process is still storing or dialling a call."""
        return any(a.task is not None and not a.task.done() for a in lead.in_flight.values())

    # -- attempts in flight

    async def _poll(self, lead: _Lead) -> None:
        """Read each attempt in flight (a window of them at once; each touches only its own
        contact) and settle those whose outcome is known."""
        mono = self._clock.monotonic()
        placed = [
            att
            for att in lead.in_flight.values()
            if att.task is None or att.task.done()  # else being stored or dialled now
        ]
        live: frozenset[str] = frozenset()
        if any(att.call_id is not None for att in placed):
            # One query for all: a call among the organisation's live calls is not over.
            live = await self._calls.live_call_ids(lead.campaign.org_id)
        due = [
            att
            for att in placed
            if att.call_id is None
            or att.call_id not in live
            or mono - att.read_at >= self._config.recheck_s
        ]
        await _windowed([functools.partial(self._poll_one, lead, att, mono) for att in due])

    async def _poll_one(self, lead: _Lead, att: _Attempt, mono: float) -> None:
        cid = lead.campaign.id
        if att.refused:
            await self._put_back(lead, att)
            return
        if att.call_id is None and not att.ours:
            claim = await self._store.attempt(cid, att.n, att.attempt)
            if claim is not None and claim.call_id is not None:
                att.call_id = claim.call_id
                att.dialling = True
        if att.call_id is None:
            if mono - att.seen >= self._config.attempt_stale_s:
                log.warning(
                    "attempt judged not dialled",
                    extra={"campaign_id": cid, "n": att.n, "attempt": att.attempt},
                )
                await self._settle(lead, att, Outcome.FAILED)
            return
        if not att.named:
            contact = lead.contacts[att.n]
            if att.call_id not in contact.call_ids:
                contact = dataclasses.replace(
                    contact, call_ids=(*contact.call_ids, att.call_id), updated_at=self._clock.now()
                )
                await self._store.save_contact(contact)
                lead.contacts[att.n] = contact
            att.named = True
        att.read_at = mono
        try:
            call = await self._calls.get_call(att.call_id, with_turns=False)
        except CallNotFound:
            await self._settle(lead, att, Outcome.FAILED)
            return
        outcome = call_outcome(call)
        if outcome is None and (reason := self._judged_lost(call, att, mono)) is not None:
            call = await self._calls.finish_call(
                call.id, status=CallStatus.FAILED, end_reason=reason, ended_at=datetime.now(UTC)
            )
            outcome = call_outcome(call)
        if outcome is not None:
            await self._settle(lead, att, outcome)

    def _judged_lost(self, call: CallRecord, att: _Attempt, mono: float) -> str | None:
        """Why an unfinished attempt's call is over though nothing will finish it (None: it
        is not): stored and never dialled (here: the dial never began; by a gateway that
        died: still queued with no carrier id after `attempt_stale_s`), or dialled but
        neither answered here nor told final by the carrier for longer than it could ring
        (`unanswered_s`: its status callbacks went to a gateway that died)."""
        if call.status == CallStatus.QUEUED and not call.call_sid:
            if att.ours and not att.dialling:
                return NOT_DIALLED
            if not att.ours and mono - att.seen >= self._config.attempt_stale_s:
                return NOT_DIALLED
            return None
        unanswered = call.status in (CallStatus.QUEUED, CallStatus.RINGING)
        if unanswered and call.served_by is None and mono - att.seen >= self._config.unanswered_s:
            return STATUS_LOST
        return None

    async def _put_back(self, lead: _Lead, att: _Attempt) -> None:
        """An attempt this gateway claimed but stored no call for (refused here): its claim
        is given back and the contact is pending again, the attempt not counted. (A storage
        error between the two leaves the contact `calling` with no claim: a later leader
        judges it not dialled, as a dead gateway's.)"""
        await self._store.release_attempt(lead.campaign.id, att.n, att.attempt)
        now = self._clock.now()
        next_at = now + timedelta(seconds=self._config.refused_backoff_s)
        contact = dataclasses.replace(
            lead.contacts[att.n],
            status=ContactStatus.PENDING,
            attempts=att.attempt - 1,
            next_at=next_at,
            updated_at=now,
        )
        await self._store.save_contact(contact)
        lead.contacts[att.n] = contact
        del lead.in_flight[att.n]
        heapq.heappush(lead.due, (next_at.timestamp(), att.n))
        log.info(
            "campaign attempt put back: not placed here",
            extra={"campaign_id": lead.campaign.id, "n": att.n, "attempt": att.attempt},
        )

    async def _settle(self, lead: _Lead, att: _Attempt, outcome: Outcome) -> None:
        now = self._clock.now()
        contact = after_attempt(lead.contacts[att.n], outcome, lead.campaign.retry, now=now)
        if contact.status == ContactStatus.PENDING and lead.campaign.state == (
            CampaignState.CANCELLED
        ):
            contact = dataclasses.replace(contact, status=ContactStatus.CANCELLED, next_at=None)
        if contact.status != ContactStatus.DONE:  # a done contact is saved once published
            await self._store.save_contact(contact)
        lead.contacts[att.n] = contact
        del lead.in_flight[att.n]
        log.info(
            "campaign attempt ended",
            extra={
                "campaign_id": lead.campaign.id,
                "call_id": att.call_id,
                "n": att.n,
                "attempt": att.attempt,
                "outcome": outcome.value,
                "status": contact.status.value,
            },
        )
        if contact.status == ContactStatus.PENDING:
            assert contact.next_at is not None
            heapq.heappush(lead.due, (contact.next_at.timestamp(), contact.n))
        elif contact.status == ContactStatus.DONE:
            lead.unpublished.append(contact)  # published after the round's window of steps

    async def _publish_done(self, lead: _Lead, contact: ContactRecord) -> None:
        """Publish `campaign.contact_done`, then save the contact done (so a contact stored
        done has had its event; one not yet is settled again by a later leader)."""
        assert contact.outcome is not None
        try:
            await self._events.contact_done(
                campaign_ref(lead.campaign),
                ContactDone(
                    n=contact.n,
                    to_number=contact.to_number,
                    metadata=contact.metadata,
                    outcome=contact.outcome.value,
                    attempts=contact.attempts,
                    call_ids=contact.call_ids,
                ),
            )
        except StorageError as exc:  # published next round (once per key)
            log.warning(
                "campaign.contact_done not published: %s",
                exc,
                extra={"campaign_id": lead.campaign.id},
            )
            lead.unpublished.append(contact)
            return
        await self._store.save_contact(contact)

    async def _publish_owed(self, lead: _Lead) -> None:
        owed, lead.unpublished = lead.unpublished, []
        for i, contact in enumerate(owed):
            try:
                await self._publish_done(lead, contact)
            except BaseException:
                lead.unpublished += owed[i + 1 :]
                raise

    async def _cancel_pending(self, lead: _Lead) -> None:
        now = self._clock.now()
        for n, contact in list(lead.contacts.items()):
            if contact.status == ContactStatus.PENDING:
                contact = dataclasses.replace(
                    contact, status=ContactStatus.CANCELLED, next_at=None, updated_at=now
                )
                await self._store.save_contact(contact)
                lead.contacts[n] = contact
        lead.due.clear()

    # -- new attempts

    async def _start_attempts(self, lead: _Lead, rooms: dict[str, int | None]) -> None:
        """Choose the due contacts this round may start (in order; their dial slots taken,
        their places held in flight), then begin them a window at a time."""
        campaign = lead.campaign
        now = self._clock.now()
        now_ts = now.timestamp()
        mono = self._clock.monotonic()
        spacing = 1.0 / campaign.calls_per_second
        # Slots up to two rounds ahead: a round slower than a tick loses no slot.
        horizon = mono + 2 * self._config.tick_s
        opens: dict[str, datetime | None] = {}  # time zone -> when its window opens
        org = campaign.org_id
        chosen: list[tuple[ContactRecord, float]] = []
        while lead.due and lead.due[0][0] <= now_ts:
            if len(lead.in_flight) >= campaign.max_concurrency:
                break
            slot = max(lead.next_dial, mono)
            if slot >= horizon:
                break
            if org not in rooms:
                free = await self._capacity.outbound_room(org)
                # Starts of this process whose call is not stored yet are not counted there.
                rooms[org] = None if free is None else free - self._unstored(org)
            room = rooms[org]
            if room is not None and room <= 0:
                break
            ready, n = heapq.heappop(lead.due)
            contact = lead.contacts[n]
            if contact.status != ContactStatus.PENDING:
                continue  # a stale entry
            if contact.next_at is not None and contact.next_at.timestamp() > ready:
                heapq.heappush(lead.due, (contact.next_at.timestamp(), n))
                continue
            zone = contact.time_zone or campaign.schedule.time_zone
            if zone not in opens:
                opens[zone] = next_open(campaign.schedule, now, zone)
            opening = opens[zone]
            if opening is None or opening > now:
                heapq.heappush(lead.due, (opening.timestamp() if opening else _NEVER, n))
                continue
            # Its place, held while it begins (concurrency, the organisation's room).
            lead.in_flight[n] = _Attempt(n=n, attempt=contact.attempts + 1, seen=mono, ours=True)
            lead.next_dial = slot + spacing
            chosen.append((contact, slot - mono))
            if room is not None:
                rooms[org] = room - 1
        await _windowed(
            [
                functools.partial(self._begin, lead, contact, now=now, delay=delay)
                for contact, delay in chosen
            ]
        )

    def _unstored(self, org_id: str) -> int:
        return sum(
            1
            for lead in self._leads.values()
            if lead.campaign.org_id == org_id
            for att in lead.in_flight.values()
            if att.ours and att.call_id is None and not att.refused
        )

    async def _begin(
        self, lead: _Lead, contact: ContactRecord, *, now: datetime, delay: float
    ) -> None:
        """The do-not-call list, then the attempt's claim, the contact saved `calling`, and
        its call placed at its slot (`delay` from now) by a task of its own."""
        campaign, n = lead.campaign, contact.n
        att = lead.in_flight[n]
        try:
            blocked = await self._dnc.blocked(campaign.org_id, contact.to_number)
            if blocked:
                del lead.in_flight[n]
                contact = dataclasses.replace(
                    contact,
                    status=ContactStatus.DONE,
                    outcome=Outcome.DO_NOT_CALL,
                    next_at=None,
                    updated_at=now,
                )
                lead.contacts[n] = contact
                lead.unpublished.append(contact)  # saved once published
                return
            claimed = await self._store.claim_attempt(
                campaign.id, n, att.attempt, gateway_id=self._me, at=now
            )
        except BaseException:
            if lead.in_flight.get(n) is att and lead.contacts[n].status == ContactStatus.PENDING:
                del lead.in_flight[n]  # nothing claimed: still due
                heapq.heappush(lead.due, (0.0, n))
            raise
        att.ours = claimed
        contact = dataclasses.replace(
            contact,
            status=ContactStatus.CALLING,
            attempts=att.attempt,
            next_at=None,
            updated_at=now,
        )
        lead.contacts[n] = contact
        await self._store.save_contact(contact)
        if not claimed:  # a previous leader's claim: judged by its call (see `_poll`)
            log.warning(
                "attempt claimed before: adopted",
                extra={"campaign_id": campaign.id, "n": n, "attempt": att.attempt},
            )
            return
        self._metrics.campaign_attempts_total += 1
        task = asyncio.create_task(
            self._place(lead, contact, att, delay=delay),
            name=f"campaign-dial-{campaign.id}-{n}",
        )
        att.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _place(
        self, lead: _Lead, contact: ContactRecord, att: _Attempt, *, delay: float
    ) -> None:
        """Store and dial one attempt's call at its slot (`delay` from now), unless by then
        the campaign was paused or cancelled or this gateway may not start calls (put back,
        the attempt not counted, like any failure before the call is stored)."""
        campaign = lead.campaign
        if delay > 0:
            await self._clock.sleep(delay)
        if lead.stopped or not self._may_start():
            att.refused = True
            return
        # This process stores its calls one at a time (dials stay concurrent): stores at
        # once race for their organisation's next place in the calls index and retry.
        await self._storing.acquire()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._storing.release()

        async def stored(call_id: str) -> None:
            release()
            att.call_id = call_id
            await self._store.set_attempt_call(campaign.id, contact.n, att.attempt, call_id)
            att.dialling = True

        try:
            # The organisation's room counted again right before this store (the round's
            # count may be spent by other gateways or POST /call/outbound since): stores
            # of this process are serial, so it overshoots only with starts elsewhere.
            room = await self._capacity.outbound_room(campaign.org_id)
            if room is not None and room <= 0:
                att.refused = True
                return
            await self._placer.place(campaign, contact, on_stored=stored)
        except (GatewayError, TelephonyError, StorageError) as exc:  # refused: its outcome
            if att.call_id is None:
                att.refused = True  # nothing stored: put back, not counted
            log.warning(
                "campaign call not placed: %s",
                exc,
                extra={"campaign_id": campaign.id, "call_id": att.call_id, "n": contact.n},
            )
        except Exception:  # the attempt's task ends here: its outcome says how
            if att.call_id is None:
                att.refused = True
            log.exception(
                "campaign call not placed",
                extra={"campaign_id": campaign.id, "call_id": att.call_id, "n": contact.n},
            )
        finally:
            release()

    # -- the end

    async def _settled(self, lead: _Lead) -> bool:
        """If every contact is settled (done, cancelled, or pending with no window left),
        complete the campaign: mark it, publish `campaign.completed`; True then."""
        campaign = lead.campaign
        if campaign.state not in (CampaignState.ACTIVE, CampaignState.CANCELLED):
            return False
        if campaign.contact_count == 0 or len(lead.contacts) < campaign.contact_count:
            return False
        if lead.due and lead.due[0][0] != _NEVER:  # every pending contact has an entry
            return False
        if any(c.status == ContactStatus.CALLING for c in lead.contacts.values()):
            return False
        if lead.unpublished:
            return False
        now = self._clock.now()
        active = campaign.state == CampaignState.ACTIVE
        state = (CampaignState.COMPLETED if active else CampaignState.CANCELLED).value
        by_status: dict[str, int] = dict.fromkeys((s.value for s in ContactStatus), 0)
        by_outcome: dict[str, int] = {}
        for c in lead.contacts.values():
            by_status[c.status.value] += 1
            if c.outcome is not None:
                by_outcome[c.outcome.value] = by_outcome.get(c.outcome.value, 0) + 1
        await self._events.completed(
            campaign_ref(campaign),
            state=state,
            total=len(lead.contacts),
            by_status=by_status,
            by_outcome=by_outcome,
        )
        # Published first: if marking fails, the campaign is still active and settled again
        # by the next round or leader, publishing again (the event's key dedupes).
        if active:
            await self._store.mark_completed(campaign.id, at=now)
        log.info(
            "campaign completed",
            extra={"campaign_id": campaign.id, "state": state, "by_outcome": by_outcome},
        )
        self._listed.pop(campaign.id, None)
        self._settling.pop(campaign.id, None)
        return True


async def _windowed(steps: list[Callable[[], Awaitable[None]]], window: int = 32) -> None:
    """Run `steps` concurrently, `window` at a time; the first error is raised once all of
    a window ended."""
    for start in range(0, len(steps), window):
        results = await asyncio.gather(
            *(step() for step in steps[start : start + window]), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
