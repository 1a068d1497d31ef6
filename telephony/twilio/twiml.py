"""Every TwiML the gateway answers or sends: connecting a call's audio to the Media Streams
endpoint, handing it to another number, a spoken refusal, a busy refusal, and a plain
hang-up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from twilio.twiml.voice_response import Connect, VoiceResponse


def stream_url_for(public_url: str, path: str = "/twilio/stream") -> str:
    """The WebSocket URL of `path` under the public base URL (https -> wss, http -> ws)."""
    parts = urlsplit(public_url)
    scheme = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not an http(s) base URL: {public_url!r}")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}{path}"


def connect_stream_twiml(stream_url: str, parameters: Mapping[str, str]) -> str:
    """`<Connect><Stream>` TwiML; values travel as `<Parameter>`s, as Twilio refuses a query."""
    if urlsplit(stream_url).query:
        raise ValueError("Twilio <Stream> URLs cannot carry a query string; use parameters")
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response.to_xml(xml_declaration=True))


def dial_twiml(to: str) -> str:
    """`<Dial>` TwiML handing the call to `to` (a number or SIP URI)."""
    response = VoiceResponse()
    response.dial(to)
    return str(response)


def hang_up_twiml() -> str:
    """TwiML that hangs up at once (a call that gets no stream)."""
    response = VoiceResponse()
    response.hangup()
    return str(response)


def reject_twiml(reason: Literal["busy", "rejected"] = "busy") -> str:
    """`<Reject>` TwiML: the call is refused unanswered (not billed); the caller hears a busy
    tone for "busy", a "not in service" message for "rejected"."""
    response = VoiceResponse()
    response.reject(reason=reason)
    return str(response)


def say_and_hang_up_twiml(text: str) -> str:
    """TwiML that says `text` and hangs up."""
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return str(response)
