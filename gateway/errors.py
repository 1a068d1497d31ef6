"""The gateway's error tree, and how its edge maps each error to an HTTP status (here) or a
WebSocket close code (`ProtocolError` carries its own).

Every exception a package of the gateway raises is one of these; `tests/unit/
test_error_tree.py` fails when a new one is not listed. Dependencies point one way, so
`telephony/`, `storage/` and `webhooks/` each have a root of their own:

    GatewayError                gateway/errors.py
    ├── ConfigError             settings that cannot work (start-up fails loudly)
    ├── AuthError               missing, wrong or revoked API key (or a dashboard
    │                           session that is forged, expired or whose key was revoked)
    │                                                                            -> 401
    ├── CsrfRefused             a change made with a dashboard session cookie without
    │                           that session's CSRF token                        -> 403
    ├── RequestInvalid          body or query that does not match its model      -> 422
    │   ├── InputTooLarge       a field over its cap (metadata, filled prompt, JSON depth)
    │   │                       -> 422 naming the field
    │   └── ContactsRejected    a campaign's contact upload with rejected rows: nothing is
    │                           added -> 422 `contacts_rejected`, details [{row, reason}]
    ├── BadRequest              input refused outside a model, e.g. a Last-Event-ID that
    │                           is not a place of the organisation's events      -> 400
    ├── BodyTooLarge            a request body over its route's cap (counted as it
    │                           arrives, before any parsing)                     -> 413
    ├── UnsupportedMediaType    a Twilio webhook that is not a urlencoded form   -> 415
    ├── MissingPlaceholders     call metadata lacks a {{name}} the assistant uses -> 422
    ├── ConflictError           clashes with what is stored                      -> 409
    ├── NotConfigured           a feature whose settings are unset               -> 503
    ├── GatewayFull             this process is at its bound on live calls or its event
    │                           loop lags (gateway/call/admission.py): a new call is not
    │                           taken -> 503 with Retry-After (Twilio's voice webhook
    │                           answers `<Reject reason="busy"/>` instead)
    ├── GatewayDraining         a new call asked of a gateway that drains (SIGTERM):
    │                           another gateway takes it              -> 503 + Retry-After
    ├── OrganizationAtCapacity  an outbound call while the organisation's live calls are
    │                           at its cap less its inbound reserve
    │                           (gateway/call/capacity.py)            -> 429 + Retry-After
    ├── LookupFailed            a caller lookup with no usable answer (`outcome`: timeout,
    │                           error, invalid, refused): the call is answered with the
    │                           assistant's defaults, logged and counted
    ├── StreamEnded             gateway/event_feed.py: an event stream's subscription is
    │                           over (dropped for not reading, or shutdown): the stream ends
    ├── ProviderError           an STT / LLM / TTS failure (`retryable`): the call retries
    │                           once, then apologises, and goes on
    └── RecordingError          S3 refused or unreachable: the call goes on, the
                                outbox salvages the upload later
    TelephonyError              telephony/errors.py
    ├── ProtocolError           bad Media Streams input        -> WS close code and reason
    ├── StreamClosed            a send on a media stream whose socket is gone: the
    │                           pacer stops quietly (the call is ending anyway)
    ├── SignatureError          bad X-Twilio-Signature, stream token or LiveKit
    │                           webhook token                  -> 403 (or close 1008)
    │                           (a replayed stream start too: a used token, an ended call)
    ├── CarrierError            Twilio / LiveKit refused to place a call -> 422 (a 4xx: the
    │   │                       request's fault) or 502
    │   └── CarrierUnavailable  the carrier's API unreachable (refused, timed out, an
    │                           unreadable answer): the call is failed -> 502
    ├── LiveKitError            LiveKit's API refused or is unreachable -> 422 or 502
    └── TransferError           a transfer is impossible or failed: the call goes on
    StorageError                storage/errors.py               -> 503
    ├── NotFound                no such record in the key's organisation         -> 404
    │   ├── CallNotFound
    │   └── CampaignNotFound    (also another organisation's campaign)
    ├── InvalidCursor           a page cursor this store did not issue           -> 422
    ├── RecordTooLarge          a document over MongoDB's 16 MiB (`DocumentTooLarge`);
    │                           nothing is written                               -> 413
    ├── NumberTaken             a number another assistant of the organisation
    │                           answers                                          -> 409
    ├── NumberUnavailable       a number the organisation may not have (another's or
    │                           reserved; the answer never says whose)           -> 409
    ├── DeliveryBusy            a delivery a gateway is sending right now        -> 409
    ├── CampaignStateConflict   a change a campaign's state forbids (resume a cancelled
    │                           one, contacts for a completed one)               -> 409
    ├── ContactsRaced           an upload racing another one with the same numbers:
    │                           nothing added, send it again                     -> 409
    └── SecretRotationRaced     two rotations of a webhook secret at once        -> 409
    WebhookError                webhooks/errors.py
    ├── UnsafeURL               a URL the SSRF guard refuses -> 422 when an assistant is
    │                           saved; a failed attempt at delivery
    ├── UnresolvedHost          a webhook host that did not resolve: the attempt is retried
    ├── AnswerTooLarge          a caller lookup's answer over its bound: counted invalid
    ├── EventNotDue             call.analyzed before its call's report is queued: the
    │                           analysis stays owed and is published after the report
    └── SignatureMismatch       raised by `webhooks.signing.verify` (what receivers run)
    WavFormatError (ValueError) audio/stereo.py: bytes that are not our WAV; the
                                recording bucket turns it into RecordingError
    ModelMissing                audio/models.py: a turn-taking model (Silero VAD, Smart
                                Turn) absent or failing its sha256 check; its message says
                                how to install it (start-up fails loudly)

A `RecursionError` that reaches the edge (input nested past every bound) answers 422 in
the same shape instead of a bare 500.

Every error answer has one JSON shape, `{"error": {"code", "message", "details"?}}`. A
broad ``except`` appears only where a task ends, and there it logs with the call id.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.metrics import LookupOutcome
from storage import redact_credentials
from storage.errors import (
    CallNotFound,
    CampaignStateConflict,
    ContactsRaced,
    DeliveryBusy,
    InvalidCursor,
    NotFound,
    NumberTaken,
    NumberUnavailable,
    RecordTooLarge,
    SecretRotationRaced,
    StorageError,
)
from telephony.errors import (
    CarrierError,
    CarrierUnavailable,
    LiveKitError,
    ProtocolError,
    SignatureError,
    TelephonyError,
    TransferError,
)
from webhooks.errors import UnsafeURL

__all__ = [
    "HTTP_ERROR_HANDLERS",
    "AuthError",
    "BadRequest",
    "BodyTooLarge",
    "CallNotFound",
    "CarrierError",
    "CarrierUnavailable",
    "ConfigError",
    "ConflictError",
    "ContactsRejected",
    "CsrfRefused",
    "GatewayDraining",
    "GatewayError",
    "GatewayFull",
    "InputTooLarge",
    "LiveKitError",
    "LookupFailed",
    "MissingPlaceholders",
    "NotConfigured",
    "NotFound",
    "OrganizationAtCapacity",
    "ProtocolError",
    "ProviderError",
    "RecordingError",
    "RequestInvalid",
    "SignatureError",
    "StorageError",
    "TelephonyError",
    "TransferError",
    "UnsupportedMediaType",
    "error_response",
]

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """Root of the gateway's own errors."""


