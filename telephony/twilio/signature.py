"""`X-Twilio-Signature` checking and signing (the twilio SDK's `RequestValidator`).

Twilio signs a form POST over the full public URL plus the sorted form parameters, and
the Media Streams WebSocket upgrade over the `wss://` URL with no parameters. Behind a
proxy the URL Twilio used is not the one the app sees, so callers pass the URL rebuilt
from PUBLIC_URL.
"""

from __future__ import annotations

from collections.abc import Mapping

from twilio.request_validator import RequestValidator

from telephony.errors import SignatureError


class TwilioSignatureValidator:
    """Checks (and, for simulators and tests, computes) Twilio request signatures."""

    def __init__(self, auth_token: str) -> None:
        self._validator = RequestValidator(auth_token)

    def check(self, url: str, params: Mapping[str, str], signature: str | None) -> None:
        """Raise `SignatureError` unless `signature` is Twilio's for `url` and `params`."""
        if not signature:
            raise SignatureError("missing X-Twilio-Signature")
        if not self._validator.validate(url, dict(params), signature):
            raise SignatureError("invalid X-Twilio-Signature")

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        """The signature Twilio would send for `url` and `params`."""
        signature: str = self._validator.compute_signature(url, dict(params))
        return signature
