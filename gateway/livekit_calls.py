"""LiveKit room calls: the gateway joins a call's room as the agent and runs a `CallSession`.

`LiveKitCalls` holds the rooms this process serves. A room is served once, whoever asks
first (LiveKit's `participant_joined` webhook for inbound SIP calls, `POST /call/outbound`
for outbound ones). One `LiveKitCall` per room: it joins with a token the gateway mints,
publishes the agent's track, waits for the SIP participant's audio, then feeds it to the
session. The call ends exactly once, on whichever comes first: the caller leaving, the
agent hanging up, the room finishing (webhook or SDK event), or the gateway shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
from livekit import rtc

from audio.frames import AudioFrame
from gateway.context import GatewayContext, call_plan
from gateway.livekit_egress import RoomRecording
from gateway.livekit_sip import LiveKitError, LiveKitSip
from gateway.livekit_transport import RATE, LiveKitTransport
from gateway.logs import call_id_var
from gateway.persona import MissingPlaceholders, Persona
from gateway.session import CallSession
from storage import CallRecord, CallStatus, CallStore, Direction, NewCall

log = logging.getLogger(__name__)

_SIP = rtc.ParticipantKind.PARTICIPANT_KIND_SIP
ATTR_ORG = "voice_gateway.org_id"
ATTR_ASSISTANT = "voice_gateway.assistant_id"
ATTR_CALL = "voice_gateway.call_id"


class LiveKitCall:
    """One room, one caller, one session."""

    def __init__(
        self, ctx: GatewayContext, livekit: LiveKitSip, room_name: str, call: CallRecord
    ) -> None:
        self._ctx = ctx
        self._livekit = livekit
        self.room_name = room_name
        self.call = call
        self.identity = f"agent-{call.id}"
        self._room = rtc.Room()
        self._session: CallSession | None = None
        self._transport: LiveKitTransport | None = None
        self._caller: rtc.RemoteParticipant | None = None
        self._caller_audio: asyncio.Queue[rtc.Track] = asyncio.Queue(maxsize=1)
        self._heard_by_caller = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ended = asyncio.Event()
        self._end_lock = asyncio.Lock()
        self._end_reason = ("room-closed", CallStatus.COMPLETED)
        self._recording: RoomRecording | None = None
        self.done = asyncio.Event()

    # ---------------------------------------------------------------- room events

    def _is_caller(self, participant: rtc.RemoteParticipant) -> bool:
        return participant.kind == _SIP

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and self._is_caller(participant):
            self._caller = participant
            with contextlib.suppress(asyncio.QueueFull):
                self._caller_audio.put_nowait(track)

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if self._caller is not None and participant.identity == self._caller.identity:
            self.request_end("caller-hung-up", CallStatus.COMPLETED)

    def _on_disconnected(self, reason: object) -> None:
        self.request_end("room-closed", CallStatus.COMPLETED)

    def _on_dtmf(self, dtmf: rtc.SipDTMF) -> None:
        if self._session is not None:
            task = asyncio.create_task(self._session.on_dtmf(dtmf.digit), name="dtmf")
            self._tasks.append(task)

    def request_end(self, reason: str, status: CallStatus) -> None:
        """Ask the call to end (idempotent; the first reason given is the one kept)."""
        if not self._ended.is_set():
            self._end_reason = (reason, status)
            self._ended.set()

    # ------------------------------------------------------------------- the call

    async def run(self) -> None:
        """Serve the room until the call ends; then leave it. Never raises."""
        call_id_var.set(self.call.id)
        try:
            await self._serve()
        except LiveKitError as exc:
            log.warning("room call failed: %s", exc)
            self.request_end("livekit-error", CallStatus.FAILED)
        except Exception:  # the room's task ends here: log with the call id, finalise
            log.exception("room call failed")
            self.request_end("gateway-error", CallStatus.FAILED)
        finally:
            await self._finish()

    async def _serve(self) -> None:
        room = self._room
        room.on("track_subscribed", self._on_track_subscribed)
        room.on("participant_disconnected", self._on_participant_disconnected)
        room.on("disconnected", self._on_disconnected)
        room.on("sip_dtmf_received", self._on_dtmf)
        room.on("local_track_subscribed", lambda *_: self._heard_by_caller.set())
        token = self._livekit.agent_token(self.room_name, self.identity)
        await room.connect(self._livekit.ws_url, token)
        log.info("joined room", extra={"room": self.room_name})
        source = rtc.AudioSource(RATE, 1, queue_size_ms=self._ctx.settings.livekit_lead_ms)
        track = rtc.LocalAudioTrack.create_audio_track("agent", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await room.local_participant.publish_track(track, options)

        ring_s = self._ctx.settings.outbound_ring_timeout_s + 30
        caller_track = await self._until_ended(self._caller_audio.get(), ring_s)
        if caller_track is None:
            if not self._ended.is_set():
                self.request_end("no-answer", CallStatus.NO_ANSWER)
            return
        # Speak only once the caller receives our track, so the greeting is not lost.
        await self._until_ended(self._heard_by_caller.wait(), 3.0)
        caller = self._caller
        assert caller is not None
        await self._ctx.store.set_status(self.call.id, CallStatus.IN_PROGRESS)
        plan = await call_plan(self._ctx, self.call)
        # Recorded from the answer on (greeting included); the egress starts beside the call.
        if self._ctx.settings.s3_bucket and plan.recording:
            self._recording = RoomRecording(
                egress=self._livekit,
                store=self._ctx.store,
                settings=self._ctx.settings,
                room_name=self.room_name,
                call=self.call,
            )
            self._recording.start()
        self._transport = LiveKitTransport(
            source=source,
            on_mark=self._on_mark,
            hang_up=self._hang_up,
            metrics=self._ctx.metrics,
            transfer=lambda to: self._livekit.transfer_sip(self.room_name, caller.identity, to),
        )
        self._session = CallSession(
            call_id=self.call.id,
            transport=self._transport,
            providers=plan.providers,
            store=self._ctx.store,
            config=self._ctx.session_config,
            metrics=self._ctx.metrics,
        )
        self._tasks.append(asyncio.create_task(self._transport.run(), name="lk-pacer"))
        self._ctx.metrics.calls_started_total += 1
        self._ctx.metrics.calls_active += 1
        await self._session.start()
        self._tasks.append(asyncio.create_task(self._read_caller(caller_track), name="lk-mic"))
        try:
            await asyncio.wait_for(self._ended.wait(), plan.max_duration_s)
        except TimeoutError:
            log.info("call reached its maximum duration", extra={"seconds": plan.max_duration_s})
            self.request_end("max-duration", CallStatus.COMPLETED)

    async def _until_ended(
        self, awaitable: Coroutine[Any, Any, Any], timeout_s: float
    ) -> Any | None:
        """The awaitable's result, or None if the call ended or `timeout_s` passed first."""
        waiter = asyncio.ensure_future(awaitable)
        ended = asyncio.create_task(self._ended.wait())
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
        stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1, frame_size_ms=20)
        try:
            async for event in stream:
                if self._session is None or self._ended.is_set():
                    break
                pcm = np.frombuffer(event.frame.data, dtype=np.int16).copy()
                self._ctx.metrics.inbound_frames_total += 1
                await self._session.on_audio(AudioFrame(pcm, RATE))
        finally:
            await stream.aclose()

    def _on_mark(self, name: str) -> None:
        if self._session is not None:
            self._session.on_mark(name)

    async def _hang_up(self) -> None:
        """The agent ends the call: the SIP participant is removed, then the room closed."""
        if self._caller is not None:
            await self._livekit.remove_participant(self.room_name, self._caller.identity)
        reason = self._session.end_reason if self._session is not None else None
        self.request_end(reason or "agent-ended", CallStatus.COMPLETED)

    async def _finish(self) -> None:
        """End the session once, leave the room, close it (the caller is gone or removed)."""
        async with self._end_lock:
            if self.done.is_set():
                return
            reason, status = self._end_reason
            if self._transport is not None:
                self._transport.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._session is not None:
                await self._session.end(reason=self._session.end_reason or reason, status=status)
                self._ctx.metrics.calls_active -= 1
            else:
                await self._ctx.store.finish_call(
                    self.call.id, status=status, end_reason=reason, ended_at=datetime.now(UTC)
                )
            if self._recording is not None:
                await self._recording.stop()  # before the room closes, which would end it too
            with contextlib.suppress(Exception):
                await self._room.disconnect()
            with contextlib.suppress(LiveKitError):
                await self._livekit.delete_room(self.room_name)
            log.info("left room", extra={"room": self.room_name, "reason": reason})
            self.done.set()


