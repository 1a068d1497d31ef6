"""The agent's connection to one LiveKit room: joined, narrowed to its own events and the
agent's track published, possibly before the call it serves is stored.

An inbound SIP call's connection is opened as soon as its dispatch is claimed, so the
WebRTC join (signalling, two peer connections, the publish) runs while the call's caller
lookup and database writes do: under a burst of calls each of those took hundreds of
milliseconds in turn. Room events that come before the call takes the connection
(`attach`) are kept and handed to it then, in order, so a caller track subscribed or a
participant gone during the join is not missed.

The agent joins with one peer connection per direction (LiveKit's long-standing mode)
unless LIVEKIT_SINGLE_PEER_CONNECTION is set: with one for both, every subscription is a
renegotiation that the agent's own publish can hold up, and the greeting came later.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any, Protocol

from livekit import rtc
from livekit.rtc.room import EventTypes

from gateway.livekit.fanout import keep_native_logs_native, narrow_room_events
from gateway.livekit.transport import RATE
from gateway.settings import Settings
from telephony.errors import LiveKitError
from telephony.livekit.admin import LiveKitAdmin

log = logging.getLogger(__name__)

# The longest a closing connection waits for its join under way to finish (so it can leave).
CLOSE_JOIN_WAIT_S = 20.0

# The SDK's room events a call acts on, each handed to the `RoomEvents` method `on_<name>`.
_EVENTS: tuple[EventTypes, ...] = (
    "track_subscribed",
    "participant_connected",
    "participant_disconnected",
    "disconnected",
    "local_track_subscribed",
    "sip_dtmf_received",
)


class RoomEvents(Protocol):
    """What takes a connection's room events (`LiveKitRoom`)."""

    def on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None: ...

    def on_participant_connected(self, participant: rtc.RemoteParticipant) -> None: ...

    def on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None: ...

    def on_disconnected(self, reason: object) -> None: ...

    def on_local_track_subscribed(self, *args: object) -> None: ...

    def on_sip_dtmf_received(self, dtmf: rtc.SipDTMF) -> None: ...


class RoomConnection:
    """The agent in `room_name` as `identity`. `start()` begins the join, `opened()` waits
    for it (raising what it raised); `steps` holds each step's ms since the connection was
    made. `dtmf`: whether the room's SIP keypad events are taken (a browser has none)."""

    def __init__(
        self,
        livekit: LiveKitAdmin,
        settings: Settings,
        room_name: str,
        identity: str,
        *,
        dtmf: bool = True,
    ) -> None:
        self._livekit = livekit
        self._settings = settings
        self.room_name = room_name
        self.identity = identity
        self.room = rtc.Room()
        self.source: rtc.AudioSource | None = None
        if not settings.livekit_native_logs:
            keep_native_logs_native()  # once per process (fanout.py)
        self._loop = asyncio.get_running_loop()
        self._started_at = self._loop.time()
        self.steps: dict[str, int] = {}
        self._target: RoomEvents | None = None
        self._held: list[tuple[str, tuple[Any, ...]]] = []
        self._task: asyncio.Task[None] | None = None
        for name in _EVENTS:
            if name != "sip_dtmf_received" or dtmf:
                self.room.on(name, functools.partial(self._event, name))

    def step(self, name: str) -> None:
        """Note that `name` is done now (ms since the connection was made)."""
        self.steps[name] = round(1000 * (self._loop.time() - self._started_at))

    def _event(self, name: str, *args: Any) -> None:
        if self._target is None:
            self._held.append((name, args))
            return
        getattr(self._target, f"on_{name}")(*args)

    def attach(self, target: RoomEvents) -> None:
        """Hand the room's events to `target` from now on, the ones kept so far first."""
        self._target = target
        held, self._held = self._held, []
        for name, args in held:
            getattr(target, f"on_{name}")(*args)

    def start(self) -> None:
        """Begin joining (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._open(), name=f"join-{self.room_name}")

    async def opened(self) -> None:
        """Wait until joined with the agent's track published; raise what the join raised
        (`LiveKitError` if it was given up by `close()`)."""
        self.start()
        assert self._task is not None
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise  # the waiter itself was cancelled
            raise LiveKitError("the agent's join was given up") from None

    async def _open(self) -> None:
        token = self._livekit.agent_token(self.room_name, self.identity)
        options = rtc.RoomOptions(
            single_peer_connection=self._settings.livekit_single_peer_connection
        )
        await self.room.connect(self._livekit.ws_url, token, options)
        self.step("joined_ms")
        narrow_room_events(self.room)  # off the other rooms' per-frame events (fanout.py)
        log.info("joined room", extra={"room": self.room_name})
        source = rtc.AudioSource(RATE, 1, queue_size_ms=self._settings.livekit_lead_ms)
        track = rtc.LocalAudioTrack.create_audio_track("agent", source)
        publish = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, publish)
        self.source = source
        self.step("published_ms")

    async def close(self) -> None:
        """Leave the room, once a join under way has finished (bounded by
        `CLOSE_JOIN_WAIT_S`): the SDK's connect goes on in its native core when its waiter
        is cancelled, and a room whose connect answer went unread cannot be left, so the
        agent would stay in it."""
        task = self._task
        if task is not None and not task.done():
            try:
                async with asyncio.timeout(CLOSE_JOIN_WAIT_S):
                    await asyncio.wait({task})
            except TimeoutError:
                log.warning(
                    "the agent's join did not finish: given up",
                    extra={"room": self.room_name, "waited_s": CLOSE_JOIN_WAIT_S},
                )
                task.cancel()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        with contextlib.suppress(Exception):  # leaving a room that failed or already went
            await self.room.disconnect()
