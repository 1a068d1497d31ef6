"""The `/twilio/stream` WebSocket driver: feeds Twilio's text into the sans-I/O protocol,
hands typed events to the call session, and writes what the protocol wants sent.

Refusals happen before any audio flows: a bad upgrade signature closes before accept
(HTTP 403); a missing or wrong per-call stream token closes right after `start` (1008).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from audio.codec import ulaw_decode
from audio.frames import AudioFrame
from gateway.context import GatewayContext, call_plan
from gateway.logs import call_id_var
from gateway.lost_calls import CallLease
from gateway.outbound import outbound_token_subject
from gateway.recording import CallRecorder
from gateway.session import CallSession
from gateway.twilio_transport import TwilioTransport
from storage import CallNotFound, CallRecord, CallStatus
from telephony.errors import ProtocolError, SignatureError
from telephony.twilio import (
    AudioReceived,
    DtmfReceived,
    MarkPlayed,
    MediaStreamProtocol,
    Start,
    StreamStarted,
    StreamStopped,
    stream_url_for,
    verify_stream_token,
)

log = logging.getLogger(__name__)

POLICY_VIOLATION = 1008


async def twilio_stream_endpoint(websocket: WebSocket) -> None:
    """Serve one Twilio Media Stream until `stop`, a hang-up, or bad input."""
    ctx: GatewayContext = websocket.app.state.gateway
    url = stream_url_for(ctx.settings.public_url)
    try:
        ctx.twilio_validator.check(url, {}, websocket.headers.get("x-twilio-signature"))
    except SignatureError as exc:
        log.warning("stream upgrade refused: %s", exc)
        await websocket.close(code=POLICY_VIOLATION)  # before accept: an HTTP 403
        return
    await websocket.accept()
    await _StreamDriver(ctx, websocket).run()


async def _cancelled(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _StreamDriver:
    def __init__(self, ctx: GatewayContext, websocket: WebSocket) -> None:
        self._ctx = ctx
        self._ws = websocket
        self._protocol = MediaStreamProtocol()
        self._session: CallSession | None = None
        self._transport: TwilioTransport | None = None
        self._recorder: CallRecorder | None = None
        self._pacer: asyncio.Task[None] | None = None
        self._deadline: asyncio.Task[None] | None = None
        self._lease: asyncio.Task[None] | None = None
        self._start_writes: asyncio.Task[None] | None = None

    async def run(self) -> None:
        end_reason, status = "stream-closed", CallStatus.COMPLETED
        close_code, close_reason = 1000, "call ended"
        try:
            end_reason, status = await self._receive_loop()
        except ProtocolError as exc:
            log.warning(
                "media stream closed on bad input: %s", exc.reason, extra={"code": exc.code}
            )
            self._ctx.metrics.protocol_errors_total += 1
            end_reason, status = "protocol-error", CallStatus.FAILED
            close_code, close_reason = exc.code, exc.reason
        except SignatureError as exc:
            log.warning("media stream refused: %s", exc)
            end_reason, status = "stream-token-refused", CallStatus.FAILED
            close_code, close_reason = POLICY_VIOLATION, str(exc)[:120]
        except Exception:  # the connection task ends here: log with the call id, close
            log.exception("media stream failed")
            end_reason, status = "gateway-error", CallStatus.FAILED
            close_code, close_reason = 1011, "internal error"
        finally:
            # Finalise what is stored before the peer sees the socket close. The lease stops
            # first: FerretDB writes whole documents back, so a renewal racing the final
            # writes could undo them.
            await _cancelled(self._lease)
            if self._start_writes is not None:
                try:
                    await self._start_writes
                except Exception:  # the stream's task ends here: log it, finalise anyway
                    log.exception("recording the stream start failed")
            if self._recorder is not None:
                try:
                    await self._recorder.finish()
                except Exception:  # salvage completes what was uploaded; finalise anyway
                    log.exception("finishing the recording failed")
            if self._session is not None:
                await self._session.end(reason=end_reason, status=status)
                self._ctx.metrics.calls_active -= 1
                stats = self._transport.stats if self._transport else None
                log.info("media stream closed", extra={"pacing": stats})
            if self._deadline is not asyncio.current_task():  # not from inside itself
                await _cancelled(self._deadline)
            await _cancelled(self._pacer)
            if self._ctx.outbox is not None:
                self._ctx.outbox.poke()
            await self._close(close_code, close_reason)

    async def _receive_loop(self) -> tuple[str, CallStatus]:
        max_bytes = self._ctx.settings.max_ws_message_bytes
        while True:
            message = await self._ws.receive()
            if message["type"] == "websocket.disconnect":
                if self._session is not None and self._session.ended.is_set():
                    return self._session.end_reason or "agent-ended", CallStatus.COMPLETED
                return "stream-disconnected", CallStatus.COMPLETED
            text = message.get("text")
            if text is None:
                raise ProtocolError(1003, "Media Streams messages are text frames")
            if len(text) > max_bytes:
                raise ProtocolError(1009, "message too big")
            self._protocol.receive_text(text)
            for event in self._protocol.events():
                if isinstance(event, AudioReceived):
                    self._ctx.metrics.inbound_frames_total += 1
                    if self._session is not None:
                        pcm = ulaw_decode(event.payload)
                        if self._recorder is not None:
                            self._recorder.caller_audio(event.timestamp_ms, pcm)
                        await self._session.on_audio(AudioFrame(pcm, 8000))
                elif isinstance(event, MarkPlayed):
                    if self._session is not None:
                        self._session.on_mark(event.name)
                elif isinstance(event, DtmfReceived):
                    if self._session is not None:
                        await self._session.on_dtmf(event.digit)
                elif isinstance(event, StreamStarted):
                    await self._start_session(event.start)
                elif isinstance(event, StreamStopped):
                    return "caller-hung-up", CallStatus.COMPLETED

    async def _start_session(self, start: Start) -> None:
        ctx = self._ctx
        started = time.monotonic()  # Twilio's media timestamps count from here
        params = start.custom_parameters
        token = params.get("token")
        if not token:
            raise SignatureError("missing stream token")
        call_id = params.get("call_id", "")
        try:
            verify_stream_token(ctx.stream_token_secret, token, start.call_sid, now=time.time())
        except SignatureError:
            # Outbound calls: the token was made before Twilio gave the call its sid.
            subject = outbound_token_subject(call_id)
            verify_stream_token(ctx.stream_token_secret, token, subject, now=time.time())
        try:
            call = await ctx.store.get_call(call_id, with_turns=False)
        except CallNotFound as exc:
            raise SignatureError("stream token names no call of this gateway") from exc
        if call.call_sid and call.call_sid != start.call_sid:
            raise SignatureError("stream token belongs to another call")
        call_id_var.set(call.id)
        # Bookkeeping writes run beside the greeting, not before it (awaited at the end).
        self._start_writes = asyncio.create_task(
            self._record_start(call, start), name="record-stream-start"
        )
        plan = await call_plan(ctx, call)
        if ctx.recordings is not None and plan.recording:
            self._recorder = CallRecorder(
                call_id=call.id,
                key=ctx.recordings.key_for(call.org_id, call.id, "wav"),
                bucket=ctx.recordings,
                store=ctx.store,
                rate=TwilioTransport.sample_rate,
                encoding=ctx.settings.recording_encoding,
                part_bytes=ctx.settings.recording_part_bytes,
                origin=started,
            )
            self._recorder.start()
        self._transport = TwilioTransport(
            protocol=self._protocol,
            send_text=self._ws.send_text,
            close=lambda: self._close(1000, "call ended"),
            metrics=ctx.metrics,
            lead_ms=ctx.settings.playout_lead_ms,
            transfer=self._transfer_for(start.call_sid),
            recorder=self._recorder,
        )
        self._pacer = asyncio.create_task(self._transport.run(), name="pacer")
        self._session = CallSession(
            call_id=call.id,
            transport=self._transport,
            providers=plan.providers,
            store=ctx.store,
            config=ctx.session_config,
            metrics=ctx.metrics,
        )
        ctx.metrics.calls_started_total += 1
        ctx.metrics.calls_active += 1
        log.info("media stream started", extra={"call_sid": start.call_sid})
        await self._session.start()
        self._deadline = asyncio.create_task(
            self._end_after(plan.max_duration_s), name="max-duration"
        )

    async def _record_start(self, call: CallRecord, start: Start) -> None:
        store = self._ctx.store
        lease = CallLease(store, call.id, lease_s=self._ctx.settings.call_lease_s)
        await lease.renew()
        self._lease = asyncio.create_task(lease.run(), name="call-lease")
        if not call.call_sid:
            await store.set_call_sid(call.id, start.call_sid)
        await store.set_stream(call.id, start.stream_sid)
        await store.set_status(call.id, CallStatus.IN_PROGRESS)

    async def _end_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self._session is not None and not self._session.ended.is_set():
            log.info("call reached its maximum duration", extra={"seconds": seconds})
            await self._session.end(reason="max-duration")
            await self._close(1000, "maximum call duration")

    def _transfer_for(self, call_sid: str) -> Callable[[str], Awaitable[None]] | None:
        calls = self._ctx.twilio_calls
        if calls is None:
            return None

        async def transfer(to: str) -> None:
            await calls.transfer(call_sid, to)

        return transfer

    async def _close(self, code: int, reason: str) -> None:
        if self._ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                await self._ws.close(code=code, reason=reason)
