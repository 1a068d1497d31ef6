"""Placing one outbound call, the one code path of `POST /call/outbound` and the campaign
dialer: the organisation's cap, the assistant, the caller id (`from_number`, or the
outbound trunk's first number: the organisation's own, 422 otherwise), the call stored
(`queued`, its persona filled from the metadata), then dialled by its carrier.

A carrier refusal (`carrier-refused`) or an unreachable carrier (`carrier-unreachable`)
finishes the stored call as `failed` (so nothing dangles, and its report is owed) and
raises the `CarrierError`. An admitted Twilio call holds its place in this process while
it rings (its final status, or its stream starting here, frees it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from gateway.api.numbers import require_registered
from gateway.call.records import CallInputLimits, open_call
from gateway.errors import NotConfigured, RequestInvalid
from gateway.livekit.outbound import dial_livekit
from gateway.livekit.room import room_of
from gateway.logs import call_id_var
from gateway.services import Services
from gateway.twilio.outbound import dial_twilio
from storage import CallRecord, CallStatus, Database, Direction, SipTrunkRecord
from telephony.errors import CarrierError, CarrierUnavailable

CallService = Literal["twilio", "livekit"]


@dataclass(frozen=True, slots=True)
class OutboundDial:
    """One outbound call to place, for the organisation `org_id`."""

    org_id: str
    assistant_id: str
    to_number: str
    call_service: CallService = "twilio"
    from_number: str | None = None
    trunk_id: str | None = None  # LiveKit: the outbound trunk (None: the only one)
    metadata: Mapping[str, str] = field(default_factory=dict)
    machine_detection: bool = False  # Twilio: answering-machine detection


@dataclass(frozen=True, slots=True)
class PlacedCall:
    call_id: str
    call_sid: str
    call_service: CallService
    room_name: str | None


async def outbound_trunk(db: Database, org_id: str, trunk_id: str | None) -> SipTrunkRecord:
    """The outbound trunk `trunk_id`, or the organisation's only one (422 otherwise)."""
    if trunk_id is not None:
        return await db.sip.trunk(org_id, trunk_id, "outbound")
    trunks = await db.sip.trunks(org_id, "outbound")
    if len(trunks) != 1:
        raise RequestInvalid(
            "trunk_id is required: the organisation has "
            f"{len(trunks)} outbound trunks" + ("" if trunks else " (create one first)")
        )
    return trunks[0]


async def place_call(
    services: Services,
    dial: OutboundDial,
    *,
    hold_s: float,
    check_capacity: bool = True,
    on_stored: Callable[[CallRecord], Awaitable[None]] | None = None,
) -> PlacedCall:
    """Store the call and dial it (see the module docstring). A gateway that drains refuses
    (`GatewayDraining`); with `check_capacity`, an organisation at its cap refuses
    (`OrganizationAtCapacity`: the dialer checks before it claims an attempt, and passes
    False). `on_stored(call)` is awaited once the call is stored, before it is dialled."""
    services.draining.refuse_new_call()  # 503: a balancer retries it on another gateway
    db = services.database
    if check_capacity:
        await services.capacity.require_outbound_room(dial.org_id)
    assistant = await db.assistants.get(dial.org_id, dial.assistant_id)
    trunk = None
    if dial.call_service == "twilio":
        if services.twilio.rest is None:
            raise NotConfigured(
                "Twilio REST is not configured (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)"
            )
        if dial.from_number is None:
            raise RequestInvalid("from_number is required for call_service=twilio")
        from_number = dial.from_number
    else:
        if services.rooms is None:
            raise NotConfigured("LiveKit is not configured (LIVEKIT_URL, _API_KEY, _API_SECRET)")
        trunk = await outbound_trunk(db, dial.org_id, dial.trunk_id)
        from_number = dial.from_number or trunk.numbers[0]
    await require_registered(db, dial.org_id, from_number, field="from_number")
    call = await open_call(
        db.calls,
        db.accounts,
        assistant=assistant,
        transport=dial.call_service,
        direction=Direction.OUTBOUND,
        from_number=from_number,
        to_number=dial.to_number,
        metadata=dial.metadata,
        status=CallStatus.QUEUED,
        limits=CallInputLimits.of(services.settings),
    )
    call_id_var.set(call.id)
    if on_stored is not None:
        await on_stored(call)
    if trunk is None:
        try:
            sid = await dial_twilio(
                services,
                call,
                machine_detection=dial.machine_detection,
                voicemail=assistant.config.voicemail,
            )
        except CarrierError as exc:
            unreachable = isinstance(exc, CarrierUnavailable)
            await db.calls.finish_call(
                call.id,
                status=CallStatus.FAILED,
                end_reason="carrier-unreachable" if unreachable else "carrier-refused",
                ended_at=datetime.now(UTC),
            )
            services.outbox.poke()  # its report goes out now, not at the next poll
            raise
        services.admission.admit_held(call.id, hold_s=hold_s)  # until its stream starts
        room_name = None
    else:
        sid = await dial_livekit(services, call, trunk)
        room_name = room_of(call)
    await db.calls.set_call_sid(call.id, sid)
    return PlacedCall(
        call_id=call.id, call_sid=sid, call_service=dial.call_service, room_name=room_name
    )
