"""Keep one room's SDK listener off the other rooms' per-frame events.

The LiveKit Python SDK (livekit 1.2) hands every event of its native core to every
subscriber whose filter accepts it, and a connected `rtc.Room` accepts everything but
audio and video stream frames: each `AudioSource.capture_frame` of every room in the
process (50 a second per room with 20 ms frames) wakes every room's listener task, which
queues it, waits for it to be taken and drops it. With N rooms that is N x N x 50 loop
wake-ups a second (12 800 at 16 rooms), all on the event loop that paces the calls.

`narrow_room_events(room)` narrows a connected room's subscription to what its listener
acts on or forwards: its own room events, RPC invocations, and the publish / unpublish
answers its local participant waits for. It uses the SDK's private fields; if they are
not there (another SDK version) the room is left as it was and that is logged once.

`keep_native_logs_native()` stops the SDK forwarding its native core's logs: it asks for
every log record down to trace level and hands each one (libwebrtc's verbose lines made
debug records among them) to Python as an event of its own, on a native thread that takes
the GIL for it, to be dropped there below INFO. Those were 84-93 % of the native events of
a gateway with 4 rooms per process (about 1 000 a second while calls joined), and they
held up the rooms' WebRTC work. The native core is initialised again with the SDK's own
callback and log capture off (its C entry point replaces the configuration); its logger
then writes to stderr, as plain text, what RUST_LOG enables when the core first starts
(errors when unset): its warnings (a connect retried, a publication timed out) are no
longer in the gateway's logs, nor is LIVEKIT_RTC_DEBUG's output. LIVEKIT_NATIVE_LOGS=true
forwards them all as before.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

from livekit import rtc
from livekit.rtc import _ffi_client
from livekit.rtc._ffi_client import FfiClient

log = logging.getLogger(__name__)

# The events a room's listener uses besides its own `room_event`s (`Room._listen_task`, and
# `LocalParticipant.publish_track` / `unpublish_track`, which wait on the room's queue).
_ROOM_KINDS = frozenset({"rpc_method_invocation", "publish_track", "unpublish_track"})
_warned = False
_native_logs_tried = False
_native_logs_kept = False


def room_event_filter(room_handle: int) -> Callable[[Any], bool]:
    """Accept what the room with native handle `room_handle` listens for."""

    def accept(event: Any) -> bool:
        which = event.WhichOneof("message")
        if which == "room_event":
            return bool(event.room_event.room_handle == room_handle)
        return which in _ROOM_KINDS

    return accept


def narrow_room_events(room: rtc.Room) -> bool:
    """Narrow the connected `room`'s SDK subscription (see the module's docstring); whether
    it was narrowed."""
    global _warned
    try:
        queue = room._ffi_queue  # the SDK's own fields: absent in another version
        ffi_handle = room._ffi_handle
        handle = int(ffi_handle.handle) if ffi_handle is not None else None
        fanout = FfiClient.instance.queue
        subscribers = fanout._subscribers
        lock = fanout._lock
    except (AttributeError, TypeError):
        handle = None
    if handle is None:
        if not _warned:
            _warned = True
            log.warning("this LiveKit SDK's event fan-out is not the one known: left as it is")
        return False
    accept = room_event_filter(handle)
    with lock:
        for i, (subscriber, loop, _) in enumerate(subscribers):
            if subscriber is queue:
                subscribers[i] = (subscriber, loop, accept)
                return True
    return False


def keep_native_logs_native() -> bool:
    """Once per process: the SDK's native logs stay native (see the module's docstring);
    whether they do. Uses the SDK's private fields and C entry point; with another SDK
    version that does not fit, the logs are forwarded as before, logged once."""
    global _native_logs_tried, _native_logs_kept
    if _native_logs_tried:
        return _native_logs_kept
    _native_logs_tried = True
    try:
        lib = FfiClient.instance._ffi_lib
        callback = _ffi_client.ffi_event_callback
        version = rtc.__version__.encode("ascii")
        lib.livekit_ffi_initialize(callback, False, b"python", version)
    except (AttributeError, TypeError, ctypes.ArgumentError) as exc:  # not this SDK's shape
        log.warning("the LiveKit SDK's native logs are forwarded as before: %r", exc)
        return False
    _native_logs_kept = True
    return True
