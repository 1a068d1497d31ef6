"""The gateway's error tree, mapped to HTTP statuses and WebSocket close codes at the edge.

    GatewayError
    ├── ConfigError            settings that cannot work (startup fails loudly)
    ├── AuthError              missing or wrong API key                  -> HTTP 401
    ├── NotFoundError          unknown resource                          -> HTTP 404
    ├── ProviderError          an STT / LLM / TTS failure (`retryable`)
    ├── CarrierError           Twilio / LiveKit refused a call       -> HTTP 422 or 502
    ├── NotConfigured          a feature whose settings are unset    -> HTTP 503
    ├── ConflictError          clashes with what is stored           -> HTTP 409
    ├── MissingPlaceholders    call metadata lacks a {{name}}        -> HTTP 422 (persona.py)
    └── (re-exported)
        telephony.errors.ProtocolError   bad Media Streams input  -> WS close code + reason
        telephony.errors.SignatureError  bad X-Twilio-Signature / stream token -> HTTP 403
        storage.errors.StorageError      database failure         -> HTTP 503

A broad ``except`` appears only where a task ends; it logs with the call id.
"""

from __future__ import annotations

from storage.errors import CallNotFound, StorageError
from telephony.errors import ProtocolError, SignatureError, TelephonyError

__all__ = [
    "AuthError",
    "CallNotFound",
    "CarrierError",
    "ConfigError",
    "ConflictError",
    "GatewayError",
    "NotConfigured",
    "NotFoundError",
    "ProtocolError",
    "ProviderError",
    "SignatureError",
    "StorageError",
    "TelephonyError",
]


class GatewayError(Exception):
    """Root of the gateway's own errors."""


class ConfigError(GatewayError):
    """Settings that cannot work."""


class AuthError(GatewayError):
    """Missing or wrong API key."""


class NotFoundError(GatewayError):
    """The requested resource does not exist (for this caller)."""


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


class TransferError(GatewayError):
    """A call could not be transferred (no way to do it on this transport, or it failed)."""


class CarrierError(GatewayError):
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


class NotConfigured(GatewayError):
    """A feature was asked for whose settings are not set (e.g. LiveKit, Twilio REST)."""


class ConflictError(GatewayError):
    """The request clashes with what is stored (e.g. deleting a trunk a rule still uses)."""
