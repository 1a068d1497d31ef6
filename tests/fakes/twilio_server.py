"""A local server that answers like Twilio's REST Calls API (`/2010-04-01/Accounts/...`).

The `twilio` SDK is pointed at it with `client.api.base_url`. It checks HTTP Basic auth
(account SID + auth token, from the control settings), takes form-encoded parameters as
Twilio does, and answers with Call resources in Twilio's JSON shape, or Twilio's error
shape (`code`, `message`, `more_info`, `status`). `GET /control/log` lists the requests.

Like Twilio, a call created with a `StatusCallback` gets signed progress callbacks
(`X-Twilio-Signature`, made with the SDK's own `RequestValidator`): `initiated` and
`ringing` at once; the test then plays the callee with
`POST /control/calls/{sid}/status {"status": "in-progress" | "completed" | "busy" | ...}`.

A number scripted with `POST /control/numbers {"+15550001": {"answer": "human" | "busy" |
"no-answer" | "failed" | "machine", ...options}}` (options: `tests/fakes/twilio_callee.py`
`CalleeScript`) plays its callee by itself instead: progress callbacks, a Media Streams leg
to the gateway, the answering-machine verdict if asked for, `completed` at the end. A REST
update with `Status=completed` hangs it up. `GET /control/calls/{sid}` is its record
(what the callee said and heard, and when).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from tests.fakes.twilio_callee import CalleeScript, ScriptedCallee

_settings: dict[str, Any] = {}
_calls: dict[str, dict[str, Any]] = {}
_log: list[dict[str, Any]] = []
_callbacks: dict[str, dict[str, Any]] = {}  # sid -> {"url", "form", "sequence", "answered"}
_tasks: set[asyncio.Task[None]] = set()
_numbers: dict[str, CalleeScript] = {}  # scripted callees by number
_callees: dict[str, ScriptedCallee] = {}  # by CallSid


def _defaults() -> dict[str, Any]:
    return {"account_sid": "AC" + "0" * 32, "auth_token": "test-twilio-token"}


_settings.update(_defaults())


def _error(status: int, code: int, message: str) -> JSONResponse:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return JSONResponse(body, status_code=status)


def _authorised(request: Request, account_sid: str) -> bool:
    header = request.headers.get("authorization", "")
    if not header.startswith("Basic "):
        return False
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user == _settings["account_sid"] == account_sid and password == _settings["auth_token"]


def _rfc2822(now: datetime) -> str:
    return now.strftime("%a, %d %b %Y %H:%M:%S +0000")


def _resource(sid: str, account_sid: str, form: dict[str, str]) -> dict[str, Any]:
    now = _rfc2822(datetime.now(UTC))
    return {
        "sid": sid,
        "account_sid": account_sid,
        "to": form.get("To", ""),
        "to_formatted": form.get("To", ""),
        "from": form.get("From", ""),
        "from_formatted": form.get("From", ""),
        "status": "queued",
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "date_created": now,
        "date_updated": now,
        "start_time": None,
        "end_time": None,
        "duration": None,
        "price": None,
        "price_unit": "USD",
        "answered_by": None,
        "caller_name": None,
        "forwarded_from": None,
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": None,
        "queue_time": "0",
        "trunk_sid": None,
        "annotation": None,
        "uri": f"/2010-04-01/Accounts/{account_sid}/Calls/{sid}.json",
        "subresource_uris": {},
    }


async def create_call(request: Request) -> JSONResponse:
    account_sid = request.path_params["account_sid"]
    form = {k: str(v) for k, v in (await request.form()).items()}
    _log.append({"method": "POST", "path": request.url.path, "form": form})
    if not _authorised(request, account_sid):
        return _error(401, 20003, "Authenticate")
    for required in ("To", "From"):
        if required not in form:
            return _error(400, 21201, f"No '{required}' number is specified")
    if "Url" not in form and "Twiml" not in form and "ApplicationSid" not in form:
        return _error(400, 21205, "Url parameter is required.")
    sid = "CA" + secrets.token_hex(16)
    _calls[sid] = _resource(sid, account_sid, form)
    script = _numbers.get(form["To"])
    if "StatusCallback" in form:
        _callbacks[sid] = {
            "url": form["StatusCallback"],
            "sequence": 0,
            "answered_at": None,
            # Synchronous AMD puts AnsweredBy on the answered callback; asynchronous AMD
            # posts it to AsyncAmdStatusCallback instead.
            "machine_detection": "MachineDetection" in form and form.get("AsyncAmd") != "true",
            "form": {
                "AccountSid": account_sid,
                "ApiVersion": "2010-04-01",
                "CallSid": sid,
                "Called": form["To"],
                "Caller": form["From"],
                "Direction": "outbound-api",
                "From": form["From"],
                "To": form["To"],
                "CallbackSource": "call-progress-events",
            },
        }
    if script is not None:
        if "Twiml" not in form and script.answer in ("human", "machine"):
            return _error(400, 21205, "this fake's scripted callees follow inline Twiml only")
        callee = ScriptedCallee(
            sid=sid,
            account_sid=account_sid,
            form=form,
            script=script,
            auth_token=_settings["auth_token"],
            send_status=_status_if_asked,
        )
        _callees[sid] = callee
        _spawn(callee.run())
    elif "StatusCallback" in form:
        _spawn(_progress(sid, ["initiated", "ringing"]))
    return JSONResponse(_calls[sid], status_code=201)


def _spawn(work: Any) -> None:
    task = asyncio.create_task(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _status_if_asked(sid: str, status: str) -> int | None:
    """A scripted call's progress: its signed callback if it asked for them."""
    if sid in _callbacks:
        return await _send_status(sid, status)
    _calls[sid]["status"] = status
    return None


