"""Twilio's HTTP webhooks: `POST /twilio/voice` answers with TwiML (an inbound call after
its caller lookup, `gateway/call/lookup.py`), `POST /twilio/status` records call progress,
`POST /twilio/amd` takes an outbound call's answering-machine verdict (`AnsweredBy`) to its
voicemail gate (`gateway/call/voicemail.py`). Each verifies `X-Twilio-Signature` over the
public URL. A voice webhook for a call that ended or has had its stream (a replay) gets a
hang-up, no token. A new call that this process has no room for
(`gateway/call/admission.py`) is answered at once, before anything is read from the
database, with `<Reject reason="busy"/>` (or OVERFLOW_TWIML); it is stored as
`busy`/`gateway-full` after the answer has gone.

A final status (`completed`, `busy`, ...) never finishes a call under a live stream: the
stream still has turns and usage to store, and the report is built from what is stored. A
call this process serves is ended through its lifecycle (the first reason given is kept);
a call another gateway serves is not written here at all: the carrier's end (and its
`AnsweredBy`) is recorded beside it, and its gateway finishes it; if that gateway is dead,
the lost-call sweeper finishes it with the carrier's status, judging the heartbeat on its
own clock (no two machines' clocks are compared). Only a call no gateway serves (never
streamed, or lost and finished) is finished here."""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from datetime import UTC, datetime

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from gateway.call.admission import GATEWAY_FULL, Refusal
from gateway.call.records import CallInputLimits, open_call, record_refused_call
from gateway.call.voicemail import verdict_of_answered_by
from gateway.errors import (
    MissingPlaceholders,
    RequestInvalid,
    UnsupportedMediaType,
    error_response,
)
from gateway.logs import call_id_var
from gateway.services import Services
from gateway.twilio.stream_claim import stream_refused
from storage import CallNotFound, CallRecord, CallStatus, Direction, StorageError
from telephony.errors import SignatureError
from telephony.twilio import (
    connect_stream_twiml,
    hang_up_twiml,
    issue_stream_token,
    reject_twiml,
    say_and_hang_up_twiml,
    stream_url_for,
)

log = logging.getLogger(__name__)

# Twilio's CallStatus values, as its status callbacks send them ("initiated" is queued).
_STATUSES = {s.value: s for s in CallStatus} | {"initiated": CallStatus.QUEUED}
# What a caller hears when the number's assistant cannot run (it is logged).
_UNAVAILABLE = "Sorry, this number cannot take calls right now. Goodbye."
# X-Twilio-Signature is base64 of an HMAC-SHA1 (20 bytes: 28 characters).
_SIGNATURE_SHAPE = re.compile(r"[A-Za-z0-9+/]{27}=")
# Twilio's voice and status webhooks carry a few dozen fields.
_MAX_FORM_FIELDS = 200
# Refused calls waiting to be stored, per process (written one at a time,
# `Admission.refusal_writes`): past it a refusal is only logged and counted, so that a
# flood of calls is never more than a short queue of database writes beside live calls.
_MAX_REFUSALS_STORING = 256


def _twiml(body: str) -> Response:
    return Response(body, media_type="application/xml")


def _signature_header(request: Request) -> str:
    """X-Twilio-Signature, checked for shape before any of the body is read."""
    signature = request.headers.get("x-twilio-signature")
    if not signature:
        raise SignatureError("missing X-Twilio-Signature")
    if not _SIGNATURE_SHAPE.fullmatch(signature):
        raise SignatureError("malformed X-Twilio-Signature")
    return signature


