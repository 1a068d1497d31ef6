"""Placing a LiveKit call for a stored outbound call: the gateway creates the call's room
and joins it before dialling, so the agent is there when the callee answers; the callee is
dialled with `CreateSIPParticipant` through an outbound trunk."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

from gateway.livekit.room import ATTR_CALL, room_of
from gateway.services import Services
from storage import CallRecord, CallStatus, SipTrunkRecord
from telephony.errors import CarrierError, LiveKitError


async def dial_livekit(services: Services, call: CallRecord, trunk: SipTrunkRecord) -> str:
    """Join the call's room and dial the callee; returns the SIP call id (`CarrierError` if
    LiveKit refuses: the room is then closed)."""
    livekit, rooms = services.livekit, services.rooms
    assert livekit is not None and rooms is not None
    room_name = room_of(call)
    room = None
    try:
        await livekit.create_room(room_name)
        room = rooms.serve(room_name, call)  # the agent is in the room before the phone rings
        dialled = await livekit.dial(
            trunk_id=trunk.livekit_id,
            to_number=call.to_number,
            from_number=call.from_number,
            room_name=room_name,
            identity=f"sip-{call.id}",
            attributes={ATTR_CALL: call.id},
            ring_timeout_s=services.settings.outbound_ring_timeout_s,
        )
    except LiveKitError as exc:
        if room is not None:  # its lifecycle finishes the call and closes the room
            room.lifecycle.request_end("sip-dial-failed", CallStatus.FAILED)
            await room.lifecycle.finished()
        else:
            await services.database.calls.finish_call(
                call.id,
                status=CallStatus.FAILED,
                end_reason="sip-dial-failed",
                ended_at=datetime.now(UTC),
            )
            with contextlib.suppress(LiveKitError):
                await livekit.delete_room(room_name)
        raise CarrierError(str(exc), carrier="livekit", status=exc.status) from exc
    return dialled.sip_call_id or dialled.participant_id
