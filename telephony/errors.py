"""Errors of the telephony layer (carrier protocols and APIs); the gateway maps them to
close codes and HTTP statuses at its edge (see `gateway.errors`)."""

from __future__ import annotations


class TelephonyError(Exception):
    """Root of telephony errors."""


class ProtocolError(TelephonyError):
    """Bad input on a media stream; carries the WebSocket close code and reason to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        # A close frame's reason is at most 123 bytes.
        self.reason = reason.encode()[:123].decode(errors="ignore")


class StreamClosed(TelephonyError):
    """A media stream's socket was gone when something was sent on it: the stream is over
    (the caller hung up or the connection dropped), which is not an error of the call."""


class SignatureError(TelephonyError):
    """A missing or wrong request signature or stream token."""


class CarrierError(TelephonyError):
    """The carrier (Twilio, or LiveKit's SIP service) refused or failed to place a call.

    A 4xx from the carrier is the request's fault (e.g. a number it cannot dial): HTTP 422
    at our edge. Anything else is the carrier's: HTTP 502.
    """

    def __init__(self, message: str, *, carrier: str, status: int | None = None) -> None:
        super().__init__(message)
        self.carrier = carrier
        self.status = status

    @property
    def caller_fault(self) -> bool:
        return self.status is not None and 400 <= self.status < 500 and self.status != 401


class CarrierUnavailable(CarrierError):
    """The carrier's API could not be reached or answered nonsense (refused connection,
    timeout, an unreadable answer): nothing was placed; HTTP 502 at our edge."""


class LiveKitError(TelephonyError):
    """LiveKit refused or could not serve a request; `status` is its HTTP status, `code`
    its Twirp error code (e.g. `not_found`)."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    @property
    def caller_fault(self) -> bool:
        return self.status is not None and 400 <= self.status < 500 and self.status != 401


class TransferError(TelephonyError):
    """A call could not be transferred (no way to do it on this transport, or it failed)."""