def _form_fields(raw: bytes) -> dict[str, str]:
    """A urlencoded body's fields (the last of a repeated name, as Starlette's form has it)."""
    try:
        text = raw.decode("utf-8")
        pairs = urllib.parse.parse_qsl(
            text, keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS, errors="strict"
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestInvalid("the webhook body is not a urlencoded form") from exc
    return dict(pairs)


async def _verified_form(request: Request, services: Services) -> dict[str, str]:
    """The form fields of a Twilio webhook, after its signature checked out.

    The signature's shape and the content type are checked first; the body is read only
    then, capped (`BodySizeLimit`), and parsed as a urlencoded form, never as multipart.
    """
    signature = _signature_header(request)
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType("Twilio webhooks are application/x-www-form-urlencoded")
    params = _form_fields(await request.body())
    url = services.settings.public_url_for(request.url.path)
    if request.url.query:
        url += "?" + request.url.query
    services.twilio.validator.check(url, params, signature)
    return params


async def twilio_voice(request: Request) -> Response:
    """Answer a call: store it, then connect its audio to our Media Streams endpoint."""
    services: Services = request.app.state.services
    form = await _verified_form(request, services)
    call_sid = form.get("CallSid", "")
    if not call_sid:
        return error_response(400, "invalid_request", "CallSid is required")
    settings = services.settings
    full = services.admission.admit(call_sid, hold_s=settings.admission_hold_s)
    if full is not None:  # before any read: a full gateway answers at once
        return _refuse(services, form, full)
    try:
        return await _answer(services, form, call_sid)
    except BaseException:
        services.admission.release(call_sid)
        raise


async def _answer(services: Services, form: dict[str, str], call_sid: str) -> Response:
    """The TwiML of an admitted call (its place held under `call_sid` until its stream
    starts; given up here if it gets no stream)."""
    db = services.database
    call = await db.calls.get_call_by_sid(call_sid)
    if call is not None:
        refused = await stream_refused(db, call)
        if refused is not None:  # a replay: no new token, nothing stored changes
            services.admission.release(call_sid)
            call_id_var.set(call.id)
            log.warning(
                "voice webhook replayed: %s; hanging up", refused, extra={"call_sid": call_sid}
            )
            return _twiml(hang_up_twiml())
    else:
        # A new call while draining: 503, which the balancer retries on another gateway
        # (with no balancer, Twilio tries the number's fallback URL, if one is set).
        services.draining.refuse_new_call()
        to_number = form.get("To", "")
        assistant = await db.assistants.for_number(to_number)
        limits = CallInputLimits.of(services.settings)
        try:
            if form.get("Direction", "inbound") == "inbound":  # the caller lookup first
                call = await services.lookup.open_inbound(
                    assistant=assistant,
                    transport="twilio",
                    from_number=form.get("From", ""),
                    to_number=to_number,
                    call_sid=call_sid,
                    limits=limits,
                )
            else:
                call = await open_call(
                    db.calls,
                    db.accounts,
                    assistant=assistant,
                    transport="twilio",
                    direction=Direction.OUTBOUND,
                    from_number=form.get("From", ""),
                    to_number=to_number,
                    call_sid=call_sid,
                    limits=limits,
                )
        except MissingPlaceholders as exc:
            services.admission.release(call_sid)
            assistant_id = assistant.id if assistant else None
            log.error("assistant cannot answer: %s", exc, extra={"assistant_id": assistant_id})
            return _twiml(say_and_hang_up_twiml(_UNAVAILABLE))
    call_id_var.set(call.id)
    settings = services.settings
    token = issue_stream_token(
        services.twilio.stream_token_key,
        call_id=call.id,
        subject=call_sid,
        now=time.time(),
        ttl_s=settings.stream_token_ttl_s,
    )
    twiml = connect_stream_twiml(
        stream_url_for(settings.public_url),
        {"call_id": call.id, "token": token, "from": call.from_number, "to": call.to_number},
    )
    log.info("call answered", extra={"call_sid": call_sid, "from": call.from_number})
    return _twiml(twiml)


def _refuse(services: Services, form: dict[str, str], refusal: Refusal) -> Response:
    """Answer a call this process has no room for: `<Reject reason="busy"/>` (the caller
    hears a busy tone; Twilio bills nothing) or the operator's OVERFLOW_TWIML (e.g. a
    `<Dial>` to an overflow number). It is logged and counted now, and stored as
    busy/gateway-full once the answer has gone (a replay of a stored call stores nothing)."""
    call_sid = form.get("CallSid", "")
    services.metrics.call_refused("twilio", refusal.cause)
    log.warning(
        "call refused: the gateway is full",
        extra={"call_sid": call_sid, "from": form.get("From", ""), **refusal.log_fields()},
    )
    twiml = services.settings.overflow_twiml or reject_twiml("busy")
    return Response(
        twiml,
        media_type="application/xml",
        background=BackgroundTask(_store_refused, services, form),
    )


async def _store_refused(services: Services, form: dict[str, str]) -> None:
    """Store a refused Twilio call as busy/gateway-full (its report is owed as any finished
    call's); a database that fails is logged: the call was refused all the same."""
    call_sid, admission = form.get("CallSid", ""), services.admission
    if admission.refusals_storing >= _MAX_REFUSALS_STORING:
        services.metrics.refused_calls_unstored_total += 1
        log.warning("refused call not stored: too many waiting", extra={"call_sid": call_sid})
        return
    admission.refusals_storing += 1
    try:
        async with admission.refusal_writes:
            await _write_refused(services, form)
    except StorageError as exc:
        log.warning("a refused call could not be stored: %s", exc, extra={"call_sid": call_sid})
    finally:
        admission.refusals_storing -= 1


async def _write_refused(services: Services, form: dict[str, str]) -> None:
    db, call_sid = services.database, form.get("CallSid", "")
    if await db.calls.get_call_by_sid(call_sid) is not None:
        return  # a replayed webhook of a call stored before: it stays as it is
    inbound = form.get("Direction", "inbound") == "inbound"
    to_number = form.get("To", "")
    call = await record_refused_call(
        db.calls,
        db.accounts,
        assistant=await db.assistants.for_number(to_number),
        transport="twilio",
        direction=Direction.INBOUND if inbound else Direction.OUTBOUND,
        from_number=form.get("From", ""),
        to_number=to_number,
        call_sid=call_sid,
        end_reason=GATEWAY_FULL,
    )
    call_id_var.set(call.id)
    log.info("refused call stored", extra={"call_sid": call_sid, "status": call.status.value})
    await services.events.status(call, call.status)
    services.outbox.poke()  # its report goes out now, not at the next poll


async def _status_target(
    services: Services, call_id: str | None, call_sid: str
) -> CallRecord | None:
    """The call a status callback is about: by our id (outbound calls carry it), else by sid."""
    calls = services.database.calls
    if call_id:
        try:
            call = await calls.get_call(call_id, with_turns=False)
        except CallNotFound:
            return None
        # The signature proves Twilio sent it; the sid check keeps it to its own call.
        if call.call_sid and call.call_sid != call_sid:
            log.warning("status callback names another call", extra={"call_sid": call_sid})
            return None
        if not call.call_sid:
            await calls.set_call_sid(call.id, call_sid)
        return call
    return await calls.get_call_by_sid(call_sid)


async def twilio_status(request: Request) -> Response:
    """Record a status callback (queued, ringing, in-progress, completed, busy, no-answer...)."""
    services: Services = request.app.state.services
    form = await _verified_form(request, services)
    call = await _status_target(
        services, request.query_params.get("call_id"), form.get("CallSid", "")
    )
    status = _STATUSES.get(form.get("CallStatus", ""))
    if call is None or status is None:
        log.info("status callback ignored", extra={"call_sid": form.get("CallSid")})
        return Response(status_code=204)
    call_id_var.set(call.id)
    calls = services.database.calls
    log.info("call status", extra={"status": status.value, "call_sid": call.call_sid})
    final = status not in (CallStatus.QUEUED, CallStatus.RINGING, CallStatus.IN_PROGRESS)
    reason = f"twilio-{status.value}"
    live = services.calls.live.get(call.id)
    now = datetime.now(UTC)
    if live is None and _served_elsewhere(services, call):
        # Its document is left to its gateway (FerretDB 1.24 rewrites a document whole, so
        # a write here could undo that gateway's own), and whether it is alive is left to
        # the sweeper, which judges heartbeats on its own clock, never on another's.
        if form.get("AnsweredBy"):
            await calls.record_carrier_answer(call.id, form["AnsweredBy"], at=now)
        if final:
            await calls.record_carrier_end(call.id, status=status, reason=reason, at=now)
            log.info(
                "carrier ended a call another gateway serves", extra={"served_by": call.served_by}
            )
        return Response(status_code=204)
    if form.get("AnsweredBy"):
        await calls.set_answered_by(call.id, form["AnsweredBy"])
    if not final:
        if await calls.set_status(call.id, status):
            await services.events.status(call, status)
        return Response(status_code=204)
    # A call that ended before its stream started here holds no place any more.
    services.admission.release(call.id)  # outbound: held under its id while it rang
    if call.call_sid:
        services.admission.release(call.call_sid)  # inbound: under its CallSid
    if live is not None:  # served here: its lifecycle finishes it after its last writes
        live.request_end(reason, status)
        return Response(status_code=204)
    finished = await calls.finish_call(call.id, status=status, end_reason=reason, ended_at=now)
    await services.events.status(call, finished.status)
    return Response(status_code=204)


def _served_elsewhere(services: Services, call: CallRecord) -> bool:
    """True if another gateway took the call and has not finished it (whether that gateway
    is alive is the lost-call sweeper's judgement: it finishes the call if not)."""
    gateway_id = call.served_by
    return (
        call.ended_at is None
        and gateway_id is not None
        and gateway_id != services.calls.live.gateway_id
    )


async def twilio_amd(request: Request) -> Response:
    """Take an asynchronous answering-machine verdict (`AsyncAmdStatusCallback`). A call
    served here: its gate has it at once, and `answered_by` is written with the call's own
    writes. Any other open call (another gateway serves it, or its stream has not started):
    the verdict is kept beside the call (`record_carrier_answer`, never a rewrite of its
    document), where the serving gateway's gate looks for it and the call's finish copies
    it. A verdict for an unknown or finished call is ignored (204)."""
    services: Services = request.app.state.services
    form = await _verified_form(request, services)
    answered_by = form.get("AnsweredBy", "")
    call = await _status_target(
        services, request.query_params.get("call_id"), form.get("CallSid", "")
    )
    verdict = verdict_of_answered_by(answered_by)
    if call is None or verdict is None or call.ended_at is not None:
        log.info(
            "machine detection callback ignored",
            extra={"call_sid": form.get("CallSid"), "answered_by": answered_by},
        )
        return Response(status_code=204)
    call_id_var.set(call.id)
    log.info(
        "machine detection",
        extra={
            "answered_by": answered_by,
            "detection_ms": form.get("MachineDetectionDuration"),
            "call_sid": call.call_sid,
        },
    )
    calls = services.database.calls
    live = services.calls.live.get(call.id)
    gate = live.callee_gate if live is not None else None
    if live is not None:
        live.beside(lambda: calls.set_answered_by(call.id, answered_by), "answered by")
    if gate is not None:
        gate.verdict(verdict[0], takes_message=verdict[1])
    else:  # its gate (on whichever gateway, once it is made) finds it there
        await calls.record_carrier_answer(call.id, answered_by, at=datetime.now(UTC))
    return Response(status_code=204)
