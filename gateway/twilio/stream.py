"""The `/twilio/stream` WebSocket driver: feeds Twilio's text into the sans-I/O protocol,
hands the typed events to the call's lifecycle, and writes what the protocol wants sent.

Refusals happen before any audio flows: a bad upgrade signature closes before accept
(HTTP 403); a missing, wrong or expired per-call stream token closes right after `start`
(1008), as does a start for a call that ended or has had its stream (a replay: the token
is single-use, claimed in the database before anything of the call is touched); so does
a socket that sends no `start` within STREAM_START_TIMEOUT_S, and an upgrade is refused
before accept (HTTP 403) while MAX_PENDING_STREAMS sockets of this process wait for
theirs. Once `start` checks out, the stream is the `CallLeg` of the call's
`CallLifecycle`, and its media is held to the real clock (`InboundMediaGuard`): a stream
that lies about time or floods is closed 1008, and so is one that sends nothing for
STREAM_IDLE_TIMEOUT_S (its call ends `stream-idle`). While the caller is quiet, Twilio's 20
ms media frames reach the call joined in pairs (`QUIET_FRAME_MS`, `FrameJoiner`): a frame
waits for the next one, 20 ms while media flows; a gap in the stream's time sends it on
alone. While an utterance is under way, each frame goes on as it comes.
Unknown events are counted, and logged once per name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from audio.codec import ulaw_decode
from audio.frames import QUIET_FRAME_MS, AudioFrame, FrameJoiner
from gateway.call.lifecycle import CallEnding, CallLifecycle, CallRecording, LegTransport
from gateway.logs import call_id_var
from gateway.recording.recorder import CallRecorder
from gateway.services import Services
from gateway.twilio.outbound import outbound_token_subject
from gateway.twilio.pacer import TwilioPacer
from gateway.twilio.stream_claim import claim_stream
from storage import CallNotFound, CallStatus
from telephony.errors import ProtocolError, SignatureError, StreamClosed
from telephony.twilio import (
    AudioReceived,
    DtmfReceived,
    InboundMediaGuard,
    MarkPlayed,
    MediaStreamProtocol,
    Start,
    StreamStarted,
    StreamStopped,
    UnknownReceived,
    stream_url_for,
    verify_stream_token,
)

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008


class TwilioStreamEndpoint:
    """The `/twilio/stream` route's ASGI app: an app rather than a Starlette endpoint
    function, so that once the stream has started its receive loop awaits the server's
    `receive` itself, fifty times a second per call, without Starlette's checks between."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _serve_stream(WebSocket(scope, receive=receive, send=send), receive)


async def _serve_stream(websocket: WebSocket, receive: Receive) -> None:
    """Serve one Twilio Media Stream until `stop`, a hang-up, or bad input."""
    services: Services = websocket.app.state.services
    url = stream_url_for(services.settings.public_url)
    try:
        services.twilio.validator.check(url, {}, websocket.headers.get("x-twilio-signature"))
    except SignatureError as exc:
        log.warning("stream upgrade refused: %s", exc)
        await websocket.close(code=POLICY_VIOLATION)  # before accept: an HTTP 403
        return
    slots = services.stream_slots
    if not slots.open():  # a flood of upgrades: refused before accept (HTTP 403)
        services.metrics.streams_refused_total += 1
        log.warning("stream upgrade refused: too many streams waiting for start")
        await websocket.close(code=POLICY_VIOLATION)
        return
    stream = _MediaStream(services, websocket, receive, on_started=slots.release)
    try:
        await websocket.accept()
        # In a task of its own: each of the fifty messages a second resumes this task's few
        # frames, not the ASGI stack's middleware above them too (cancelling this one
        # cancels it, and its outcome comes back here).
        await asyncio.create_task(stream.run(), name="twilio-stream")
    finally:
        stream.release_slot()


