"""The narrowed subscription of a room to the LiveKit SDK's events: its own room events and
the answers its listener forwards pass; other rooms' events and every capture do not."""

from __future__ import annotations

from livekit import rtc
from livekit.rtc._proto import ffi_pb2 as proto_ffi

from gateway.livekit.fanout import narrow_room_events, room_event_filter


def _room_event(handle: int) -> proto_ffi.FfiEvent:
    event = proto_ffi.FfiEvent()
    event.room_event.room_handle = handle
    event.room_event.eos.SetInParent()
    return event


def test_a_room_takes_its_own_events_and_the_answers_its_listener_forwards() -> None:
    accept = room_event_filter(7)
    assert accept(_room_event(7))
    assert not accept(_room_event(8))  # another room's
    captured = proto_ffi.FfiEvent()
    captured.capture_audio_frame.async_id = 1  # any room's capture: 50 a second per room
    assert not accept(captured)
    frame = proto_ffi.FfiEvent()
    frame.audio_stream_event.stream_handle = 3
    assert not accept(frame)
    for kind in ("publish_track", "unpublish_track", "rpc_method_invocation"):
        answer = proto_ffi.FfiEvent()
        getattr(answer, kind).SetInParent()
        assert accept(answer), kind


async def test_a_room_not_connected_is_left_as_it_is() -> None:
    assert narrow_room_events(rtc.Room()) is False