class LiveKitCalls:
    """The rooms this gateway serves, each by one `LiveKitCall` task."""

    def __init__(self, ctx: GatewayContext, livekit: LiveKitSip) -> None:
        self._ctx = ctx
        self._livekit = livekit
        self._calls: dict[str, LiveKitCall] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def serving(self, room_name: str) -> bool:
        return room_name in self._calls

    def serve(self, room_name: str, call: CallRecord) -> LiveKitCall:
        """Join `room_name` for `call` (once: a room already served is left as it is)."""
        existing = self._calls.get(room_name)
        if existing is not None:
            return existing
        room_call = LiveKitCall(self._ctx, self._livekit, room_name, call)
        self._calls[room_name] = room_call
        task = asyncio.create_task(room_call.run(), name=f"room-{room_name}")
        self._tasks[room_name] = task

        def forget(_: asyncio.Task[None]) -> None:
            self._calls.pop(room_name, None)
            self._tasks.pop(room_name, None)

        task.add_done_callback(forget)
        return room_call

    def end(self, room_name: str, reason: str) -> None:
        """The room finished (webhook): end its call if this gateway serves it."""
        call = self._calls.get(room_name)
        if call is not None:
            call.request_end(reason, CallStatus.COMPLETED)

    async def serve_inbound(
        self, room_name: str, attributes: Mapping[str, str]
    ) -> LiveKitCall | None:
        """A SIP caller joined `room_name` through a dispatch rule: store the call and join."""
        if self.serving(room_name) or ATTR_CALL in attributes:
            return self._calls.get(room_name)  # ours already (or an outbound call of ours)
        org_id = attributes.get(ATTR_ORG)
        assistant = None
        if attributes.get(ATTR_ASSISTANT):
            assistant = await self._ctx.assistants.get_any(attributes[ATTR_ASSISTANT])
        if assistant is not None and assistant.org_id != org_id:
            log.warning("dispatch attributes name another organisation's assistant")
            assistant = None
        from_number = attributes.get("sip.phoneNumber", "")
        to_number = attributes.get("sip.trunkPhoneNumber", "")
        persona = None
        if assistant is not None:
            try:
                persona = Persona.for_call(
                    system_prompt=assistant.config.system_prompt,
                    greeting=assistant.config.greeting,
                    values={"from_number": from_number, "to_number": to_number},
                )
            except MissingPlaceholders as exc:
                log.error("assistant cannot answer: %s", exc, extra={"room": room_name})
                return None
        else:
            default_org = await self._ctx.accounts.default_organization()
            org_id = default_org.id if default_org else None
        call = await self._ctx.store.create_call(
            NewCall(
                org_id=org_id,
                transport="livekit",
                call_sid=attributes.get("sip.callID", ""),
                from_number=from_number,
                to_number=to_number,
                direction=Direction.INBOUND,
                assistant_id=assistant.id if assistant else None,
                metadata={"room": room_name},
                system_prompt=persona.system_prompt if persona else None,
                greeting=persona.greeting if persona else None,
            ),
            started_at=datetime.now(UTC),
        )
        log.info("inbound SIP call", extra={"room": room_name, "call_id": call.id})
        return self.serve(room_name, call)

    async def aclose(self) -> None:
        """Gateway shutdown: end every call, leave and close every room."""
        for call in list(self._calls.values()):
            call.request_end("gateway-shutdown", CallStatus.FAILED)
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def close_abandoned_rooms(store: CallStore, livekit: LiveKitSip) -> None:
    """At start: room calls a previous run of the gateway left open are finished and their
    rooms closed, so a restart leaves no zombie rooms (and no call stuck in progress)."""
    for call in await store.open_calls(transport="livekit"):
        room = call.metadata.get("room") or f"call-{call.id}"
        await store.finish_call(
            call.id,
            status=CallStatus.FAILED,
            end_reason="gateway-restarted",
            ended_at=datetime.now(UTC),
        )
        with contextlib.suppress(LiveKitError):
            await livekit.delete_room(room)
        log.warning("closed a room left by an earlier run", extra={"room": room, "call": call.id})
