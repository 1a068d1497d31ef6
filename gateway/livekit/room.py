"""LiveKit room calls: the gateway joins a call's room as the agent, and the room is the
`CallLeg` of the call's `CallLifecycle`.

`LiveKitRooms` holds the rooms this process serves. A room is served once, whoever asks
first (LiveKit's `participant_joined` webhook for inbound SIP calls, `POST /call/outbound`
for outbound ones, `POST /web-calls` for browser callers). One `LiveKitRoom` per room: it
takes the call (its lease), joins with a token the gateway mints and publishes the agent's
track. An inbound SIP call is answered then (its bridge answered; the caller is in the
room); an outbound or web call once the caller's audio arrives. The agent's first words
wait in the transport (`held`) until the caller receives the agent's track (made
meanwhile, not lost), and the caller's audio feeds the call from when it arrives. The
caller is the SIP participant, or for a web call the one standard participant whose
identity the gateway minted the browser's token for (anyone else in the room is ignored).
The room is left and deleted once the call's final write is done. An outbound call
screened for an answering machine (its assistant has a voicemail plan) gets a
`GateDetector` on the callee's audio and words: a SIP bridge reports no machine, so the
gateway decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
from livekit import rtc

from audio.frames import QUIET_FRAME_MS, AudioFrame, samples_per_frame
from gateway.call.admission import GATEWAY_FULL, Admission
from gateway.call.lifecycle import (
    CallEnding,
    CallLifecycle,
    CallRecording,
    CallRuntime,
    LegTransport,
)
from gateway.call.lookup import CallerLookup
from gateway.call.machine_detection import DetectionConfig, GateDetector
from gateway.call.records import CallInputLimits, record_refused_call
from gateway.errors import GatewayFull, MissingPlaceholders
from gateway.livekit.connection import RoomConnection
from gateway.livekit.egress import RoomRecording
from gateway.livekit.transport import RATE, LiveKitTransport
from gateway.logs import call_id_var
from gateway.settings import Settings
from storage import (
    AssistantRecord,
    CallRecord,
    CallStatus,
    Database,
    Direction,
    normalize_e164,
)
from telephony.errors import LiveKitError
from telephony.livekit import LiveKitAdmin

log = logging.getLogger(__name__)

_SIP = rtc.ParticipantKind.PARTICIPANT_KIND_SIP
_STANDARD = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
# A web caller whose token was valid when it connected may still be publishing its track.
WEB_JOIN_GRACE_S = 10.0
# A refused dispatch's Retry-After: LiveKit's webhook client (go-retryablehttp) honours it
# for a 503, so its few retries come a second apart, each free to reach another gateway.
LIVEKIT_RETRY_AFTER_S = 1
# Under `serve --workers N`, how often a worker that refused a dispatch offers it on the port
# again (`Handoff`), until a worker takes it or the grace is over.
HANDOFF_EVERY_S = 0.5
# A refused dispatch is remembered this long past its grace: LiveKit's retries of it (a
# few, a second or so apart) are refused without being counted or logged again.
REFUSALS_REMEMBERED_S = 60.0
# Offers a refused dispatch once more on this gateway's port, on a new connection (which the
# kernel may hand to any worker): True once a worker took it (or it had been taken).
Handoff = Callable[[], Awaitable[bool]]
# An inbound SIP call is answered before the caller's audio arrives (its subscription is
# a WebRTC negotiation, seconds at most under load): without it by then, the call ends.
CALLER_AUDIO_WAIT_S = 20.0
ATTR_ORG = "voice_gateway.org_id"
ATTR_ASSISTANT = "voice_gateway.assistant_id"
ATTR_CALL = "voice_gateway.call_id"


def room_of(call: CallRecord) -> str:
    """The LiveKit room a room call is held in: an inbound SIP call's is the one its
    dispatch rule made (the gateway stores it in the metadata); outbound and web calls get
    the gateway's own name (their metadata is the client's and names no room)."""
    if call.transport == "livekit" and call.direction == Direction.INBOUND:
        return call.metadata.get("room") or f"call-{call.id}"
    return f"call-{call.id}"


def web_caller_identity(call: CallRecord) -> str:
    """The identity a web call's browser joins its room as (its token says it)."""
    return f"web-{call.id}"