async def _send_status(sid: str, status: str, answered_by: str | None = None) -> int:
    """POST one signed status callback as Twilio does; returns the receiver's HTTP status."""
    state = _callbacks[sid]
    state["sequence"] += 1
    form = {
        **state["form"],
        "CallStatus": status,
        "SequenceNumber": str(state["sequence"] - 1),
        "Timestamp": _rfc2822(datetime.now(UTC)),
    }
    if status == "in-progress":
        state["answered_at"] = time.monotonic()
        if state["machine_detection"] or answered_by:
            form["AnsweredBy"] = answered_by or "human"
    if status == "completed" and state["answered_at"] is not None:
        duration = str(round(time.monotonic() - state["answered_at"]))
        form |= {"CallDuration": duration, "Duration": duration}
    _calls[sid]["status"] = status
    signature = RequestValidator(_settings["auth_token"]).compute_signature(state["url"], form)
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            state["url"], data=form, headers={"X-Twilio-Signature": signature}
        )
    _log.append(
        {"method": "CALLBACK", "sid": sid, "status": status, "answer": response.status_code}
    )
    return response.status_code


async def _progress(sid: str, statuses: list[str]) -> None:
    for status in statuses:
        await asyncio.sleep(0.05)
        await _send_status(sid, status)


async def update_call(request: Request) -> JSONResponse:
    account_sid = request.path_params["account_sid"]
    sid = request.path_params["call_sid"]
    form = {k: str(v) for k, v in (await request.form()).items()}
    _log.append({"method": "POST", "path": request.url.path, "form": form})
    if not _authorised(request, account_sid):
        return _error(401, 20003, "Authenticate")
    call = _calls.setdefault(sid, _resource(sid, account_sid, {}))
    if sid.startswith("CAgone"):
        return _error(404, 20404, f"The requested resource {request.url.path} was not found")
    if "Status" in form:
        call["status"] = form["Status"]
        callee = _callees.get(sid)
        if callee is not None and form["Status"] in ("completed", "canceled"):
            callee.hangup.set()  # Twilio ends the call: the stream gets `stop`
    call["date_updated"] = _rfc2822(datetime.now(UTC))
    return JSONResponse(call)


async def control(request: Request) -> JSONResponse:
    _settings.update(await request.json())
    return JSONResponse({"ok": True})


async def control_call_status(request: Request) -> JSONResponse:
    """Play the callee: make the call move to `status`, with its signed callback."""
    sid = request.path_params["call_sid"]
    if sid not in _callbacks:
        return JSONResponse({"error": "no such call with a status callback"}, status_code=404)
    body = await request.json()
    pending = [t for t in _tasks if not t.done()]
    if pending:  # earlier callbacks go first, as Twilio orders them
        await asyncio.gather(*pending, return_exceptions=True)
    code = await _send_status(sid, body["status"], body.get("answered_by"))
    return JSONResponse({"callback_status": code})


async def control_numbers(request: Request) -> JSONResponse:
    """Script how numbers answer: `{"+1555...": {"answer": ..., ...options}}` (merged)."""
    body = await request.json()
    try:
        scripts = {number: CalleeScript.parse(raw) for number, raw in body.items()}
    except (TypeError, ValueError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    _numbers.update(scripts)
    return JSONResponse({"numbers": sorted(_numbers)})


async def control_call(request: Request) -> JSONResponse:
    """A scripted call's record: what its callee said and heard, and when."""
    callee = _callees.get(request.path_params["call_sid"])
    if callee is None:
        return JSONResponse({"error": "no scripted call with that sid"}, status_code=404)
    return JSONResponse({**callee.snapshot(), "status": _calls[callee.record.sid]["status"]})


async def control_log(request: Request) -> JSONResponse:
    return JSONResponse(_log)


async def control_reset(request: Request) -> JSONResponse:
    for callee in _callees.values():
        callee.hangup.set()
    running = [t for t in _tasks if not t.done()]
    await asyncio.gather(*running, return_exceptions=True)
    _numbers.clear()
    _callees.clear()
    _log.clear()
    _calls.clear()
    _callbacks.clear()
    _settings.clear()
    _settings.update(_defaults())
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/2010-04-01/Accounts/{account_sid}/Calls.json", create_call, methods=["POST"]),
        Route(
            "/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json",
            update_call,
            methods=["POST"],
        ),
        Route("/control", control, methods=["POST"]),
        Route("/control/calls/{call_sid}/status", control_call_status, methods=["POST"]),
        Route("/control/calls/{call_sid}", control_call, methods=["GET"]),
        Route("/control/numbers", control_numbers, methods=["POST"]),
        Route("/control/log", control_log, methods=["GET"]),
        Route("/control/reset", control_reset, methods=["POST"]),
    ]
)
