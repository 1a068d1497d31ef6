"""Errors of the telephony layer; the gateway maps them to close codes and HTTP statuses."""

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


class SignatureError(TelephonyError):
    """A missing or wrong request signature or stream token."""