class ConfigError(GatewayError):
    """Settings that cannot work."""


class AuthError(GatewayError):
    """Missing, wrong or revoked API key."""


class CsrfRefused(GatewayError):
    """A change made with a dashboard session cookie lacks the session's CSRF token."""


class RequestInvalid(GatewayError):
    """A body or query that does not match its model: HTTP 422 with the validation details."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.details = details


class InputTooLarge(RequestInvalid):
    """A field of the input over its cap: 422 whose details name the field (`loc`)."""

    def __init__(self, loc: Sequence[str], message: str) -> None:
        super().__init__(message, [{"loc": list(loc), "msg": message, "type": "too_large"}])
        self.loc = list(loc)


class ContactsRejected(RequestInvalid):
    """A contact upload with rejected rows (nothing was added): `rows` is the report, each
    `{"row": <as the user counts it>, "reason": ...}`, the first `REPORT_MAX` of `rejected`."""

    REPORT_MAX = 1000

    def __init__(self, rows: Sequence[dict[str, Any]], *, rejected: int, total: int) -> None:
        shown = "" if rejected <= len(rows) else f" (the first {len(rows)} listed)"
        super().__init__(
            f"{rejected} of {total} contacts rejected{shown}: nothing was added", list(rows)
        )
        self.rejected = rejected


class BadRequest(GatewayError):
    """Input a model does not describe and the route refuses: HTTP 400 naming where it was."""

    def __init__(self, loc: Sequence[str], message: str) -> None:
        super().__init__(message)
        self.loc = list(loc)


class BodyTooLarge(GatewayError):
    """A request body over the route's cap; raised while the body streams in."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is over {limit} bytes")
        self.limit = limit


