"""LiveKit: the project's SIP, room and egress APIs (`admin`) and its signed webhook events
(`signed_events`). No call logic: the gateway's `gateway.livekit` package runs the rooms."""

from telephony.livekit.admin import DialedParticipant, LiveKitAdmin, SipTransport, SipTrunk
from telephony.livekit.signed_events import WebhookToken, verified_event, verified_webhook_token

__all__ = [
    "DialedParticipant",
    "LiveKitAdmin",
    "SipTransport",
    "SipTrunk",
    "WebhookToken",
    "verified_event",
    "verified_webhook_token",
]