class _MediaStream:
    """One media stream: its receive loop, and the `CallLeg` of its call."""

    def __init__(
        self,
        services: Services,
        websocket: WebSocket,
        receive: Receive,
        *,
        on_started: Callable[[], None],
    ) -> None:
        self._services = services
        self._on_started: Callable[[], None] | None = on_started  # frees its pending slot
        self._ws = websocket
        self._receive = receive  # the server's, under `websocket`
        self._protocol = MediaStreamProtocol()
        self._call: CallLifecycle | None = None
        self._recorder: CallRecorder | None = None
        self._pacer: TwilioPacer | None = None
        self._started_at = 0.0  # Twilio's media timestamps count from the stream's start
        self._guard: InboundMediaGuard | None = None
        self._joiner = FrameJoiner(TwilioPacer.sample_rate, block_ms=QUIET_FRAME_MS)
        self._call_sid = ""
        self._close_code, self._close_reason = 1000, "call ended"
        self._last_message = 0.0  # loop time of the newest message (the idle watchdog's)
        self._watchdog: asyncio.Task[None] | None = None

    async def run(self) -> None:
        ending = CallEnding("stream-closed", CallStatus.COMPLETED)
        try:
            ending = await self._receive_loop()
        except ProtocolError as exc:
            log.warning(
                "media stream closed on bad input: %s", exc.reason, extra={"code": exc.code}
            )
            self._services.metrics.protocol_errors_total += 1
            ending = CallEnding("protocol-error", CallStatus.FAILED)
            self._close_code, self._close_reason = exc.code, exc.reason
        except SignatureError as exc:
            log.warning("media stream refused: %s", exc, extra={"call_sid": self._call_sid})
            ending = CallEnding("stream-token-refused", CallStatus.FAILED)
            self._close_code, self._close_reason = POLICY_VIOLATION, str(exc)[:120]
        except Exception:  # the connection's task ends here: log with the call id, close
            log.exception("media stream failed")
            ending = CallEnding("gateway-error", CallStatus.FAILED)
            self._close_code, self._close_reason = 1011, "internal error"
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
                await asyncio.gather(self._watchdog, return_exceptions=True)
            if self._call is None:
                await self._close()
            else:  # the lifecycle stores everything, then closes the socket (`close`)
                self._call.request_end(ending.reason, ending.status)
                await self._call.finished()

    async def _watch_idle(self, idle_s: float) -> None:
        """End the call of a started stream that sends nothing for `idle_s` (Twilio sends a
        media frame every 20 ms, silence included: such a stream's peer is gone or stuck).
        A check right after this process itself stalled is skipped: the messages that
        arrived meanwhile are not read yet."""
        loop = asyncio.get_running_loop()
        period = idle_s / 2
        while True:
            due = loop.time() + period
            await asyncio.sleep(period)
            now = loop.time()
            if now - due > period or now - self._last_message <= idle_s:
                continue
            call = self._call
            assert call is not None
            self._services.metrics.streams_idle_total += 1
            log.warning("media stream sent nothing for %.0f s: closed", idle_s)
            self._close_code, self._close_reason = POLICY_VIOLATION, "no media"
            call.request_end("stream-idle", CallStatus.FAILED)
            return

    async def _receive_before_start(self, start_by: float) -> Message:
        """The next WebSocket message of a stream not started yet, if it comes by `start_by`
        (loop time)."""
        try:
            async with asyncio.timeout_at(start_by):
                return await self._ws.receive()
        except TimeoutError:
            self._services.metrics.streams_without_start_total += 1
            raise ProtocolError(1008, "no start message in time") from None

    def _on_unknown(self, event: UnknownReceived) -> None:
        self._services.metrics.unknown_events_total += 1
        if event.first:
            log.info("unknown media stream event ignored", extra={"event": event.event})

    async def _receive_loop(self) -> CallEnding:
        max_bytes = self._services.settings.max_ws_message_bytes
        metrics = self._services.metrics
        start_timeout_s = self._services.settings.stream_start_timeout_s
        start_by = asyncio.get_running_loop().time() + start_timeout_s
        loop = asyncio.get_running_loop()
        receive = self._receive
        while True:
            if self._call is None:
                message = await self._receive_before_start(start_by)
            else:  # fifty times a second: the server's own (it gives "receive" or "disconnect")
                message = await receive()
            self._last_message = loop.time()
            if message["type"] == "websocket.disconnect":
                self._protocol.connection_lost()  # the pacer stops sending at once
                return CallEnding("stream-disconnected", CallStatus.COMPLETED)
            text = message.get("text")
            if text is None:
                raise ProtocolError(1003, "Media Streams messages are text frames")
            if len(text) > max_bytes:
                raise ProtocolError(1009, "message too big")
            self._protocol.receive_text(text)
            call = self._call
            for event in self._protocol.events():
                if isinstance(event, AudioReceived):
                    metrics.inbound_frames_total += 1
                    if call is not None:
                        joined = self._joiner.add(
                            event.payload, event.timestamp_ms, join=call.caller_quiet
                        )
                        for at_ms, ulaw in joined:
                            await self._caller_audio(call, at_ms, ulaw)
                elif isinstance(event, MarkPlayed):
                    if call is not None:
                        call.on_mark(event.name)
                elif isinstance(event, DtmfReceived):
                    if call is not None:
                        await call.on_dtmf(event.digit)
                elif isinstance(event, StreamStarted):
                    await self._start(event.start)
                    call = self._call
                    self._guard = InboundMediaGuard(
                        origin=self._started_at, rate=TwilioPacer.sample_rate
                    )
                elif isinstance(event, UnknownReceived):
                    self._on_unknown(event)
                elif isinstance(event, StreamStopped):
                    held = self._joiner.flush()  # the caller's last frame
                    if held is not None and call is not None:
                        await self._caller_audio(call, *held)
                    return CallEnding("caller-hung-up", CallStatus.COMPLETED)

    async def _caller_audio(self, call: CallLifecycle, at_ms: int, ulaw: bytes) -> None:
        """Caller audio stamped `at_ms` (Twilio's stream time), checked against the real
        clock, recorded, and handed to the call."""
        assert self._guard is not None  # made at `start`, before any call
        self._guard.check(at_ms, len(ulaw), time.monotonic())
        pcm = ulaw_decode(ulaw)
        # Once the end is asked for the socket stays open through the final write, but the
        # call (and its recording) has ended.
        if self._recorder is not None and not call.ended.is_set():
            self._recorder.caller_audio(at_ms, pcm)
        await call.on_audio(AudioFrame(pcm, TwilioPacer.sample_rate, ulaw))

    def release_slot(self) -> None:
        """The socket is no longer waiting for `start` (it started, or it is closing)."""
        if self._on_started is not None:
            self._on_started()
            self._on_started = None

    async def _start(self, start: Start) -> None:
        self.release_slot()  # checked or refused below, it is no longer pending
        services = self._services
        self._started_at = time.monotonic()
        self._call_sid = start.call_sid
        params = start.custom_parameters
        token = params.get("token")
        if not token:
            raise SignatureError("missing stream token")
        call_id = params.get("call_id", "")
        key, now = services.twilio.stream_token_key, time.time()
        try:
            verified = verify_stream_token(
                key, token, call_id=call_id, subject=start.call_sid, now=now
            )
        except SignatureError:
            # Outbound calls: the token was made before Twilio gave the call its sid.
            subject = outbound_token_subject(call_id)
            verified = verify_stream_token(key, token, call_id=call_id, subject=subject, now=now)
        try:
            call = await services.database.calls.get_call(call_id, with_turns=False)
        except CallNotFound as exc:
            raise SignatureError("stream token names no call of this gateway") from exc
        call_id_var.set(call.id)
        if call.call_sid and call.call_sid != start.call_sid:
            raise SignatureError("stream token belongs to another call")
        # Once only, on whichever gateway: before anything of the call is touched.
        await claim_stream(services.database, call, start, verified)
        lifecycle = CallLifecycle(services.calls, call, self)
        self._call = lifecycle
        lifecycle.take()
        store = services.database.calls
        if not call.call_sid:
            lifecycle.beside(lambda: store.set_call_sid(call.id, start.call_sid), "call sid")
        lifecycle.beside(lambda: store.set_stream(call.id, start.stream_sid), "stream sid")
        log.info("media stream started", extra={"call_sid": start.call_sid})
        idle_s = services.settings.stream_idle_timeout_s
        self._watchdog = asyncio.create_task(self._watch_idle(idle_s), name="stream-idle")
        await lifecycle.answer()

    # ---------------------------------------------------------------- the CallLeg

    def recording(self) -> CallRecording:
        services, call = self._services, self._call
        assert services.recordings is not None and call is not None
        settings = services.settings
        self._recorder = CallRecorder(
            call_id=call.call.id,
            key=services.recordings.key_for(call.call.org_id, call.call.id, "wav"),
            bucket=services.recordings,
            store=services.database.calls,
            rate=TwilioPacer.sample_rate,
            encoding=settings.recording_encoding,
            part_bytes=settings.recording_part_bytes,
            origin=self._started_at,
        )
        return self._recorder

    def transport(self, recording: CallRecording | None) -> LegTransport:
        rest = self._services.twilio.rest
        call_sid = self._call_sid

        async def transfer(to: str) -> None:
            assert rest is not None
            await rest.transfer(call_sid, to)

        self._pacer = TwilioPacer(
            protocol=self._protocol,
            send_text=self._send_text,
            metrics=self._services.metrics,
            lead_ms=self._services.settings.playout_lead_ms,
            transfer=transfer if rest is not None else None,
            recorder=self._recorder,
        )
        return self._pacer

    async def _send_text(self, text: str) -> None:
        """Write one frame; `StreamClosed` once the socket is gone (Starlette says so with
        `WebSocketDisconnect`, or a `RuntimeError` once a close was sent or received)."""
        try:
            await self._ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise StreamClosed(f"media stream socket gone: {type(exc).__name__}") from exc

    async def close(self, ending: CallEnding) -> None:
        """Close the socket: with nothing after `<Connect>` in the TwiML, Twilio hangs up."""
        if ending.reason == "max-duration":
            self._close_reason = "maximum call duration"
        await self._close()
        stats = self._pacer.stats if self._pacer is not None else None
        log.info("media stream closed", extra={"reason": ending.reason, "pacing": stats})

    async def _close(self) -> None:
        if self._ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                await self._ws.close(code=self._close_code, reason=self._close_reason)