class UnsupportedMediaType(GatewayError):
    """A body of a content type the route does not read."""


class MissingPlaceholders(GatewayError):
    """The call's metadata lacks values the assistant's prompt or greeting needs."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__("call metadata lacks: " + ", ".join(names))
        self.names = list(names)


class ConflictError(GatewayError):
    """The request clashes with what is stored (e.g. deleting a trunk a rule still uses)."""


class NotConfigured(GatewayError):
    """A feature was asked for whose settings are not set (e.g. LiveKit, Twilio REST)."""


class GatewayFull(GatewayError):
    """This process takes no more calls now (`cause`: live-calls or loop-lag); the client
    may try again after `retry_after_s` (another gateway behind a balancer may take it)."""

    def __init__(self, cause: str, *, retry_after_s: int) -> None:
        super().__init__(f"the gateway is full ({cause}): try again later")
        self.cause = cause
        self.retry_after_s = retry_after_s


class GatewayDraining(GatewayError):
    """This gateway drains (it got SIGTERM): it takes no new call. A balancer retries the
    request on another gateway (`deploy/haproxy.cfg`: `retry-on 503`)."""


class OrganizationAtCapacity(GatewayError):
    """The organisation's live calls leave no room for another outbound call (its
    `max_concurrent_calls` less `inbound_reserved_calls`); try again after `retry_after_s`."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LookupFailed(GatewayError):
    """A caller lookup gave no usable answer; `outcome` says how (see `LookupOutcome`)."""

    def __init__(self, outcome: LookupOutcome, reason: str) -> None:
        super().__init__(reason)
        self.outcome: LookupOutcome = outcome


class ProviderError(GatewayError):
    """A speech or language provider failed.

    `retryable` follows the usual HTTP reading: 4xx are final except 408 and 429.
    """

    def __init__(self, message: str, *, provider: str, status: int | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status

    @property
    def retryable(self) -> bool:
        if self.status is None:
            return True
        if self.status in (408, 429):
            return True
        return not 400 <= self.status < 500


class RecordingError(GatewayError):
    """The S3 store refused or could not be reached."""


# --------------------------------------------------------------------- the HTTP edge


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    """The one JSON shape of every error the gateway returns."""

    error: ErrorBody


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> JSONResponse:
    # No URL's password reaches a client, whatever an error's text quoted.
    body = ErrorBody(code=code, message=redact_credentials(message), details=details)
    return JSONResponse(
        ErrorResponse(error=body).model_dump(mode="json", exclude_none=True), status_code=status
    )


async def _auth_error(request: Request, exc: Exception) -> Response:
    log.info("request refused: %s", exc, extra={"path": request.url.path})
    return error_response(401, "unauthorized", str(exc))


async def _signature_error(request: Request, exc: Exception) -> Response:
    log.warning("signature refused: %s", exc, extra={"path": request.url.path})
    return error_response(403, "forbidden", str(exc))


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    log.warning("change refused: %s", exc, extra={"path": request.url.path})
    return error_response(403, "csrf_refused", str(exc))


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, "not_found", str(exc) or "not found")


async def _invalid(request: Request, exc: Exception) -> Response:
    details = exc.details if isinstance(exc, RequestInvalid) else None
    if isinstance(exc, MissingPlaceholders):
        details = [{"loc": ["body", "metadata", name], "msg": "missing"} for name in exc.names]
    log.info("request invalid: %s", exc, extra={"path": request.url.path})
    return error_response(422, "invalid_request", str(exc), details)


async def _contacts_rejected(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ContactsRejected)
    log.info("contacts rejected: %s", exc, extra={"path": request.url.path})
    return error_response(422, "contacts_rejected", str(exc), exc.details)


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    log.info("request refused: %s", exc, extra={"path": request.url.path})
    details = [{"loc": exc.loc, "msg": str(exc), "type": "bad_request"}]
    return error_response(400, "bad_request", str(exc), details)


