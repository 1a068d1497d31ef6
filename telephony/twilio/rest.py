"""Twilio's REST API for calls (the `twilio` SDK): placing outbound calls and transfers.

The SDK is synchronous (requests), so each call runs on a worker thread. `api_base_url`
points it somewhere other than https://api.twilio.com (a regional edge or a test server).
Every request is bounded by `timeout_s`. The SDK raises `TwilioRestException` for an error
answer, but lets requests' own errors (refused connections, timeouts) and unreadable
answers through as they are: each becomes `CarrierUnavailable` (or `TransferError`) here.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from telephony.errors import CarrierError, CarrierUnavailable, TransferError
from telephony.twilio.twiml import dial_twiml

log = logging.getLogger(__name__)

# What the SDK lets through when Twilio cannot be reached or answers something unreadable
# (requests' ConnectionError / Timeout, a socket error, a body that is not JSON).
_UNREACHABLE = (requests.RequestException, OSError, ValueError)


@dataclass(frozen=True, slots=True)
class MachineDetection:
    """Twilio's answering-machine detection for a call: `Enable` answers as soon as it knows
    (`human`, `machine_start`, `fax`, `unknown`); `DetectMessageEnd` waits for a machine's
    greeting to end (`machine_end_beep` / `_silence` / `_other`). With a `callback_url` it
    is asynchronous: the call's TwiML runs at once and the verdict is POSTed (signed) there.
    Without, it is synchronous: the TwiML waits for the verdict, which comes as `AnsweredBy`
    on the `in-progress` status callback."""

    mode: Literal["Enable", "DetectMessageEnd"]
    callback_url: str | None = None
    timeout_s: int = 30  # MachineDetectionTimeout: then `unknown`


class TwilioCalls:
    """Acts on live Twilio calls of one account."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        api_base_url: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._client = Client(
            account_sid, auth_token, http_client=TwilioHttpClient(timeout=timeout_s)
        )
        if api_base_url:
            self._client.api.base_url = api_base_url.rstrip("/")

    async def transfer(self, call_sid: str, to: str) -> None:
        """Replace the call's TwiML with a `<Dial>` to `to`; the media stream then ends."""
        twiml = dial_twiml(to)
        try:
            await asyncio.to_thread(lambda: self._client.calls(call_sid).update(twiml=twiml))
        except TwilioException as exc:
            raise TransferError(f"Twilio refused the transfer: {exc}") from exc
        except _UNREACHABLE as exc:
            raise TransferError(f"Twilio is unreachable: {type(exc).__name__}") from exc
        log.info("call transferred", extra={"call_sid": call_sid, "to": to})

    async def create_call(
        self,
        *,
        to: str,
        from_: str,
        twiml: str,
        status_callback: str,
        ring_timeout_s: int = 60,
        machine_detection: MachineDetection | None = None,
    ) -> str:
        """Place a call that runs `twiml` when answered; returns its CallSid.

        Every progress event (initiated, ringing, answered, completed) is POSTed to
        `status_callback`; with `machine_detection`, Twilio adds its verdict (`AnsweredBy`):
        to the `in-progress` callback, or (asynchronous, a `callback_url`) to its own.
        """
        options: dict[str, object] = {
            "to": to,
            "from_": from_,
            "twiml": twiml,
            "status_callback": status_callback,
            "status_callback_method": "POST",
            "status_callback_event": ["initiated", "ringing", "answered", "completed"],
            "timeout": ring_timeout_s,
        }
        if machine_detection is not None:
            options |= {
                "machine_detection": machine_detection.mode,
                "machine_detection_timeout": machine_detection.timeout_s,
            }
        if machine_detection is not None and machine_detection.callback_url is not None:
            options |= {
                "async_amd": "true",
                "async_amd_status_callback": machine_detection.callback_url,
                "async_amd_status_callback_method": "POST",
            }
        try:
            call = await asyncio.to_thread(lambda: self._client.calls.create(**options))
        except TwilioRestException as exc:
            raise CarrierError(
                f"Twilio refused the call: {exc.msg}", status=exc.status, carrier="twilio"
            ) from exc
        except TwilioException as exc:
            raise CarrierUnavailable(f"Twilio is unreachable: {exc}", carrier="twilio") from exc
        except _UNREACHABLE as exc:
            # The exception's text names the host and port; the API client gets the kind only.
            log.warning("Twilio REST unreachable: %s", exc)
            raise CarrierUnavailable(
                f"Twilio is unreachable ({type(exc).__name__})", carrier="twilio"
            ) from exc
        sid = str(call.sid)
        log.info("outbound call placed", extra={"call_sid": sid, "to": to})
        return sid
