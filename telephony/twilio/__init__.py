"""Twilio: Media Streams (sans-I/O protocol and typed messages), TwiML, request signatures,
per-call stream tokens and the REST API for calls."""

from telephony.twilio.media_guard import InboundMediaGuard
from telephony.twilio.messages import (
    AccountSid,
    CallSid,
    Clear,
    Connected,
    Dtmf,
    InboundMessage,
    Mark,
    Media,
    MediaFormat,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    StreamSid,
    Unknown,
    parse_message,
)
from telephony.twilio.protocol import (
    AudioReceived,
    DtmfReceived,
    MarkPlayed,
    MediaStreamProtocol,
    StreamEvent,
    StreamStarted,
    StreamState,
    StreamStopped,
    UnknownReceived,
)
from telephony.twilio.rest import TwilioCalls
from telephony.twilio.signature import TwilioSignatureValidator
from telephony.twilio.stream_token import issue_stream_token, verify_stream_token
from telephony.twilio.twiml import (
    connect_stream_twiml,
    dial_twiml,
    say_and_hang_up_twiml,
    stream_url_for,
)

__all__ = [
    "AccountSid",
    "AudioReceived",
    "CallSid",
    "Clear",
    "Connected",
    "Dtmf",
    "DtmfReceived",
    "InboundMediaGuard",
    "InboundMessage",
    "Mark",
    "MarkPlayed",
    "Media",
    "MediaFormat",
    "MediaStreamProtocol",
    "OutboundMark",
    "OutboundMedia",
    "Start",
    "Stop",
    "StreamEvent",
    "StreamSid",
    "StreamStarted",
    "StreamState",
    "StreamStopped",
    "TwilioCalls",
    "TwilioSignatureValidator",
    "Unknown",
    "UnknownReceived",
    "connect_stream_twiml",
    "dial_twiml",
    "issue_stream_token",
    "parse_message",
    "say_and_hang_up_twiml",
    "stream_url_for",
    "verify_stream_token",
]