async def _too_large(request: Request, exc: Exception) -> Response:
    log.info("request too large: %s", exc, extra={"path": request.url.path})
    return error_response(413, "too_large", str(exc))


async def _unsupported_media_type(request: Request, exc: Exception) -> Response:
    log.info("request refused: %s", exc, extra={"path": request.url.path})
    return error_response(415, "unsupported_media_type", str(exc))


async def _too_deep(request: Request, exc: Exception) -> Response:
    log.warning("input nested too deeply", extra={"path": request.url.path})
    return error_response(422, "invalid_request", "the input is nested too deeply")


async def _unsafe_url(request: Request, exc: Exception) -> Response:
    log.info("webhook URL refused: %s", exc, extra={"path": request.url.path})
    return error_response(
        422,
        "invalid_request",
        f"webhook_url refused: {exc}",
        [{"loc": ["body", "webhook_url"], "msg": str(exc)}],
    )


async def _conflict(request: Request, exc: Exception) -> Response:
    log.info("request conflicts: %s", exc, extra={"path": request.url.path})
    return error_response(409, "conflict", str(exc))


async def _not_configured(request: Request, exc: Exception) -> Response:
    log.warning("feature not configured: %s", exc, extra={"path": request.url.path})
    return error_response(503, "not_configured", str(exc))


async def _gateway_full(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayFull)
    # Logged and counted where the call was refused (the route knows its carrier).
    response = error_response(503, "gateway_full", str(exc))
    response.headers["Retry-After"] = str(exc.retry_after_s)
    # This process is full: the retry comes on a new connection, which the kernel may hand
    # to another worker on the port (or a balancer to another gateway).
    response.headers["Connection"] = "close"
    return response


async def _draining(request: Request, exc: Exception) -> Response:
    log.info("new call refused: the gateway drains", extra={"path": request.url.path})
    response = error_response(503, "draining", str(exc) or "this gateway is shutting down")
    response.headers["Retry-After"] = "1"
    response.headers["Connection"] = "close"  # the retry goes elsewhere, not to this process
    return response


async def _at_capacity(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OrganizationAtCapacity)
    response = error_response(429, "organization_at_capacity", str(exc))
    response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


async def _carrier_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CarrierError)
    if exc.caller_fault:
        return error_response(422, "carrier_refused", str(exc))
    log.error("carrier failure: %s", exc, extra={"carrier": exc.carrier})
    code = "carrier_unreachable" if isinstance(exc, CarrierUnavailable) else "carrier_error"
    return error_response(502, code, str(exc))


async def _livekit_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LiveKitError)
    if exc.caller_fault:
        return error_response(422, "livekit_refused", str(exc))
    return error_response(502, "livekit_error", str(exc))


async def _storage_error(request: Request, exc: Exception) -> Response:
    log.error("storage failure: %s", exc, extra={"path": request.url.path})
    return error_response(503, "storage_unavailable", "the database is unavailable")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, "http_error", str(exc.detail))


# Starlette picks the handler of the nearest class in an exception's MRO.
HTTP_ERROR_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]]
HTTP_ERROR_HANDLERS = {
    AuthError: _auth_error,
    SignatureError: _signature_error,
    CsrfRefused: _csrf_refused,
    NotFound: _not_found,
    RequestInvalid: _invalid,
    ContactsRejected: _contacts_rejected,
    MissingPlaceholders: _invalid,
    InvalidCursor: _invalid,
    BadRequest: _bad_request,
    BodyTooLarge: _too_large,
    RecordTooLarge: _too_large,
    UnsupportedMediaType: _unsupported_media_type,
    RecursionError: _too_deep,
    ConflictError: _conflict,
    NumberTaken: _conflict,
    NumberUnavailable: _conflict,
    DeliveryBusy: _conflict,
    SecretRotationRaced: _conflict,
    CampaignStateConflict: _conflict,
    ContactsRaced: _conflict,
    UnsafeURL: _unsafe_url,
    NotConfigured: _not_configured,
    GatewayFull: _gateway_full,
    GatewayDraining: _draining,
    OrganizationAtCapacity: _at_capacity,
    CarrierError: _carrier_error,
    LiveKitError: _livekit_error,
    StorageError: _storage_error,
    HTTPException: _http_error,
}