class LiveKitRoom:
    """One room, one caller, one call. `web_caller`: the identity of a web call's browser
    participant (None: the caller is the room's SIP participant)."""

    def __init__(
        self,
        runtime: CallRuntime,
        livekit: LiveKitAdmin,
        settings: Settings,
        room_name: str,
        call: CallRecord,
        *,
        web_caller: str | None = None,
        connection: RoomConnection | None = None,
    ) -> None:
        self._runtime = runtime
        self._livekit = livekit
        self._settings = settings
        self.room_name = room_name
        self.call = call
        self._web_caller = web_caller
        if connection is None:  # an inbound SIP call's is opened before its call is stored
            connection = RoomConnection(
                livekit, settings, room_name, f"agent-{call.id}", dtmf=web_caller is None
            )
        self.connection = connection
        self.identity = connection.identity
        self.lifecycle = CallLifecycle(runtime, call, self)
        self._room = connection.room
        self._source: rtc.AudioSource | None = None
        self._caller: rtc.RemoteParticipant | None = None
        self._web_caller_joined = False
        self._caller_audio: asyncio.Queue[rtc.Track] = asyncio.Queue(maxsize=1)
        self._heard_by_caller = asyncio.Event()
        self._transport: LiveKitTransport | None = None  # made by `transport()`
        self._tasks: list[asyncio.Task[None]] = []

    # ---------------------------------------------------------------- room events

    def on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and self._is_caller(participant):
            self._caller = participant
            with contextlib.suppress(asyncio.QueueFull):
                self._caller_audio.put_nowait(track)

    def _is_caller(self, participant: rtc.RemoteParticipant) -> bool:
        if self._web_caller is None:
            return participant.kind == _SIP
        return participant.kind == _STANDARD and participant.identity == self._web_caller

    def on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        self.caller_left(participant.identity)

    def caller_left(self, identity: str) -> None:
        """`identity` left the room (the agent's connection saw it, or LiveKit's webhook
        said so: the webhook can come first, and a browser that left at once may never have
        been seen by the agent's connection): if it is this call's caller, the call ends."""
        if identity == self._web_caller:
            self._caller_hung_up()
        elif self._caller is not None and identity == self._caller.identity:
            self.lifecycle.request_end("caller-hung-up", CallStatus.COMPLETED)

    def _caller_hung_up(self) -> None:
        """A web call's browser left: completed once its microphone was heard, else it was
        never answered (canceled)."""
        status = CallStatus.COMPLETED if self._caller is not None else CallStatus.CANCELED
        self.lifecycle.request_end("caller-hung-up", status)

    def on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self._web_caller:
            self._web_caller_joined = True

    def on_disconnected(self, reason: object) -> None:
        if self._web_caller_joined:
            # LiveKit closes a room once only agents are left in it, and that can reach us
            # before the browser's own leaving: a web call's room closing is its hang-up.
            self._caller_hung_up()
            return
        self.lifecycle.request_end("room-closed", CallStatus.COMPLETED)

    def on_sip_dtmf_received(self, dtmf: rtc.SipDTMF) -> None:
        task = asyncio.create_task(self.lifecycle.on_dtmf(dtmf.digit), name="dtmf")
        self._tasks.append(task)

    def on_local_track_subscribed(self, *_: object) -> None:
        self._heard_by_caller.set()

    # ------------------------------------------------------------------- the call

    async def run(self) -> None:
        """Serve the room until the call has ended and the room is closed. Never raises."""
        call_id_var.set(self.call.id)
        ending = CallEnding("room-closed", CallStatus.COMPLETED)
        try:
            await self._serve()
        except LiveKitError as exc:
            log.warning("room call failed: %s", exc)
            ending = CallEnding("livekit-error", CallStatus.FAILED)
        except Exception:  # the room's task ends here: log with the call id, finalise
            log.exception("room call failed")
            ending = CallEnding("gateway-error", CallStatus.FAILED)
        finally:
            self.lifecycle.request_end(ending.reason, ending.status)
            await self.lifecycle.finished()

    async def _serve(self) -> None:
        if self.lifecycle.ended.is_set():
            return  # ended before the room was joined (the dial failed)
        connection = self.connection
        connection.attach(self)  # events of a join begun before the call are handed over
        steps, step = connection.steps, connection.step
        step("call_stored_ms")  # an inbound SIP call's join began before it was stored
        await connection.opened()
        room, self._source = self._room, connection.source
        if self._web_caller is not None and self._web_caller in room.remote_participants:
            self._web_caller_joined = True  # the browser was in the room before the agent

        if self._web_caller is None:
            ring_s = self._settings.outbound_ring_timeout_s + 30.0
        else:  # the browser's token lets it connect only this long
            ring_s = self._settings.web_call_token_ttl_s + WEB_JOIN_GRACE_S
        caller_track: rtc.Track | None = None
        dispatched = self._dispatched_caller()
        if dispatched is not None:
            self._caller = dispatched
        else:  # an outbound or web call: answered once its audio arrives
            caller_track = await self._until_ended(self._caller_audio.get(), ring_s)
            if caller_track is None:
                self.lifecycle.request_end("no-answer", CallStatus.NO_ANSWER)
                return
            step("caller_audio_ms")
        # Recorded from the answer on (greeting included); the egress starts beside the call.
        # Answered now, so the greeting is being made while the caller's subscription to
        # our track completes; its audio is held until then, so it is not lost.
        await self.lifecycle.answer()
        step("answered_ms")
        await self._until_ended(self._heard_by_caller.wait(), 3.0)
        step("heard_ms")
        if self._transport is not None:
            self._transport.release()
        log.info("room call answered", extra={"room": self.room_name, **steps})
        if caller_track is None:  # a dispatched caller's audio may come after the greeting
            caller_track = await self._until_ended(self._caller_audio.get(), CALLER_AUDIO_WAIT_S)
            if caller_track is None:
                if not self.lifecycle.ended.is_set():
                    log.warning(
                        "the caller's audio never arrived: the call ends",
                        extra={"room": self.room_name, "waited_s": CALLER_AUDIO_WAIT_S},
                    )
                    self.lifecycle.request_end("caller-audio-missing", CallStatus.FAILED)
                return
            step("caller_audio_ms")
            log.info("caller audio arrived", extra={"room": self.room_name, **steps})
        self._tasks.append(asyncio.create_task(self._read_caller(caller_track), name="lk-mic"))
        await self.lifecycle.ended.wait()

    def _dispatched_caller(self) -> rtc.RemoteParticipant | None:
        """An inbound SIP call's caller, already in the room when the agent joins: its
        bridge has answered, so the call is answered at once and the greeting made while the
        subscriptions to each other's audio complete (each takes a WebRTC negotiation: the
        greeting would otherwise wait for both in turn). None for an outbound call (the
        callee answers when its audio comes) and a web call."""
        if self._web_caller is not None or self.call.direction != Direction.INBOUND:
            return None
        for participant in self._room.remote_participants.values():
            if participant.kind == _SIP:
                return participant
        return None

    async def _until_ended(
        self, awaitable: Coroutine[Any, Any, Any], timeout_s: float
    ) -> Any | None:
        """The awaitable's result, or None if the call ended or `timeout_s` passed first."""
        waiter = asyncio.ensure_future(awaitable)
        ended = asyncio.create_task(self.lifecycle.ended.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, ended}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (waiter, ended):
                task.cancel()
            await asyncio.gather(waiter, ended, return_exceptions=True)
        if waiter in done and not waiter.cancelled() and waiter.exception() is None:
            return waiter.result()
        return None

    async def _read_caller(self, track: rtc.Track) -> None:
        """Feed the caller's audio to the call: the SDK resamples it to RATE and hands it over
        `QUIET_FRAME_MS` at a time (one event per frame, fanned out to every subscriber of
        the SDK's events: fewer is cheaper); it goes on whole while the caller is quiet, in
        20 ms frames otherwise."""
        stream = rtc.AudioStream(
            track, sample_rate=RATE, num_channels=1, frame_size_ms=QUIET_FRAME_MS
        )
        frame_samples = samples_per_frame(RATE)
        metrics = self._runtime.metrics
        lifecycle = self.lifecycle
        try:
            async for event in stream:
                chunk = np.frombuffer(event.frame.data, dtype=np.int16).copy()
                metrics.inbound_frames_total += chunk.shape[0] // frame_samples  # 20 ms ones
                step = max(1, chunk.shape[0]) if lifecycle.caller_quiet else frame_samples
                for offset in range(0, chunk.shape[0], step):
                    if lifecycle.ended.is_set():
                        return
                    await lifecycle.on_audio(AudioFrame(chunk[offset : offset + step], RATE))
        finally:
            await stream.aclose()

    # ---------------------------------------------------------------- the CallLeg

    def recording(self) -> CallRecording:
        return RoomRecording(
            egress=self._livekit,
            store=self._runtime.store,
            settings=self._settings,
            room_name=self.room_name,
            call=self.call,
        )

    def transport(self, recording: CallRecording | None) -> LegTransport:
        assert self._source is not None and self._caller is not None
        caller = self._caller.identity
        gate = self.lifecycle.callee_gate
        if gate is not None:  # screened for a machine: LiveKit's SIP bridge does not detect one
            bound_ms = 1000.0 * self._settings.livekit_machine_detection_s
            detector = GateDetector(gate, DetectionConfig(max_decision_ms=bound_ms))
            gate.add_listener(detector)
            self._tasks.append(asyncio.create_task(detector.keep_time(), name="lk-amd"))
        self._transport = LiveKitTransport(
            source=self._source,
            held=not self._heard_by_caller.is_set(),
            on_mark=self.lifecycle.on_mark,
            metrics=self._runtime.metrics,
            # A browser caller has no phone call to refer elsewhere: a transfer fails and
            # the call goes on (`TransferError`).
            transfer=(
                None
                if self._web_caller is not None
                else lambda to: self._livekit.transfer_sip(self.room_name, caller, to)
            ),
        )
        return self._transport

    async def close(self, ending: CallEnding) -> None:
        """Leave the room and close it (which hangs the SIP caller up)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.connection.close()
        with contextlib.suppress(LiveKitError):
            await self._livekit.delete_room(self.room_name)
        log.info("left room", extra={"room": self.room_name, "reason": ending.reason})


class LiveKitRooms:
    """The rooms this gateway serves, each by one `LiveKitRoom` task."""

    def __init__(
        self,
        runtime: CallRuntime,
        livekit: LiveKitAdmin,
        database: Database,
        settings: Settings,
        lookup: CallerLookup,
        *,
        admission: Admission,
    ) -> None:
        self._runtime = runtime
        self._admission = admission
        self._livekit = livekit
        self._database = database
        self._settings = settings
        self._lookup = lookup  # asked before an inbound SIP call is stored
        self._rooms: dict[str, LiveKitRoom] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Refused dispatches waiting for their last resort, by webhook event id.
        self._last_resorts: dict[str, asyncio.Task[None]] = {}
        # When this process first refused each recent dispatch (monotonic), by event id:
        # LiveKit's retries of it are refused without being counted again.
        self._refused_at: dict[str, float] = {}

    def serve(
        self,
        room_name: str,
        call: CallRecord,
        *,
        web_caller: str | None = None,
        connection: RoomConnection | None = None,
    ) -> LiveKitRoom:
        """Join `room_name` for `call` (once: a room already served is left as it is); its
        caller is the SIP participant, or the participant `web_caller` for a web call.
        `connection`: the agent's, already joining (else the room makes its own)."""
        existing = self._rooms.get(room_name)
        if existing is not None:
            return existing
        room = LiveKitRoom(
            self._runtime,
            self._livekit,
            self._settings,
            room_name,
            call,
            web_caller=web_caller,
            connection=connection,
        )
        room.lifecycle.take()
        self._rooms[room_name] = room
        task = asyncio.create_task(room.run(), name=f"room-{room_name}")
        self._tasks[room_name] = task

        def forget(_: asyncio.Task[None]) -> None:
            self._rooms.pop(room_name, None)
            self._tasks.pop(room_name, None)

        task.add_done_callback(forget)
        return room

    def participant_left(self, room_name: str, identity: str) -> None:
        """A participant left `room_name` (webhook): its call ends if it was the caller and
        this gateway serves the room."""
        room = self._rooms.get(room_name)
        if room is not None:
            room.caller_left(identity)

    def end(self, room_name: str, reason: str) -> None:
        """The room finished (webhook): end its call if this gateway serves it."""
        room = self._rooms.get(room_name)
        if room is not None:
            room.lifecycle.request_end(reason, CallStatus.COMPLETED)

    async def serve_inbound(
        self, room_name: str, attributes: Mapping[str, str]
    ) -> LiveKitRoom | None:
        """A SIP caller joined `room_name` through a dispatch rule: store the call (after its
        caller lookup) and join."""
        if room_name in self._rooms or ATTR_CALL in attributes:
            return self._rooms.get(room_name)  # ours already (or an outbound call of ours)
        # Full: `GatewayFull` before anything is read; the webhook answers 503 and gives the
        # event back, so LiveKit's retry may reach a gateway with room (see webhook.py).
        self._admission.require(
            room_name,
            hold_s=self._settings.admission_hold_s,
            arrival="livekit",
            retry_after_s=LIVEKIT_RETRY_AFTER_S,
            weight=self._admission.room_weight,
        )
        # The agent joins while the call is looked up and stored (connection.py).
        # Its own identity: LiveKit drops a participant when another joins as the same one.
        identity = f"agent-{room_name}-{secrets.token_hex(3)}"
        connection = RoomConnection(self._livekit, self._settings, room_name, identity)
        connection.start()
        room: LiveKitRoom | None = None
        try:
            room = await self._open_inbound(room_name, attributes, connection)
            return room
        finally:
            self._admission.release(room_name)  # the room's call holds its place from here
            if room is None or room.connection is not connection:  # no call of its own
                await asyncio.shield(connection.close())

    def admit_dispatch(
        self,
        event_id: str,
        room_name: str,
        attributes: Mapping[str, str],
        *,
        keep_until: datetime,
        handoff: Handoff | None = None,
        offered: bool = False,
    ) -> None:
        """Before a SIP caller's dispatch is claimed: `GatewayFull` if this process has no
        room for a new call, with its last resort scheduled (`dispatch_refused`). Checked
        again, holding a place, when the call is opened (`serve_inbound`). A dispatch another
        worker `offered` here (its `Handoff`) is refused quietly, as it was counted where it
        was first refused; so is LiveKit's retry of a dispatch this process refused lately
        (counted once)."""
        if room_name in self._rooms or ATTR_CALL in attributes:
            return
        refusal = self._admission.refusal(self._admission.room_weight)
        if refusal is None:
            return
        if not offered:
            # A last resort unless one waits already. After one ended, a retry may be of a call
            # whose taker failed since; if the call is served, the first offer says so.
            self.dispatch_refused(
                event_id, room_name, attributes, keep_until=keep_until, handoff=handoff
            )
        if offered or not self._first_refusal(event_id):
            log.debug("dispatch refused again", extra={"room": room_name, "event_id": event_id})
        else:
            self._admission.refused(refusal, arrival="livekit", key=room_name)
        raise GatewayFull(refusal.cause, retry_after_s=LIVEKIT_RETRY_AFTER_S)

    def _first_refusal(self, event_id: str) -> bool:
        """Whether this process has not refused dispatch `event_id` lately (it has now)."""
        now = time.monotonic()
        horizon = self._settings.livekit_dispatch_grace_s + REFUSALS_REMEMBERED_S
        for old in [e for e, at in self._refused_at.items() if now - at > horizon]:
            del self._refused_at[old]
        first = event_id not in self._refused_at
        self._refused_at.setdefault(event_id, now)
        return first

    def dispatch_refused(
        self,
        event_id: str,
        room_name: str,
        attributes: Mapping[str, str],
        *,
        keep_until: datetime,
        handoff: Handoff | None = None,
    ) -> None:
        """A SIP caller's dispatch was refused here (full) and given back to LiveKit's
        retries (`participant_joined` event `event_id`). Under `serve --workers N` it is also
        offered to the other workers (`handoff`, every HANDOFF_EVERY_S): LiveKit's few
        retries, each on a new connection, may all land on this worker again. The last
        resort, after LIVEKIT_DISPATCH_GRACE_S: a gateway that took the call has claimed the
        event by then; if none has, this one claims it and serves the call if it has room
        now, else stores it busy/gateway-full and closes the room (the caller is hung up,
        not left in a silent room)."""
        if event_id in self._last_resorts:
            return
        task = asyncio.create_task(
            self._last_resort(event_id, room_name, dict(attributes), keep_until, handoff),
            name=f"dispatch-{room_name}",
        )
        self._last_resorts[event_id] = task
        task.add_done_callback(lambda _: self._last_resorts.pop(event_id, None))

    async def _last_resort(
        self,
        event_id: str,
        room_name: str,
        attributes: dict[str, str],
        keep_until: datetime,
        handoff: Handoff | None,
    ) -> None:
        extra = {"room": room_name, "event_id": event_id}
        loop = asyncio.get_running_loop()
        grace_over = loop.time() + self._settings.livekit_dispatch_grace_s
        while handoff is not None and loop.time() + HANDOFF_EVERY_S < grace_over:
            await asyncio.sleep(HANDOFF_EVERY_S)
            try:
                if await handoff():
                    log.info("refused dispatch taken when offered again", extra=extra)
                    return
            except Exception:  # the offers stop; LiveKit's retries and the grace stand
                log.exception("offering a refused dispatch failed", extra=extra)
                handoff = None
        await asyncio.sleep(max(0.0, grace_over - loop.time()))
        try:
            fresh = await self._database.claims.claim_event(
                event_id, event="participant_joined", now=datetime.now(UTC), keep_until=keep_until
            )
            if not fresh:
                return  # a gateway took the call (or a retry here did)
            if self._admission.refusal(self._admission.room_weight) is None:  # room again
                log.info("refused dispatch taken after all", extra=extra)
                await self.serve_inbound(room_name, attributes)
                return
            assistant = await self._dispatch_assistant(room_name, attributes)
            call = await record_refused_call(
                self._database.calls,
                self._database.accounts,
                assistant=assistant,
                transport="livekit",
                direction=Direction.INBOUND,
                from_number=attributes.get("sip.phoneNumber", ""),
                to_number=attributes.get("sip.trunkPhoneNumber", ""),
                call_sid=attributes.get("sip.callID", ""),
                metadata={"room": room_name},
                end_reason=GATEWAY_FULL,
            )
            call_id_var.set(call.id)
            log.warning("dispatch refused by every gateway: the caller is hung up", extra=extra)
            with contextlib.suppress(LiveKitError):
                await self._livekit.delete_room(room_name)
            if self._runtime.events is not None:
                await self._runtime.events.status(call, call.status)
            self._runtime.reports.poke(call.id)
        except Exception:  # the task ends here: logged with the room
            log.exception("the last resort of a refused dispatch failed", extra=extra)

    async def aclose(self) -> None:
        """Stop waiting on refused dispatches (shutdown; their calls are left to LiveKit)."""
        tasks = list(self._last_resorts.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _dispatch_assistant(
        self, room_name: str, attributes: Mapping[str, str]
    ) -> AssistantRecord | None:
        """The assistant the dispatch rule's attributes name, if it is theirs to name."""
        org_id = attributes.get(ATTR_ORG)
        assistant = None
        if attributes.get(ATTR_ASSISTANT):
            assistant = await self._database.assistants.get_any(attributes[ATTR_ASSISTANT])
        if assistant is not None and assistant.org_id != org_id:
            log.warning("dispatch attributes name another organisation's assistant")
            assistant = None
        to_number = attributes.get("sip.trunkPhoneNumber", "")
        if assistant is not None and not await self._number_of(to_number, assistant.org_id):
            # A trunk left behind after the operator gave its number to another organisation
            # (the rule and its trunks were the organisation's when they were made).
            log.warning(
                "called number is not registered to the dispatch rule's organisation",
                extra={"room": room_name, "number": to_number},
            )
            assistant = None
        return assistant

    async def _open_inbound(
        self, room_name: str, attributes: Mapping[str, str], connection: RoomConnection
    ) -> LiveKitRoom | None:
        assistant = await self._dispatch_assistant(room_name, attributes)
        to_number = attributes.get("sip.trunkPhoneNumber", "")
        try:
            call = await self._lookup.open_inbound(
                assistant=assistant,
                transport="livekit",
                from_number=attributes.get("sip.phoneNumber", ""),
                to_number=to_number,
                call_sid=attributes.get("sip.callID", ""),
                metadata={"room": room_name},
                limits=CallInputLimits.of(self._settings),
            )
        except MissingPlaceholders as exc:
            log.error("assistant cannot answer: %s", exc, extra={"room": room_name})
            return None
        log.info("inbound SIP call", extra={"room": room_name, "call_id": call.id})
        return self.serve(room_name, call, connection=connection)

    async def _number_of(self, number: str, org_id: str) -> bool:
        """Whether the registry gives the called `number` to `org_id` (a bridge that names
        no number is taken at the rule's word; digits without `+` are read as E.164)."""
        if not number:
            return True
        try:
            e164 = normalize_e164(number if number.startswith(("+", "00")) else "+" + number)
        except ValueError:
            return False
        entry = await self._database.numbers.owner(e164)
        return entry is not None and entry.org_id == org_id

    async def close_lost(self, call: CallRecord) -> None:
        """A room call whose gateway died was finished: close its room (no zombie rooms)."""
        room = room_of(call)
        with contextlib.suppress(LiveKitError):
            await self._livekit.delete_room(room)
        log.warning("closed the room of a lost call", extra={"room": room, "call_id": call.id})
